"""SequenceSVAE: a structured VAE over sequences of frames, one latent node per frame, that predicts by
conditioning on a prefix (SVAE.md section 4): the likelihoods, variable lengths, prediction metrics and figure
of SVAE-LDS, shared by every graphical model over time."""
from __future__ import annotations

from typing import Any, Callable

import torch

from base.metric import Metric, PerExample, ratio_of_sums
from model.figures import log_sequences
from model.likelihoods import BernoulliLikelihood, GaussianLikelihood
from model.networks import GaussianResNet
from model.svae.graphical_model import GraphicalModel, LocalPosterior
from model.svae.recognition import GaussianRecognition
from model.svae.structured_vae import StructuredVAE
from utils.errors import ConfigError, DataError


LIKELIHOOD_NAMES = ("gaussian", "sigmoid_gaussian", "bernoulli")


class SequenceSVAE(StructuredVAE):
    """Batches {"x": (B, T, D)}, with {"mask": (B, T) bool} for sequences of different lengths (True on real
    frames; the others carry no node potential, and count nowhere in the ELBO, iw_nll or the per-frame
    normalisation) and, when the data has them, the noiseless frames {"clean": (B, T, D)} that the prediction
    metrics compare with (otherwise the observed frames).

    Likelihood p(y_t | x_t): "gaussian" (decoder mean and bounded log-variance, for real-valued or standardized
    frames), "sigmoid_gaussian" (the mean through a sigmoid: frames in [0, 1], the dot videos) or "bernoulli"
    (the decoder mean as logits: binary frames).

    Prediction: condition on the first `prefix_len` frames and sample `prediction_samples` continuations of
    `horizon` frames from the graphical model (`GraphicalModel.forecast`); the prediction is their decoded
    average, the predictive mean, compared with the next `horizon` frames (`pred_mse`), as is repeating the
    last observed frame (`pred_mse_repeat_last`).

    Args (besides StructuredVAE's):
        make_pgm: builds the graphical model over the frames' latents (called after the networks).
        data_shape: (T, D).
        latent_dim: n, the latent dimension per frame.
        hidden_dims, activation, init_scale: the per-frame recognition network (precisions bounded by
            exp(10 tanh(./10))) and decoder, GaussianResNets.
        frames_per_example: mean real frames per training sequence (set by the framework; default T).
        likelihood: one of LIKELIHOOD_NAMES.
        prefix_len, horizon: condition on frames 1..prefix_len, predict the next `horizon`.
        figure_samples: sampled continuations drawn in the figure.
        prediction_samples: sampled continuations whose decoded mean is the prediction.
    """
    unit = "frame"

    metrics = StructuredVAE.metrics + (
        Metric("pred_mse", ratio_of_sums("pred_sq_error", "pred_values"),
               "squared error per value of the predictive mean (the average of prediction_samples decoded "
               "sampled continuations) over the horizon, against the noiseless frames (the observed ones when "
               "the data has no 'clean')"),
        Metric("pred_mse_repeat_last", ratio_of_sums("repeat_sq_error", "pred_values"),
               "the same for repeating the last observed frame"),
    )
    visualization_size = 3

    def __init__(self, make_pgm: Callable[[], GraphicalModel], data_shape: tuple[int, int], num_train: int,
                 latent_dim: int, hidden_dims: list[int], activation: str, init_scale: float, rho: float,
                 num_samples: int, eval_samples: int, prefix_len: int, horizon: int, figure_samples: int,
                 kl_warmup_epochs: int = 0, likelihood: str = "sigmoid_gaussian",
                 frames_per_example: float | None = None, prediction_samples: int = 100):
        if len(data_shape) != 2:
            raise ConfigError(f"{type(self).__name__} needs sequences of frames, data_shape (T, D); "
                              f"got {tuple(data_shape)}")
        for name, value in [("latent_dim", latent_dim), ("prefix_len", prefix_len), ("horizon", horizon),
                            ("figure_samples", figure_samples), ("prediction_samples", prediction_samples)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if likelihood not in LIKELIHOOD_NAMES:
            raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOOD_NAMES)}, got {likelihood!r}")
        obs_dim = data_shape[-1]
        encoder = GaussianRecognition(obs_dim, latent_dim, list(hidden_dims), activation, init_scale,
                                      precision_bound="exp_tanh")
        decoder = GaussianResNet(latent_dim, list(hidden_dims), obs_dim, activation, init_scale)
        super().__init__(make_pgm(), encoder, decoder, num_train,
                         frames_per_example=data_shape[0] if frames_per_example is None else frames_per_example,
                         rho=rho, num_samples=num_samples, eval_samples=eval_samples,
                         kl_warmup_epochs=kl_warmup_epochs)
        self.likelihood = BernoulliLikelihood if likelihood == "bernoulli" else GaussianLikelihood
        self.squash_mean = likelihood == "sigmoid_gaussian"
        self.seq_len = data_shape[0]
        self.prefix_len, self.horizon, self.figure_samples = prefix_len, horizon, figure_samples
        self.latent_dim, self.prediction_samples = latent_dim, prediction_samples

    def observed_nodes(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return batch.get("mask")

    def metric_problem(self, name: str, fields: tuple[str, ...]) -> str | None:
        """Besides missing fields: the prediction metrics need examples of prefix_len + horizon frames."""
        length = self.prefix_len + self.horizon
        if name in ("pred_mse", "pred_mse_repeat_last") and self.seq_len < length:
            return (f"it predicts prefix_len + horizon = {length} frames, and an example has {self.seq_len}; "
                    f"lower arch.args.prefix_len or horizon")
        return super().metric_problem(name, fields)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Parameters of p(y_t | x_t): the mean (through a sigmoid for "sigmoid_gaussian") and raw log-variance
        (..., 2D), or the logits (..., D) for "bernoulli"."""
        mean, raw = self.decoder(x)
        if self.likelihood is BernoulliLikelihood:
            return mean
        return torch.cat([torch.sigmoid(mean) if self.squash_mean else mean, raw], -1)

    def decode_mean(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """E[y_t | x_t] (..., D) for latents x (..., n), in `dtype`."""
        return self.likelihood.mean(self.decode(x.to(dtype)))

    def predict(self, y: torch.Tensor, num_samples: int,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition on the first `prefix_len` frames of y (B, T, D) (those in `mask`) and sample
        max(num_samples, prediction_samples) continuations of `horizon` frames (`GraphicalModel.forecast`).
        Returns the prediction (B, prefix_len + H, D): the decoded posterior mean over the prefix, then the
        mean of the decoded continuations (the predictive mean); and the first `num_samples` decoded paths
        (S, B, prefix_len + H, D)."""
        self.check_prediction_length(y)
        prefix, S = self.prefix_len, max(num_samples, self.prediction_samples)
        post = self.infer(y[:, :prefix], self.expected_globals().potentials, S,
                          None if mask is None else mask[:, :prefix])
        futures = self.decode_mean(self.pgm.forecast(post, self.horizon, S), y.dtype)  # (S, B, H, D)
        mean = torch.cat([self.decode_mean(post.mean, y.dtype), futures.mean(0)], 1)
        paths = torch.cat([self.decode_mean(post.samples[:num_samples], y.dtype), futures[:num_samples]], 2)
        return mean, paths

    def check_prediction_length(self, y: torch.Tensor) -> int:
        """prefix_len + horizon, after checking that the sequences y (B, T, D) are that long."""
        length = self.prefix_len + self.horizon
        if y.shape[1] < length:
            raise DataError(f"prediction needs sequences of at least prefix_len + horizon = {length} frames, "
                            f"got {y.shape[1]}; lower arch.args.prefix_len or horizon")
        return length

    def evaluate_more(self, batch: dict[str, torch.Tensor], y: torch.Tensor, post: LocalPosterior,
                      metrics: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Per sequence, the summed squared prediction errors of the model and of repeating the last observed
        frame over the real frames of the horizon, against the noiseless frames (or the observed ones), and
        the number of values they sum over."""
        wanted = [name for name in ("pred_mse", "pred_mse_repeat_last") if name in metrics]
        if not wanted:
            return {}
        prefix, H = self.prefix_len, self.horizon
        mask = self.observed_nodes(batch)
        self.check_prediction_length(y)
        truth = batch.get("clean", y)[:, prefix:prefix + H]
        real = torch.ones_like(truth[..., 0]) if mask is None else mask[:, prefix:prefix + H].to(truth.dtype)  # (B, H)

        def squared_error(prediction: torch.Tensor) -> torch.Tensor:
            return (((prediction - truth) ** 2).sum(-1) * real).sum(-1)

        out = {"pred_values": real.sum(-1).double() * y.shape[-1]}
        if "pred_mse" in wanted:
            mean, _ = self.predict(y, 1, mask)
            out["pred_sq_error"] = squared_error(mean[:, prefix:])
        if "pred_mse_repeat_last" in wanted:
            out["repeat_sq_error"] = squared_error(y[:, prefix - 1:prefix])
        return out

    def model_summary(self, per_example: PerExample) -> dict[str, Any]:
        summary = super().model_summary(per_example)
        if "pred_values" in per_example:
            summary.update(prefix_len=self.prefix_len, horizon=self.horizon)
        return summary

    @torch.no_grad()
    def visualize(self, writer: Any, batch: dict[str, torch.Tensor], step: int, tag: str) -> None:
        """Per sequence (the first 3), `{tag}/predictions_{i}`: data, the predicted mean and sampled paths,
        conditioned on the prefix, whose end is marked."""
        y = self.observations(batch)[:3]
        if y.shape[1] < self.prefix_len + self.horizon:
            return
        mask = self.observed_nodes(batch)
        mask = None if mask is None else mask[:3]
        mean, samples = self.predict(y, self.figure_samples, mask)
        rows = {"data": y[:, :mean.shape[1]], "predicted mean": mean,
                **{f"sample {i + 1}": s for i, s in enumerate(samples)}}
        log_sequences(writer, f"{tag}/predictions", step, past_the_end_as_nan(rows, mask), self.prefix_len,
                      title="Prediction, sequence")


def past_the_end_as_nan(rows: dict[str, torch.Tensor], mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Figure rows name -> (..., B, T, D) with the frames outside `mask` (B, T') (T <= T') set to NaN (drawn grey)."""
    if mask is None:
        return rows
    return {name: torch.where(mask[:, :row.shape[-2], None], row, torch.nan) for name, row in rows.items()}
