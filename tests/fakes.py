"""Small deterministic models and data for framework tests.

Run as a script it is train.py with these registered, e.g. under torchrun:
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/fakes.py -c CFG
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Mapping

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from base.base_data_loader import BaseDataLoader, TensorDictDataset  # noqa: E402
from base.base_model import BaseModel  # noqa: E402
from base.metric import Metric, mean_of  # noqa: E402
from data_loader.registry import DATA_LOADERS  # noqa: E402
from model.graph.recurrent import RecurrentGraphVAE, Trajectory  # noqa: E402
from model.registry import ARCHITECTURES  # noqa: E402


@DATA_LOADERS.register("Regression")
class RegressionDataLoader(BaseDataLoader):
    """{"x": (B, in_dim), "y": (B, 1)} with y = x @ w + noise, fixed by data_seed."""

    def __init__(self, batch_size: int = 16, shuffle: bool = True, validation_split: float = 0.0,
                 num_workers: int = 0, split_seed: int = 0, num_examples: int = 64, in_dim: int = 4,
                 data_seed: int = 0):
        super().__init__(batch_size, shuffle, validation_split, num_workers, split_seed)
        self.data_shape = (in_dim,)
        gen = torch.Generator().manual_seed(data_seed)

        def make(n: int) -> TensorDictDataset:
            x = torch.randn(n, in_dim, generator=gen)
            y = x @ torch.arange(1.0, in_dim + 1).unsqueeze(1) + 0.1 * torch.randn(n, 1, generator=gen)
            return TensorDictDataset({"x": x, "y": y})

        self.train_set, self.test_set = make(num_examples), make(num_examples // 2)
        self.split_validation()


@ARCHITECTURES.register("LinearTest")
class LinearTest(BaseModel):
    """Deterministic linear regression (mean squared error per point).

    nan_at_call: the forward call (1-based, training mode) whose loss is NaN.
    """

    metrics = (Metric("mse", mean_of("mse"), "squared error per point"),)

    def __init__(self, data_shape: tuple[int, ...], nan_at_call: int | None = None):
        super().__init__()
        self.linear = nn.Linear(data_shape[0], 1)
        self.nan_at_call = nan_at_call
        self.calls = 0

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mse = (self.linear(batch["x"]) - batch["y"]).pow(2).mean()
        if self.training:
            self.calls += 1
            if self.calls == self.nan_at_call:
                mse = mse * math.nan
        return {"loss": mse, "mse": mse}

    def evaluate_batch(self, batch: dict[str, torch.Tensor], metrics: tuple[str, ...],
                       options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {"mse": (self.linear(batch["x"]) - batch["y"]).pow(2).squeeze(1)}


@ARCHITECTURES.register("HookProbe")
class HookProbe(BaseModel):
    """Records the Trainer's hook calls; has parameter groups 'weight' and 'bias' and a
    temperature `tau` halved at every epoch end (schedule state). In training, `out["statistics"]`
    counts the batch's examples and `after_optimizer_step` adds the count to `examples_applied` (as the
    SVAEs apply their natural-gradient statistics); the loss of training call `nan_at_call` is NaN."""

    def __init__(self, data_shape: tuple[int, ...], tau: float = 1.0, nan_at_call: int | None = None):
        super().__init__()
        self.linear = nn.Linear(data_shape[0], 1)
        self.register_buffer("optimizer_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("examples_applied", torch.zeros(()))
        self.tau = tau
        self.epochs_seen: list[int] = []
        self.nan_at_call = nan_at_call
        self.calls = 0

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mse = (self.linear(batch["x"]) - batch["y"]).pow(2).mean()
        out = {"loss": mse, "tau": torch.tensor(self.tau)}
        if self.training:
            self.calls += 1
            if self.calls == self.nan_at_call:
                out["loss"] = mse * math.nan
            out["statistics"] = {"count": batch["x"].new_full((1,), float(len(batch["x"])))}
        return out

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"weight": [self.linear.weight], "bias": [self.linear.bias]}

    def after_optimizer_step(self, statistics: dict[str, torch.Tensor] | None,
                             taken: torch.Tensor | None = None) -> None:
        taken = torch.ones((), dtype=torch.bool) if taken is None else taken
        self.optimizer_steps += taken.long()
        self.examples_applied += torch.where(taken, statistics["count"], 0.0).squeeze(0)

    def visualize(self, writer: Any, batch: dict[str, torch.Tensor], step: int, tag: str) -> None:
        """One small figure, `<tag>/probe`: the weights as bars."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.8, 4.8), dpi=100)
        ax.bar(range(self.linear.weight.numel()), self.linear.weight.detach().flatten().tolist())
        ax.set(title=f"probe weights at step {step}", xlabel="input", ylabel="weight")
        writer.add_figure(f"{tag}/probe", fig, step)

    def set_epochs_done(self, epochs: int) -> None:
        self.epochs_seen.append(epochs)
        self.tau *= 0.5

    def schedule_state(self) -> dict[str, Any]:
        return {"tau": self.tau}

    def load_schedule_state(self, state: dict[str, Any]) -> None:
        self.tau = state["tau"]


