"""Helpers shared by the benchmark scripts: bench configs, a Trainer built as train.py
builds it (no run folder, TensorBoard off, full batches only), timing and argument types."""
from __future__ import annotations

import argparse
import copy
import time
from typing import Callable

import torch
from torch.utils.data import DataLoader

from base.base_trainer import TrainerContext
from logger import setup_logging
from trainer import Trainer
from trainer.components import build_data, build_model, load_and_check
from trainer.optim import build_optimizers
from utils.errors import UserError
from utils.seeding import seed_everything


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def load_bench_config(path: str, overrides: list[str], steps: int, batch_size: int | None = None) -> dict:
    """The validated config of `path` with the user's overrides, then the benchmark's own:
    `steps` steps per epoch, no TensorBoard, no progress bar, optionally another batch size."""
    forced = ["trainer.tensorboard=false", "trainer.verbosity=0", f"trainer.len_epoch={steps}"]
    if batch_size is not None:
        forced.append(f"data_loader.args.batch_size={batch_size}")
    return load_and_check(path, [*overrides, *forced])


def build_trainer(config: dict, device: torch.device) -> Trainer:
    """Data, model, optimizers and Trainer as train.py builds them, without a run folder; the
    training loader drops the short last batch of every pass (`full_batches_only`)."""
    seed_everything(config["seed"])
    data = build_data(config)
    model = build_model(config, data)
    optimizers, schedulers = build_optimizers(model.to(device), config)
    trainer = Trainer(model, optimizers, schedulers, data, config, TrainerContext(device, setup_logging(None, 0)))
    trainer.train_loader = full_batches_only(trainer.train_loader)
    return trainer


def full_batches_only(loader: DataLoader) -> DataLoader:
    """The same loader (dataset, sampler, collate, workers) with drop_last: every batch holds
    exactly `batch_size` examples, so a benchmarked step is a step at the stated batch size
    (100 SVAE-LDS chunks at batch 64 would otherwise alternate batches of 64 and 36)."""
    if len(loader.sampler) < loader.batch_size:
        raise UserError(f"batch size {loader.batch_size} is larger than the {len(loader.sampler)} training "
                        "examples: a benchmark needs at least one full batch")
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=loader.sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      worker_init_fn=loader.worker_init_fn, pin_memory=loader.pin_memory, drop_last=True)


def snapshot(trainer: Trainer) -> dict:
    """A copy of the full training state: weights, optimizer state, RNG states, step counters."""
    return copy.deepcopy(trainer.state_dict(epoch=1))


def restore(trainer: Trainer, state: dict) -> None:
    """Put the trainer back into a `snapshot` (loads a copy: the snapshot can be restored again).

    Timed rounds start from the same state so that they do the same work: on the CPU a
    longer-trained model can be slower per step (subnormal floats)."""
    trainer.load_state_dict(copy.deepcopy(state))


def set_threads(threads: int | None) -> int:
    """Apply --threads (None: torch's default) and return the intra-op thread count in effect."""
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of `fn()`, with queued device work finished before and after."""
    synchronize(device)
    started = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - started


def microseconds_per_call(fn: Callable[[], object], calls: int) -> float:
    """Mean wall-clock microseconds of `fn()` over `calls` back-to-back calls (CPU)."""
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6
