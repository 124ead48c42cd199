"""The Trainer: training and validation epochs, devices (DataParallel, DDP), mixed
precision, gradient clipping, non-finite losses, TensorBoard and progress bars."""
from __future__ import annotations

import contextlib
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from base.base_data_loader import BaseDataLoader
from base.base_model import BaseModel
from base.base_trainer import BaseTrainer
from logger.figures import FigureWriter, file_stem
from logger.tensorboard import TensorboardWriter
from trainer.metric_tracker import MetricTracker
from utils.config import flatten
from utils.device import move_to
from utils.distributed import DistInfo, all_reduce_sum, sum_statistics
from utils.errors import NonFiniteLossError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer(BaseTrainer):
    """Trains any BaseModel on any BaseDataLoader as the config says."""

    def __init__(self, model: BaseModel, optimizers: dict, schedulers: dict, config: dict,
                 data: BaseDataLoader, device: torch.device, device_ids: list[int], run_dir: Path | None,
                 dist_info: DistInfo, logger: logging.Logger, writer: TensorboardWriter):
        cfg = config["trainer"]
        amp = cfg["amp"]
        if amp != "off" and device.type != "cuda":
            logger.warning("trainer.amp=%s needs CUDA; training in full precision on %s", amp, device.type)
            amp = "off"
        scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        super().__init__(model.to(device), optimizers, schedulers, config, run_dir, dist_info, logger, scaler)
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

        self.writer = writer
        self.grad_clip = cfg["grad_clip"]
        self.nan_policy = cfg["nan_policy"]
        self.log_every = cfg["log_every"]
        self.visualize_every = cfg["visualize_every"]
        self.histograms = cfg["histograms"]
        self.show_progress = cfg["verbosity"] > 0 and dist_info.is_main and sys.stderr.isatty()
        self.tracker = MetricTracker()
        self.skipped_steps = 0
        self.drawn_epoch = 0
        self.schedules: dict[str, float] = {}
        self.hparams = hparams_of(config)  # HPARAMS columns; a sweep adds the keys it varies
        if dist_info.is_main:
            self.writer.train.add_text("config", _as_markdown_code(yaml.safe_dump(config, sort_keys=False)), 0)

    # ------------------------------------------------------------- epochs
    def _run_epoch(self, epoch: int) -> dict[str, float]:
        self.schedules = self.model_core.schedule_values()  # the values this epoch trains with
        log = self.train_epoch(epoch)
        log.update({f"val_{k}": v for k, v in self.valid_epoch().items()})
        self.model_core.on_epoch_end(epoch)
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
        for batch in self._epoch_batches(epoch):
            batch = move_to(batch, self.device, non_blocking=True)
            out = self._train_step(batch, epoch)
            self.global_step += 1
            if out is not None:
                self.tracker.update(out, len(batch["x"]))
                if self.global_step % self.log_every == 0 and self.dist.is_main:
                    values = {k: v.item() for k, v in out.items()}
                    for key, value in values.items():
                        self.writer.train.add_scalar(f"step/{key}", value, self.global_step)
                    bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)
            bar.update()
        bar.close()
        return self.tracker.result()

    @torch.no_grad()
    def valid_epoch(self) -> dict[str, float]:
        """Means of the model's outputs over the validation split ({} without one)."""
        if self.val_loader is None:
            return {}
        self.model_core.eval()
        self.tracker.reset()
        for batch in tqdm(self.val_loader, desc="validation", leave=False, disable=not self.show_progress):
            batch = move_to(batch, self.device, non_blocking=True)
            with self._autocast():
                out = self.model_core(batch)
            self.tracker.update(out, len(batch["x"]))
        return self.tracker.result()

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

    def _train_step(self, batch: dict, epoch: int) -> dict[str, torch.Tensor] | None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.model(batch)
        statistics = out.pop("statistics", None)
        if self.data_parallel:  # DataParallel gathers one scalar per GPU
            out = {k: v.mean() for k, v in out.items()}
        loss = out["loss"]
        if not self._all_finite(loss):
            self._on_non_finite(loss, epoch)
            return None
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        if self.grad_clip > 0:
            if self.scaler is not None:
                for opt in self.optimizers.values():
                    self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.model_core.parameters(), self.grad_clip)
        for opt in self.optimizers.values():
            if self.scaler is not None:
                self.scaler.step(opt)
            else:
                opt.step()
        if self.scaler is not None:
            self.scaler.update()
        self.model_core.after_optimizer_step(None if statistics is None else sum_statistics(statistics))
        return {k: v.detach() for k, v in out.items()}

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (all ranks must take the same branch)."""
        bad = (~torch.isfinite(loss.detach())).float()
        if self.dist.enabled:
            all_reduce_sum(bad)
        return bad.item() == 0

    def _on_non_finite(self, loss: torch.Tensor, epoch: int) -> None:
        where = f"epoch {epoch}, step {self.global_step + 1}"
        if self.nan_policy == "skip":
            self.skipped_steps += 1
            if self.skipped_steps <= 10:
                self.logger.warning("non-finite loss (%s) at %s: step skipped (trainer.nan_policy=skip)",
                                    loss.item(), where)
            return
        raise NonFiniteLossError(
            f"non-finite loss ({loss.item()}) at {where}; training stopped and {self.last_good_checkpoint()}. "
            f"Lower the learning rate, set trainer.grad_clip, or set trainer.nan_policy=skip to skip such steps."
        )

    # ------------------------------------------------------------ logging
    def _log_epoch(self, epoch: int, log: dict[str, float], seconds: float, improved: bool) -> None:
        if not self.dist.is_main:
            return
        parts = " | ".join(f"{k} {v:.4f}" for k, v in log.items())
        self.logger.info("epoch %d/%d | %s | %.1fs%s", epoch, self.epochs, parts, seconds, " *" if improved else "")
        step = self.global_step
        for key, value in log.items():
            if key.startswith("val_"):
                self.writer.val.add_scalar(f"epoch/{key[4:]}", value, step)
            else:
                self.writer.train.add_scalar(f"epoch/{key}", value, step)
        for name, opt in self.optimizers.items():
            for i, group in enumerate(opt.param_groups):
                suffix = f"_{i}" if len(opt.param_groups) > 1 else ""
                self.writer.train.add_scalar(f"lr/{name}{suffix}", group["lr"], step)
        if self.skipped_steps:
            self.writer.train.add_scalar("epoch/skipped_steps", self.skipped_steps, step)
        if self.histograms:
            for name, param in self.model_core.named_parameters():
                self.writer.train.add_histogram(f"params/{name}", param.detach().cpu(), step)
        for name, value in self.schedules.items():
            self.writer.train.add_scalar(f"schedule/{name}", value, step)
        if self.visualize_every and (epoch == 1 or epoch % self.visualize_every == 0):
            self._visualize(epoch)

    def _visualize(self, epoch: int) -> None:
        """Model figures on a fixed validation batch, to the val run and to figures/val_<name>_epoch<N>.png,
        without disturbing the training RNG streams."""
        figures = FigureWriter(self.writer.val, self.run_dir / "figures" if self.run_dir is not None else None,
                               lambda tag: f"{file_stem(tag)}_epoch{epoch}.png")
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            self.model_core.eval()
            self.model_core.visualize(figures, move_to(self.vis_batch, self.device), self.global_step, "val")
        self.drawn_epoch = epoch

    def _on_fit_start(self) -> None:
        if self.dist.is_main:
            self.writer.write_hparams(self.hparams)

    def _on_fit_end(self, log: dict[str, float], epoch: int) -> None:
        if self.dist.is_main and log and self.visualize_every and self.drawn_epoch != epoch:  # the last epoch
            self._visualize(epoch)
        self.writer.close()


def hparams_of(config: dict) -> dict[str, Any]:
    """The HPARAMS columns every run shares: architecture, learning rate(s), batch size, seed, epochs, then
    the flattened arch.args (lists as text)."""
    optimizers = config["optimizer"]
    groups = {"": optimizers} if "type" in optimizers else optimizers
    columns: dict[str, Any] = {"architecture": config["arch"]["type"]}
    for group, spec in groups.items():
        columns[f"lr/{group}" if group else "lr"] = spec["args"].get("lr")
    columns.update(batch_size=config["data_loader"]["args"].get("batch_size"), seed=config["seed"],
                   epochs=config["trainer"]["epochs"])
    for key, value in flatten({"arch": config["arch"].get("args") or {}}).items():
        columns[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return {key: value for key, value in columns.items() if value is not None}


SHOWN_BY_HPARAMS = re.compile(r"arch\.args\..+|optimizer\.(\w+\.)?args\.lr|data_loader\.args\.batch_size|"
                              r"trainer\.epochs|seed")


def extra_hparams(values: dict[str, Any]) -> dict[str, Any]:
    """HPARAMS columns for config values by key path (a sweep's parameters), without those `hparams_of`
    already shows under its own names (arch.args.*, learning rates, batch size, epochs, seed)."""
    return {key: value if isinstance(value, (bool, int, float, str)) else str(value)
            for key, value in values.items() if not SHOWN_BY_HPARAMS.fullmatch(key)}


def _as_markdown_code(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
