"""VAEs with a learned latent dependency graph (He et al. ICLR 2019): edge gates between latent
nodes (`gates`), and the GraphVAE and GraphLSTMVAE architectures (`graph_vae`)."""