@ARCHITECTURES.register("PrecisionProbe")
class PrecisionProbe(BaseModel):
    """Linear regression that counts, in buffers saved with the checkpoint, its forward calls and those that
    ran in reduced precision (autocast on for the input's device, or a linear layer's output that is not
    float32). A test fake: real models keep forward free of side effects."""

    def __init__(self, data_shape: tuple[int, ...]):
        super().__init__()
        self.linear = nn.Linear(data_shape[0], 1)
        self.register_buffer("forwards", torch.zeros((), dtype=torch.long))
        self.register_buffer("reduced_precision_forwards", torch.zeros((), dtype=torch.long))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        prediction = self.linear(batch["x"])
        reduced = torch.is_autocast_enabled(batch["x"].device.type) or prediction.dtype != torch.float32
        self.forwards += 1
        self.reduced_precision_forwards += int(reduced)
        mse = (prediction.float() - batch["y"]).pow(2).mean()
        return {"loss": mse}


@ARCHITECTURES.register("ScriptedMetric")
class ScriptedMetric(BaseModel):
    """Whatever its parameter: a loss that falls every epoch (1 / epoch) and a metric `score` that takes
    the values `scores`, one per epoch (the last one repeats); for tests of what the Trainer does with
    the metrics it monitors."""

    def __init__(self, data_shape: tuple[int, ...], scores: list[float] = (1.0,)):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.scores = [float(s) for s in scores]
        self.epoch = 1

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        anchor = 0 * self.weight  # gives the loss a graph to backpropagate through
        score = self.scores[min(self.epoch, len(self.scores)) - 1]
        return {"loss": anchor + 1.0 / self.epoch, "score": anchor.detach() + score}

    def set_epochs_done(self, epochs: int) -> None:
        self.epoch = epochs + 1


@ARCHITECTURES.register("RecurrentWithoutLatents")
class RecurrentWithoutLatents(RecurrentGraphVAE):
    """RecurrentGraphVAE with its latents removed, a baseline for it: z_t = 0 wherever the model reads it (the
    decoder and the recurrent state) and no KL, so the ELBO is the exact log-likelihood of a deterministic
    recurrent model p(x_t | s_{t-1}) with the same networks, likelihood and optimizer. The unused latent paths
    are skipped (a cheaper epoch); it evaluates `elbo` only and draws no figures."""

    def filter(self, x: torch.Tensor, same_gates: torch.Tensor, prev_gates: torch.Tensor,
               noise: torch.Tensor | None = None) -> Trajectory:
        R, T, _ = x.shape
        zeros = x.new_zeros(R, self.num_nodes * self.node_dim)
        state, states = self.start_state(R), []
        for features_t in self.features(x).unbind(1):
            states.append(self.hidden(state))
            state = self.rnn(torch.cat([features_t, zeros], -1), state)
        return Trajectory(zeros[:, None].expand(R, T, -1), torch.stack(states, 1), None, None, None, None, None,
                          state, zeros)

    def step_terms(self, x: torch.Tensor, mask: torch.Tensor, traj: Trajectory) -> tuple[torch.Tensor, torch.Tensor]:
        log_px = self.likelihood.log_prob(self.decode(traj.z, traj.states), x)
        return torch.where(mask, log_px, 0.0), x.new_zeros(*mask.shape, self.num_nodes)

    def visualize(self, writer: Any, batch: dict[str, torch.Tensor], step: int, tag: str) -> None:
        pass


if __name__ == "__main__":
    import train

    sys.exit(train.main())
