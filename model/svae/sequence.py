"""SequenceSVAE: a structured VAE over sequences of frames, one latent node per frame, that predicts by
conditioning on a prefix (SVAE.md section 4): the prediction metrics and figure of SVAE-LDS, shared by
every graphical model over time."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from base.metric import Metric, PerExample, mean_of
from model.svae.graphical_model import GraphicalModel, LocalPosterior
from model.svae.recognition import GaussianRecognition
from model.svae.structured_vae import StructuredVAE
from model.visualization import log_sequences
from utils.errors import ConfigError, DataError


class SequenceSVAE(StructuredVAE):
    """Batches {"x": (B, T, P)} and, for the prediction metrics, the noiseless frames {"clean": (B, T, P)}.
    The decoder's mean goes through a sigmoid (frames in [0, 1]).

    Prediction: the node potentials after the first `prefix_len` frames are zeroed, so q(x) of the later
    frames is the model's own continuation; its decoded mean is compared with the noiseless frames over
    the next `horizon` frames (`pred_mse`), as is repeating the last observed frame (`pred_mse_repeat_last`).

    Args (besides StructuredVAE's):
        data_shape: (T, P).
        prefix_len, horizon: condition on frames 1..prefix_len, predict the next `horizon`.
        figure_samples: sampled continuations drawn in the figure.
    """

    metrics = StructuredVAE.metrics + (
        Metric("pred_mse", mean_of("pred_mse"),
               "squared error per pixel of the predicted mean over the horizon, against the noiseless frames"),
        Metric("pred_mse_repeat_last", mean_of("pred_mse_repeat_last"),
               "the same for repeating the last observed frame"),
    )
    visualization_size = 3

    def __init__(self, pgm: GraphicalModel, encoder: GaussianRecognition, decoder: nn.Module,
                 data_shape: tuple[int, int], num_train: int, rho: float, num_samples: int, eval_samples: int,
                 prefix_len: int, horizon: int, figure_samples: int, kl_warmup_epochs: int = 0):
        if len(data_shape) != 2:
            raise ConfigError(f"{type(self).__name__} needs sequences of frames, data_shape (T, P); "
                              f"got {tuple(data_shape)}")
        for name, value in [("prefix_len", prefix_len), ("horizon", horizon), ("figure_samples", figure_samples)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        super().__init__(pgm, encoder, decoder, num_train, frames_per_example=data_shape[0], rho=rho,
                         num_samples=num_samples, eval_samples=eval_samples, kl_warmup_epochs=kl_warmup_epochs)
        self.seq_len = data_shape[0]
        self.prefix_len, self.horizon, self.figure_samples = prefix_len, horizon, figure_samples

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output (..., 2P): sigmoid mean and raw log-variance of p(y_t | x_t)."""
        mean, raw = self.decoder(x)
        return torch.cat([torch.sigmoid(mean), raw], -1)

    def predict(self, y: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition on the first `prefix_len` frames of y (B, T, P) and continue for `horizon` frames:
        decoded means of the posterior mean path (B, P+H, P) and of S sampled paths (S, B, P+H, P)."""
        length = self.check_prediction_length(y)
        post = self.infer(y[:, :length], self.expected_potentials()[0], num_samples, observed=self.prefix_len)
        decode_mean = lambda x: self.likelihood.mean(self.decode(x.to(y.dtype)))  # noqa: E731
        return decode_mean(post.mean), decode_mean(post.samples)

    def check_prediction_length(self, y: torch.Tensor) -> int:
        """prefix_len + horizon, after checking that the sequences y (B, T, P) are that long."""
        length = self.prefix_len + self.horizon
        if y.shape[1] < length:
            raise DataError(f"prediction needs sequences of at least prefix_len + horizon = {length} frames, "
                            f"got {y.shape[1]}; lower arch.args.prefix_len or horizon")
        return length

    def evaluate_more(self, batch: dict[str, torch.Tensor], y: torch.Tensor, post: LocalPosterior,
                      metrics: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Per sequence, the squared prediction errors (means over the H predicted frames and the pixels)
        of the model and of repeating the last observed frame, against the noiseless frames."""
        wanted = [name for name in ("pred_mse", "pred_mse_repeat_last") if name in metrics]
        if not wanted:
            return {}
        if "clean" not in batch:
            raise DataError("metrics pred_mse and pred_mse_repeat_last need the noiseless frames, but the "
                            "data loader's batches have no 'clean'; drop them from the config's `metrics`")
        P, H = self.prefix_len, self.horizon
        truth = batch["clean"][:, P:P + H]
        out = {}
        if "pred_mse" in wanted:
            mean, _ = self.predict(y, 1)
            out["pred_mse"] = ((mean[:, P:] - truth) ** 2).mean((1, 2))
        if "pred_mse_repeat_last" in wanted:
            out["pred_mse_repeat_last"] = ((y[:, P - 1:P] - truth) ** 2).mean((1, 2))
        return out

    def model_summary(self, per_example: PerExample) -> dict[str, Any]:
        summary = super().model_summary(per_example)
        if "pred_mse" in per_example or "pred_mse_repeat_last" in per_example:
            summary.update(prefix_len=self.prefix_len, horizon=self.horizon)
        return summary

    @torch.no_grad()
    def visualize(self, writer: Any, batch: dict[str, torch.Tensor], step: int, tag: str) -> None:
        """Per sequence (the first 3), `{tag}/predictions_{i}`: data, the predicted mean and sampled paths,
        conditioned on the prefix, whose end is marked."""
        y = self.observations(batch)[:3]
        if y.shape[1] < self.prefix_len + self.horizon:
            return
        mean, samples = self.predict(y, self.figure_samples)
        rows = {"data": y[:, :mean.shape[1]], "predicted mean": mean,
                **{f"sample {i + 1}": s for i, s in enumerate(samples)}}
        log_sequences(writer, f"{tag}/predictions", step, rows, self.prefix_len, title="Prediction, sequence")
