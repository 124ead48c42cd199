"""The plain VAE baseline: MLP encoder q(z | x) = N(mu, diag sigma^2), prior N(0, I),
MLP decoder with a Bernoulli or Gaussian likelihood."""
from __future__ import annotations

import math
from typing import Any, Literal, Mapping

import torch

from base.base_model import BaseModel
from base.metric import Metric, mean_of
from model.diagonal_gaussian import gaussian_kl_standard, reparameterized_log_prob, standard_normal_log_prob
from model.figures import log_figure, log_image_grids, scatter_figure
from model.importance import iw_log_likelihood
from model.kl_warmup import KLWarmup
from model.likelihoods import LIKELIHOODS
from model.networks import mlp
from model.registry import ARCHITECTURES


@ARCHITECTURES.register("VAE")
class VAE(KLWarmup, BaseModel):
    """Variational autoencoder with a diagonal Gaussian posterior.

    Batches: {"x": (B, *data_shape)}; x is flattened to (B, D).

    Args:
        data_shape: shape of one example (set by the framework from the data loader).
        latent_dim: d.
        hidden_dims: widths of the encoder's hidden layers (the decoder mirrors them).
        likelihood: "bernoulli" (binary data, logits) or "gaussian" (mean and bounded log-variance).
        activation: hidden activation ("relu", "tanh", "softplus", "elu").
        dropout: dropout probability after every hidden layer.
        batch_norm: BatchNorm after every hidden linear layer (encoder and decoder).
        kl_warmup_epochs: the KL term's weight in the loss rises linearly from 0 to 1 over this
            many epochs (0: always 1); `elbo` is always the true bound.
    """

    metrics = (
        Metric("elbo", mean_of("elbo"), "evidence lower bound on log p(x), one posterior sample; nats per example"),
        Metric("iw_nll", mean_of("iw_nll"), "importance-weighted estimate of -log p(x) with K = iw_samples; "
               "nats per example"),
    )

    def __init__(self, data_shape: tuple[int, ...], latent_dim: int = 16, hidden_dims: list[int] = (512, 256),
                 likelihood: Literal["bernoulli", "gaussian"] = "bernoulli", activation: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False, kl_warmup_epochs: int = 0):
        super().__init__()
        self.init_kl_warmup(kl_warmup_epochs)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {sorted(LIKELIHOODS)}, got {likelihood!r}")
        self.data_shape = tuple(data_shape)
        self.unit = "image" if len(self.data_shape) == 3 else "point"
        self.latent_dim = latent_dim
        self.likelihood = LIKELIHOODS[likelihood]
        obs_dim = math.prod(self.data_shape)
        hidden_dims = list(hidden_dims)
        self.encoder = mlp(obs_dim, hidden_dims, 2 * latent_dim, activation, dropout, batch_norm)
        self.decoder = mlp(latent_dim, hidden_dims[::-1], self.likelihood.param_dim(obs_dim), activation, dropout,
                           batch_norm)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, D) -> posterior mean and log-variance, each (B, d)."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., d) -> decoder output (..., param_dim); leading dims are flattened for BatchNorm."""
        return self.decoder(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], -1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"].flatten(1)
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        log_px = self.likelihood.log_prob(self.decode(z), x)  # (B,)
        kl = gaussian_kl_standard(mu, logvar)  # (B,)
        elbo = (log_px - kl).mean()
        loss = -(log_px.mean() - self.kl_weight * kl.mean()) if self.training else -elbo
        return {"loss": loss, "elbo": elbo, "recon": log_px.mean(), "kl": kl.mean()}

    def iw_log_likelihood(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Importance-weighted estimate of log p(x) with q(z | x) as proposal: (B, D) -> (B,)."""
        mu, logvar = self.encode(x)
        std = torch.exp(0.5 * logvar)

        def log_weights(n: int) -> torch.Tensor:
            eps = torch.randn(n, *mu.shape, device=mu.device, dtype=mu.dtype)
            z = mu + std * eps  # (n, B, d)
            log_q = reparameterized_log_prob(logvar, eps)
            log_px = self.likelihood.log_prob(self.decode(z), x)  # (n, B)
            return log_px + standard_normal_log_prob(z) - log_q

        return iw_log_likelihood(log_weights, num_samples, len(x))

    @torch.no_grad()
    def evaluate_batch(self, batch: dict[str, torch.Tensor], metrics: tuple[str, ...],
                       options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        x = batch["x"].flatten(1)
        out = {}
        if "elbo" in metrics:
            mu, logvar = self.encode(x)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            out["elbo"] = self.likelihood.log_prob(self.decode(z), x) - gaussian_kl_standard(mu, logvar)
        if "iw_nll" in metrics:
            out["iw_nll"] = -self.iw_log_likelihood(x, options["iw_samples"])
        return out

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """Means of p(x | z) for z ~ N(0, I): (num_samples, *data_shape)."""
        device = next(self.parameters()).device
        z = torch.randn(num_samples, self.latent_dim, device=device)
        return self.likelihood.mean(self.decode(z)).view(num_samples, *self.data_shape)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder means at the posterior means: (B, *data_shape) -> same shape."""
        mu, _ = self.encode(x.flatten(1))
        return self.likelihood.mean(self.decode(mu)).view_as(x)

    @torch.no_grad()
    def visualize(self, writer: Any, batch: dict[str, torch.Tensor], step: int, tag: str) -> None:
        """Images: `{tag}/reconstructions` and `{tag}/samples`; 2-D data: `{tag}/data_vs_samples`."""
        if len(self.data_shape) == 3:
            x = batch["x"][:12]
            log_image_grids(writer, tag, step, reconstructions=(x, self.reconstruct(x)), samples=self.sample(24))
        elif self.data_shape == (2,):
            x = batch["x"]
            fig = scatter_figure("Data and samples from the model", data=x, samples=self.sample(len(x)))
            log_figure(writer, f"{tag}/data_vs_samples", fig, step)
