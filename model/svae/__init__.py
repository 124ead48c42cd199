"""Structured VAEs (Johnson et al. 2016): a conjugate graphical model over the latents, neural
recognition potentials and decoder. Inference functions (`gmm_inference`) are plain functions
over tensors; the modules (`gmm`) hold the networks and the global variational factors."""
