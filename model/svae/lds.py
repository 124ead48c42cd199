"""SVAE-LDS: a linear dynamical system over the latents, per-frame recognition potentials and a
per-frame diagonal-Gaussian decoder (SVAE.md sections 2, 4 and 5)."""
from __future__ import annotations

from typing import Any

import torch

from base.base_model import BaseModel
from model.expfam import mniw, niw
from model.expfam.psd import jitter_retries
from model.likelihoods import GaussianLikelihood
from model.networks import GaussianResNet
from model.registry import ARCHITECTURES
from model.svae.kalman import METHODS, LDSPosterior, LDSPotentials, expected_lds_potentials, lds_posterior
from model.svae.recognition import GaussianRecognition
from model.svae.svi import NaturalGradientSVI
from model.visualization import log_sequence_panels
from utils.errors import ConfigError, DataError


@ARCHITECTURES.register("SVAE-LDS")
class SVAELDS(BaseModel):
    """Structured VAE whose latent sequence x_1:T (n-dimensional) is a linear dynamical system.

    Globals: q(mu0, Sigma0) NIW on the initial state and q(A, Q) MNIW on the dynamics, natural parameters
    in float64 buffers, updated by natural-gradient SVI in `after_optimizer_step`; they start at the prior
    (the authors': nu = n + 1, S = 2 (n + 1) I, m = 0, kappa = 1 / (2n), M = I, K = I / (2n)).
    Networks: recognition y_t -> psi_t(x_t) (diagonal precision exp(10 tanh(./10))) and decoder
    x_t -> N(y_t | sigmoid(mean), diag var) with the log-variance bounded by 10 tanh(./10).
    Local inference is exact (Kalman filter, RTS smoother, backward sampler; `kalman.py`).
    Batches: {"x": (B, T, P)} and, for `pred_mse`, the noiseless frames {"clean": (B, T, P)}.

    ELBO per frame = mean_batch[E_q log p(y | x) - KL_local] / T - KL(q(theta) || p(theta)) / (N T).

    Args:
        data_shape: (T, P), set by the framework; num_train: N training sequences (set by the framework).
        latent_dim: n.
        hidden_dims, activation, init_scale: encoder and decoder GaussianResNets.
        num_samples: S, joint samples of x_1:T per sequence for the reconstruction term in training.
        eval_samples: S for the held-out ELBO in test.py.
        rho: SVI step size of the globals.
        inference: "sequential" or "parallel" (associative scans) Kalman filter / smoother / sampler.
        prefix_len, horizon: P and H of the prediction metrics and figure (condition on frames 1..P,
            predict P+1..P+H).
        figure_samples: sampled continuations drawn in the figure.
    """

    eval_metrics = ("elbo", "pred_mse", "pred_mse_repeat_last")
    visualization_size = 3

    def __init__(self, data_shape: tuple[int, int], num_train: int, latent_dim: int = 10,
                 hidden_dims: list[int] = (50,), activation: str = "tanh", init_scale: float = 1e-2,
                 num_samples: int = 1, eval_samples: int = 10, rho: float = 0.01, inference: str = "sequential",
                 prefix_len: int = 25, horizon: int = 20, figure_samples: int = 3):
        super().__init__()
        for name, value in [("latent_dim", latent_dim), ("num_samples", num_samples),
                            ("eval_samples", eval_samples), ("prefix_len", prefix_len), ("horizon", horizon),
                            ("figure_samples", figure_samples)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if inference not in METHODS:
            raise ValueError(f"inference must be one of {METHODS}, got {inference!r}")
        if len(data_shape) != 2:
            raise ConfigError(f"SVAE-LDS needs sequences of frames, data_shape (T, P); got {tuple(data_shape)}")
        self.seq_len, obs_dim = data_shape
        self.num_train = num_train
        self.latent_dim = latent_dim
        self.num_samples, self.eval_samples, self.figure_samples = num_samples, eval_samples, figure_samples
        self.inference = inference
        self.prefix_len, self.horizon = prefix_len, horizon
        self.encoder = GaussianRecognition(obs_dim, latent_dim, list(hidden_dims), activation, init_scale,
                                           precision_bound="exp_tanh")
        self.decoder = GaussianResNet(latent_dim, list(hidden_dims), obs_dim, activation, init_scale)
        self.likelihood = GaussianLikelihood
        self.svi = NaturalGradientSVI(num_train, rho)

        n, f64 = latent_dim, torch.float64
        eye = torch.eye(n, dtype=f64)
        nu = torch.tensor(n + 1.0, dtype=f64)
        scale = 2.0 * (n + 1) * eye
        prior_niw = niw.standard_to_natural(torch.zeros(n, dtype=f64), torch.tensor(1.0 / (2 * n), dtype=f64),
                                            scale, nu)
        prior_mniw = mniw.standard_to_natural(eye, eye / (2 * n), scale, nu)
        for family, prior in [("niw", prior_niw), ("mniw", prior_mniw)]:
            for field, value in zip(prior._fields, prior):  # clones: q is updated in place
                self.register_buffer(f"prior_{family}_{field}", value.clone())
                self.register_buffer(f"q_{family}_{field}", value.clone())

    # ---------------------------------------------------------------- globals
    def _natural(self, which: str, family: str) -> niw.NIWNatural | mniw.MNIWNatural:
        cls = niw.NIWNatural if family == "niw" else mniw.MNIWNatural
        return cls(*(getattr(self, f"{which}_{family}_{f}") for f in cls._fields))

    def global_expectations(self) -> tuple[LDSPotentials, torch.Tensor]:
        """The expected LDS potentials under q(theta) and KL(q(theta) || p(theta)) (scalar, nats)."""
        q_niw, q_mniw = self._natural("q", "niw"), self._natural("q", "mniw")
        niw_expected, mniw_expected = niw.expected_stats(q_niw), mniw.expected_stats(q_mniw)
        kl = (niw.kl(q_niw, self._natural("prior", "niw"), niw_expected)
              + mniw.kl(q_mniw, self._natural("prior", "mniw"), mniw_expected))
        return expected_lds_potentials(niw_expected, mniw_expected), kl

    def dynamics_mean(self) -> torch.Tensor:
        """E[A] = M (n, n)."""
        return mniw.natural_to_standard(self._natural("q", "mniw"))[0]

    def after_optimizer_step(self) -> None:
        fields = [(family, f) for family, cls in [("niw", niw.NIWNatural), ("mniw", mniw.MNIWNatural)]
                  for f in cls._fields]
        self.svi.step([getattr(self, f"q_{fam}_{f}") for fam, f in fields],
                      [getattr(self, f"prior_{fam}_{f}") for fam, f in fields])

    def on_step_skipped(self) -> None:
        self.svi.clear()

    # ---------------------------------------------------------------- inference
    def infer(self, y: torch.Tensor, potentials: LDSPotentials, num_samples: int,
              observed: int | None = None) -> tuple[LDSPosterior, torch.Tensor, torch.Tensor]:
        """q(x_1:T) for frames y (B, T, P), and the node potentials (J, h) (B, T, n); with `observed`,
        the potentials after the first `observed` frames are zeroed (prediction)."""
        node_J, node_h = self.encoder(y)
        if observed is not None:
            seen = (torch.arange(y.shape[1], device=y.device) < observed).to(node_J.dtype)[:, None]
            node_J, node_h = node_J * seen, node_h * seen
        with torch.autocast(y.device.type, enabled=False):
            post = lds_posterior(potentials, node_J, node_h, num_samples, self.inference)
        return post, node_J, node_h

    @staticmethod
    def local_kl(post: LDSPosterior, node_J: torch.Tensor, node_h: torch.Tensor) -> torch.Tensor:
        """KL(q(x) || p(x | theta)) = sum_t E_q[psi_t(x_t)] - log Z: (B,)."""
        second = post.cov.diagonal(dim1=-2, dim2=-1) + post.mean ** 2
        return (-0.5 * node_J * second + node_h * post.mean).sum((-2, -1)) - post.log_z

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output (..., 2P): sigmoid mean and raw log-variance of p(y_t | x_t)."""
        mean, raw = self.decoder(x)
        return torch.cat([torch.sigmoid(mean), raw], -1)

    def reconstruction(self, y: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """E_q[log p(y | x)] from samples (S, B, T, n): (B,) summed over frames."""
        return self.likelihood.log_prob(self.decode(samples.to(y.dtype)), y).sum(-1).mean(0)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        y = batch["x"]
        B, T = y.shape[:2]
        retries = jitter_retries()
        potentials, kl_global = self.global_expectations()
        kl_global = kl_global / (self.num_train * self.seq_len)
        post, node_J, node_h = self.infer(y, potentials, self.num_samples)
        recon = self.reconstruction(y, post.samples) / T
        kl_local = self.local_kl(post, node_J, node_h) / T
        elbo = (recon - kl_local).mean() - kl_global
        if self.training:
            self.svi.accumulate(self.sufficient_stats(post), B)
        return {
            "loss": -elbo,
            "elbo": elbo.detach(),
            "recon": recon.detach().mean(),
            "kl_local": kl_local.detach().mean(),
            "kl_global": kl_global.detach(),
            "jitter_retries": torch.tensor(float(jitter_retries() - retries)),
        }

    @staticmethod
    def sufficient_stats(post: LDSPosterior) -> list[torch.Tensor]:
        """What the batch adds to the NIW (initial state) and MNIW (pairs) natural parameters, summed over
        sequences: (E x_1 x_1^T, E x_1, count, count) and (sum_t E x_t x_t^T, sum_t E x_t x_{t+1}^T,
        sum_t E x_{t+1} x_{t+1}^T, pairs), detached."""
        mean, cov = post.mean.detach(), post.cov.detach()
        second = cov + mean.unsqueeze(-1) * mean.unsqueeze(-2)  # (B, T, n, n)
        cross = post.cross_cov.detach() + mean[:, :-1].unsqueeze(-1) * mean[:, 1:].unsqueeze(-2)
        B, T = mean.shape[:2]
        count = mean.new_tensor(float(B))
        pairs = mean.new_tensor(float(B * (T - 1)))
        return [second[:, 0].sum(0), mean[:, 0].sum(0), count, count,
                second[:, :-1].sum((0, 1)), cross.sum((0, 1)), second[:, 1:].sum((0, 1)), pairs]

    # ---------------------------------------------------------------- evaluation
    def predict(self, y: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition on the first `prefix_len` frames of y (B, T, P) and roll the dynamics forward for
        `horizon` frames: decoded means of the posterior mean path (B, P+H, P) and of S sampled paths
        (S, B, P+H, P)."""
        length = self.prefix_len + self.horizon
        if y.shape[1] < length:
            raise DataError(f"prediction needs sequences of at least prefix_len + horizon = {length} frames, "
                            f"got {y.shape[1]}; lower arch.args.prefix_len or horizon")
        potentials, _ = self.global_expectations()
        post, _, _ = self.infer(y[:, :length], potentials, num_samples, observed=self.prefix_len)
        decode_mean = lambda x: self.likelihood.mean(self.decode(x.to(y.dtype)))  # noqa: E731
        return decode_mean(post.mean), decode_mean(post.samples)

    @torch.no_grad()
    def evaluate_batch(self, batch: dict[str, torch.Tensor], metrics: tuple[str, ...],
                       iw_samples: int) -> dict[str, torch.Tensor]:
        """Per sequence: the local ELBO summed over frames and the frame count; the squared prediction
        errors (mean over the H predicted frames and pixels) of the model and of repeating the last
        observed frame, against the noiseless frames."""
        y = batch["x"]
        out: dict[str, torch.Tensor] = {}
        if "elbo" in metrics:
            potentials, _ = self.global_expectations()
            post, node_J, node_h = self.infer(y, potentials, self.eval_samples)
            out["local_elbo"] = self.reconstruction(y, post.samples) - self.local_kl(post, node_J, node_h)
            out["frames"] = torch.full((len(y),), y.shape[1], dtype=torch.float64, device=y.device)
        if "pred_mse" in metrics or "pred_mse_repeat_last" in metrics:
            if "clean" not in batch:
                raise DataError("metrics pred_mse and pred_mse_repeat_last need the noiseless frames, but the "
                                "data loader's batches have no 'clean'; drop them from the config's `metrics`")
            P, H = self.prefix_len, self.horizon
            truth = batch["clean"][:, P:P + H]
            if "pred_mse" in metrics:
                mean, _ = self.predict(y, 1)
                out["pred_se"] = ((mean[:, P:] - truth) ** 2).mean((1, 2))
            if "pred_mse_repeat_last" in metrics:
                out["repeat_se"] = ((y[:, P - 1:P] - truth) ** 2).mean((1, 2))
        return out

    def summarize_evaluation(self, per_example: dict[str, torch.Tensor]) -> dict[str, Any]:
        """elbo (nats per frame) = sum of local ELBOs / frames - KL(q(theta) || p(theta)) / (N T);
        pred_mse and pred_mse_repeat_last (per pixel); the moduli of E[A]'s eigenvalues, largest first."""
        results: dict[str, Any] = {}
        if "local_elbo" in per_example:
            kl_global = float(self.global_expectations()[1]) / (self.num_train * self.seq_len)
            results["elbo"] = float(per_example["local_elbo"].double().sum() / per_example["frames"].sum()) - kl_global
            results["kl_global"] = kl_global
        for key, name in [("pred_se", "pred_mse"), ("repeat_se", "pred_mse_repeat_last")]:
            if key in per_example:
                results[name] = float(per_example[key].double().mean())
        if "pred_se" in per_example or "repeat_se" in per_example:
            results["prefix_len"], results["horizon"] = self.prefix_len, self.horizon
        moduli = torch.linalg.eigvals(self.dynamics_mean()).abs().sort(descending=True).values
        results["dynamics_eigenvalue_moduli"] = [round(float(m), 6) for m in moduli]
        return results

    # ---------------------------------------------------------------- figures
    @torch.no_grad()
    def visualize(self, writer: Any, batch: dict[str, torch.Tensor], step: int, tag: str) -> None:
        y = batch["x"]
        if y.shape[1] < self.prefix_len + self.horizon:
            return
        mean, samples = self.predict(y, self.figure_samples)
        rows = {"data": y[:, :mean.shape[1]], "mean": mean, **{f"sample {i + 1}": s for i, s in enumerate(samples)}}
        log_sequence_panels(writer, f"{tag}/predictions", step, rows, self.prefix_len)
