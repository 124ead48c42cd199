"""The Trainer: training and validation epochs, devices (DataParallel, DDP), mixed
precision, torch.compile, gradient clipping, non-finite losses, TensorBoard and progress bars.

A training step reads nothing back to the host: the loss's finiteness is checked on the device
(`NonFiniteWatch`, read once per `log_every` steps and per epoch), a non-finite step is skipped
on the device by optimizers that take a `found_inf` flag (fused Adam, AdamW, SGD; and every
optimizer under the fp16 GradScaler), and the metric sums stay on the device until the epoch ends.
The one exception: `nan_policy: skip` with an optimizer that cannot skip on the device checks each
loss on the host before its step."""
from __future__ import annotations

import contextlib
import math
import sys
from typing import Iterable, Iterator

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from base.base_data_loader import BaseDataLoader
from base.base_model import LABEL_FIELDS, BaseModel
from base.base_trainer import BaseTrainer, EpochCallback, TrainerContext
from logger.figures import FigureWriter, file_stem
from logger.tensorboard import TensorboardWriter, curve_tag
from trainer.metric_tracker import MetricTracker
from trainer.non_finite import NonFiniteWatch
from trainer.restarts import RestartsMixin
from trainer.optim import skips_step_on_found_inf, step_with_found_inf
from utils.device import move_to
from utils.distributed import all_reduce_sum, sum_statistics
from utils.errors import NonFiniteLossError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer(RestartsMixin, BaseTrainer):
    """Trains any BaseModel on any BaseDataLoader as the config says."""

    def __init__(self, model: BaseModel, optimizers: dict, schedulers: dict, data: BaseDataLoader, config: dict,
                 context: TrainerContext, after_epoch: EpochCallback | None = None):
        """`optimizers` and `schedulers` by parameter group (`build_optimizers`); `after_epoch` as in
        BaseTrainer. Resume with `load_state_dict(checkpoint)` before `fit()`."""
        cfg = config["trainer"]
        device, device_ids, dist_info = context.device, context.device_ids, context.dist
        amp = cfg["amp"]
        if amp != "off" and device.type != "cuda":
            context.logger.warning("trainer.amp=%s needs CUDA; training in full precision on %s", amp, device.type)
            amp = "off"
        scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        super().__init__(model.to(device), optimizers, schedulers, config, context, after_epoch, scaler)
        self.amp_dtype = AMP_DTYPES.get(amp)
        self.device = device
        self.model: nn.Module = model
        self.data_parallel = False
        if dist_info.enabled:
            self.model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        elif device_ids:
            self.model = nn.DataParallel(model, device_ids=device_ids)
            self.data_parallel = True

        pin = device.type == "cuda"
        seed = config["seed"]
        self.train_loader = data.train_loader(seed, dist_info.rank, dist_info.world_size, pin)
        self.val_loader = data.val_loader(seed, dist_info.rank, dist_info.world_size, pin)
        self.len_epoch = cfg["len_epoch"] or len(self.train_loader)
        vis_set = data.val_set if data.val_set is not None else data.test_set
        self.vis_batch = vis_set.__getitems__(list(range(min(model.visualization_size, len(vis_set)))))

        self.compiled = self._compile(cfg["compile"])
        self.writer = context.writer if context.writer is not None else TensorboardWriter(None, enabled=False)
        self.grad_clip = cfg["grad_clip"]
        self.nan_policy = cfg["nan_policy"]
        self.log_every = cfg["log_every"]
        self.visualize_every = cfg["visualize_every"]
        self.histograms = cfg["histograms"]
        self.log_steps = cfg["log_steps"]
        self.logged: dict[str, float] = {}  # run-level scalars and model diagnostics: the last value written
        self.show_progress = context.console and cfg["verbosity"] > 0 and dist_info.is_main and sys.stderr.isatty()
        self.tracker = MetricTracker()
        self.non_finite = NonFiniteWatch(device)
        #: a non-finite step can be skipped without a host read: the GradScaler or every optimizer takes found_inf
        self.skip_on_device = scaler is not None or all(skips_step_on_found_inf(opt) for opt in optimizers.values())
        self.skipped_steps = 0
        self.drawn_epoch = 0
        self.schedules: dict[str, float] = {}
        self.hparams = context.hparams
        if dist_info.is_main:
            self.writer.run.add_text("config", _as_markdown_code(yaml.safe_dump(config, sort_keys=False)), 0)
        self._init_restarts(data)

    # ------------------------------------------------------------- epochs
    def _run_epoch(self, epoch: int) -> dict[str, float]:
        change = self.model_core.begin_epoch(epoch, self._training_set)
        if change is not None and self.dist.is_main:
            self.logger.info("epoch %d: %s", epoch, change)
        self.schedules = self.model_core.schedule_values()  # the values this epoch trains with
        log = self.train_epoch(epoch)
        log.update({f"val_{k}": v for k, v in self.valid_epoch().items()})
        self.model_core.set_epochs_done(epoch)
        for sched in self.schedulers.values():
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(log[self.monitor_key or ("val_loss" if "val_loss" in log else "loss")])
            else:
                sched.step()
        return log

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """`len_epoch` optimizer steps; returns the example-weighted means over all ranks."""
        self.model.train()
        self.tracker.reset()
        bar = tqdm(total=self.len_epoch, desc=f"epoch {epoch}/{self.epochs}", leave=False,
                   disable=not self.show_progress, dynamic_ncols=True)
        try:
            for batch in self._epoch_batches(epoch):
                batch = move_to(batch, self.device, non_blocking=True)
                step = self._train_step(batch, epoch)
                self.global_step += 1
                if step is not None:
                    out, taken = step
                    self.tracker.update(out, len(batch["x"]), taken)
                    if self.global_step % self.log_every == 0:
                        self._check_non_finite(epoch)
                        if self.dist.is_main and (self.log_steps or self.show_progress):
                            self._log_step(out, bar)
                bar.update()
        except NonFiniteLossError:
            raise
        except Exception:  # a step after an unnoticed non-finite one may fail on non-finite weights: say so first
            self._check_non_finite(epoch)
            raise
        finally:
            bar.close()
        self._check_non_finite(epoch)
        return self.tracker.result()

    def _log_step(self, out: dict[str, torch.Tensor], bar: tqdm) -> None:
        """The step's loss to the progress bar and, with trainer.log_steps, its scalars to TensorBoard
        (`step/<key>`): one host read, made only when one of them is shown."""
        values = dict(zip(out, torch.stack([v.float() for v in out.values()]).tolist()))
        if not math.isfinite(values["loss"]):  # a skipped step
            return
        if self.log_steps:
            for key, value in values.items():
                self.writer.train.add_scalar(f"step/{key}", value, self.global_step)
        bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)

    @torch.no_grad()
    def valid_epoch(self) -> dict[str, float]:
        """Means of the model's outputs over the validation split ({} without one). The model samples as it
        does in training, from forked RNG streams: a validation set does not change what training draws."""
        if self.val_loader is None:
            return {}
        batches = tqdm(self.val_loader, desc="validation", leave=False, disable=not self.show_progress)
        return self.eval_means(move_to(batch, self.device, non_blocking=True) for batch in batches)

    @torch.no_grad()
    def eval_means(self, batches: Iterable[dict]) -> dict[str, float]:
        """Means of the model's outputs in eval mode over `batches` (on the device), over all ranks, sampling
        from forked RNG streams (what training draws does not change)."""
        self.model_core.eval()
        self.tracker.reset()
        with torch.random.fork_rng(devices=self._rng_devices()):
            for batch in batches:
                with self._autocast():
                    out = self.model_core(batch)
                self.tracker.update(out, len(batch["x"]))
        return self.tracker.result()

    def _training_set(self) -> Iterator[dict]:
        """The whole training split in order, in batches of the loader's size on the device, without label
        fields (`BaseModel.begin_epoch`)."""
        dataset, size = self.train_loader.dataset, self.train_loader.batch_size
        for first in range(0, len(dataset), size):
            batch = dataset.__getitems__(list(range(first, min(first + size, len(dataset)))))
            yield move_to({k: v for k, v in batch.items() if k not in LABEL_FIELDS}, self.device)

    def _rng_devices(self) -> list[int]:
        """The CUDA device whose RNG stream a fork must also save and restore (none on CPU)."""
        return [self.device.index or 0] if self.device.type == "cuda" else []

    def _epoch_batches(self, epoch: int) -> Iterator[dict]:
        """`len_epoch` batches; each pass over the loader gets its own (seed, pass) order, so
        that an epoch's batches depend on the epoch number alone (exact resume)."""
        passes = math.ceil(self.len_epoch / len(self.train_loader))
        steps = 0
        for p in range(passes):
            key = (epoch - 1) * passes + p
            self.train_loader.sampler.set_epoch(key)
            self.train_loader.dataset.set_epoch(key)
            for batch in self.train_loader:
                yield batch
                steps += 1
                if steps == self.len_epoch:
                    return

    # --------------------------------------------------------------- step
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _compile(self, spec: bool | dict) -> bool:
        """Compile the training model's forward (and so, through AOTAutograd, its backward) as
        `trainer.compile` says; the optimizer step, validation and test.py stay eager. `model_core` stays
        the plain module, so checkpoints keep their keys (no `_orig_mod.`). Returns whether it compiled."""
        if spec is False:
            return False
        if self.data_parallel:
            self.logger.warning("trainer.compile is not applied under DataParallel (it replicates the module "
                                "every step): training eagerly; run under torchrun (DDP) to compile")
            return False
        options = {} if spec is True else dict(spec)
        self.logger.info("compiling the training step with torch.compile(%s): the first steps take longer",
                         ", ".join(f"{k}={v!r}" for k, v in options.items()))
        self.eager_model = self.model
        self.model = torch.compile(self.model, **options)
        return True

    def _forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """The training model's outputs; when the compiler itself fails (e.g. no C++ compiler on this machine),
        say so once and go on eagerly: nothing of the step has run yet."""
        if not self.compiled:
            return self.model(batch)
        torch.compiler.cudagraph_mark_step_begin()  # outputs of the last step are read already
        try:
            return self.model(batch)
        except torch._dynamo.exc.BackendCompilerFailed as err:
            reason = " ".join(str(err).split("\n\n")[0].split())[:300]  # without torch's hints
            self.logger.warning("trainer.compile: the compiler failed (%s); training eagerly", reason)
            self.model, self.compiled = self.eager_model, False
            return self.model(batch)

    def _train_step(self, batch: dict, epoch: int) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        """One optimizer step; returns the detached outputs and whether the step was taken (a 0-d bool on
        the device), or None for a step skipped after a host check."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        with self._autocast():
            out = self._forward(batch)
        statistics = out.pop("statistics", None)
        if self.data_parallel:  # DataParallel gathers one scalar per GPU
            out = {k: v.mean() for k, v in out.items()}
        loss = out["loss"]
        finite = self._finite_on_every_rank(loss)
        self.non_finite.record(finite, loss, self.global_step + 1)
        if self.nan_policy == "skip" and not self.skip_on_device and not finite.item():
            self._check_non_finite(epoch)
            return None
        if self.scaler is not None:  # a non-finite loss makes every gradient NaN: the scaler skips the step
            self.scaler.scale(loss * torch.where(finite, 1.0, math.nan)).backward()
        else:
            loss.backward()
        if self.grad_clip > 0:
            if self.scaler is not None:
                for opt in self.optimizers.values():
                    self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.model_core.parameters(), self.grad_clip)
        self._step_optimizers(finite)
        taken = finite if self.skip_on_device else None  # else a non-finite step is stepped (stop) or never here (skip)
        self.model_core.after_optimizer_step(None if statistics is None else sum_statistics(statistics), taken)
        return {k: v.detach() for k, v in out.items()}, finite

    def _step_optimizers(self, finite: torch.Tensor) -> None:
        """Step every optimizer; on the device, a step with a non-finite loss changes nothing where the
        optimizer takes a found_inf flag (as the GradScaler passes it)."""
        if self.scaler is not None:
            for opt in self.optimizers.values():
                self.scaler.step(opt)
            self.scaler.update()
            return
        found_inf = (~finite).float() if self.skip_on_device else None
        for opt in self.optimizers.values():
            if found_inf is not None:
                step_with_found_inf(opt, found_inf)
            else:
                opt.step()

    def _finite_on_every_rank(self, loss: torch.Tensor) -> torch.Tensor:
        """Whether the loss is finite on every rank, a 0-d bool on the device (no host read)."""
        bad = (~torch.isfinite(loss.detach())).float()
        if self.dist.enabled:
            all_reduce_sum(bad)
        return bad == 0

    def _check_non_finite(self, epoch: int) -> None:
        """Read the device-side record of non-finite steps (one sync): stop (`nan_policy: stop`) at the first
        one, or count and report the skipped ones (`skip`)."""
        found = self.non_finite.read()
        if found is None:
            return
        where = f"epoch {epoch}, step {found.first_step}"
        if self.nan_policy == "stop":
            raise NonFiniteLossError(
                f"non-finite loss ({found.first_loss}) at {where}; training stopped and "
                f"{self.last_good_checkpoint()}. Lower the learning rate, set trainer.grad_clip, or set "
                f"trainer.nan_policy=skip to skip such steps."
            )
        if self.skipped_steps < 10:
            more = f" and {found.count - 1} more up to step {self.global_step}" if found.count > 1 else ""
            self.logger.warning("non-finite loss (%s) at %s%s: step(s) skipped (trainer.nan_policy=skip)",
                                found.first_loss, where, more)
        self.skipped_steps += found.count

    # ------------------------------------------------------------ logging
    def _log_epoch(self, epoch: int, log: dict[str, float], seconds: float, improved: bool) -> None:
        if not self.dist.is_main:
            return
        self._print_epoch(epoch, log, seconds, improved)
        step = self.global_step
        self._write_epoch_scalars(log, self.schedules, step)
        for name, opt in self.optimizers.items():
            for i, group in enumerate(opt.param_groups):
                suffix = f"_{i}" if len(opt.param_groups) > 1 else ""
                self._log_if_changed(self.writer.run, f"lr/{name}{suffix}", group["lr"], step)
        if improved:
            self.writer.run.add_scalar(f"best/{self.monitor_key}", self.monitor_best, step)
        if self.skipped_steps:
            self.writer.train.add_scalar("epoch/skipped_steps", self.skipped_steps, step)
        if self.histograms:
            for name, param in self.model_core.named_parameters():
                self.writer.train.add_histogram(f"params/{name}", param.detach().cpu(), step)
        if self.visualize_every and (epoch == 1 or epoch % self.visualize_every == 0):
            self._visualize(epoch)

    def _print_epoch(self, epoch: int, log: dict[str, float], seconds: float, improved: bool,
                     prefix: str = "", epochs: int | None = None) -> None:
        """The epoch's line in the run log (`prefix`, `epochs`: a restart's, e.g. "start 2/4, epoch 3/10")."""
        parts = " | ".join(f"{k} {v:.4f}" for k, v in log.items())
        self.logger.info("%sepoch %d/%d | %s | %.1fs%s", prefix, epoch, epochs or self.epochs, parts, seconds,
                         " *" if improved else "")

    def _write_epoch_scalars(self, log: dict[str, float], schedules: dict[str, float], step: int) -> None:
        """An epoch's means (train and val_*) on their curves and the model's schedules, at global step `step`."""
        diagnostics, unit = self.model_core.diagnostics, self.model_core.unit
        for key, value in log.items():
            split, name = ("val", key[4:]) if key.startswith("val_") else ("train", key)
            writer, tag = getattr(self.writer, split), curve_tag(name, unit)
            if name in diagnostics:
                self._log_if_changed(writer, tag, value, step, memo=f"{split}/{name}")
            else:
                writer.add_scalar(tag, value, step)
        for name, value in schedules.items():
            self._log_if_changed(self.writer.run, f"schedule/{name}", value, step)

    def _log_if_changed(self, writer, tag: str, value: float, step: int, memo: str | None = None) -> None:
        """A scalar that is mostly constant (a learning rate, a schedule, a model diagnostic): written the first
        time and whenever its value changes, so that it draws no flat line."""
        memo = memo or tag
        if self.logged.get(memo) != value:
            writer.add_scalar(tag, value, step)
            self.logged[memo] = value

    def _visualize(self, epoch: int) -> None:
        """Model figures on a fixed validation batch, to the val run and to figures/val_<name>_epoch<N>.png,
        without disturbing the training RNG streams."""
        figures = FigureWriter(self.writer.val, self.run_dir / "figures" if self.run_dir is not None else None,
                               lambda tag: f"{file_stem(tag)}_epoch{epoch}.png", caption=f"val, epoch {epoch}")
        with torch.random.fork_rng(devices=self._rng_devices()), torch.no_grad():
            self.model_core.eval()
            self.model_core.visualize(figures, move_to(self.vis_batch, self.device), self.global_step, "val")
        self.drawn_epoch = epoch

    def _on_fit_start(self) -> None:
        if self.dist.is_main and self.hparams is not None:
            self.writer.write_hparams(self.hparams)

    def _on_fit_end(self, log: dict[str, float], epoch: int) -> None:
        if self.dist.is_main and log and self.visualize_every and self.drawn_epoch != epoch:  # the last epoch
            self._visualize(epoch)
        self.writer.close()


def _as_markdown_code(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
