"""Device selection: CUDA_VISIBLE_DEVICES from -d, GPU count checks, CPU fallback."""
from __future__ import annotations

import argparse
import logging
import os

import torch

from utils.distributed import DistInfo


def device_spec(text: str) -> str:
    """argparse type of `-d`: 'cpu' or distinct comma-separated GPU indices ('0', '2,3'), normalised."""
    spec = text.replace(" ", "").lower()
    indices = spec.split(",")
    if spec != "cpu" and not (all(i.isdecimal() for i in indices) and len(set(indices)) == len(indices)):
        raise argparse.ArgumentTypeError(
            f"-d takes cpu or distinct comma-separated GPU indices such as 0 or 2,3, got {text!r}")
    return spec


def set_visible_devices(spec: str) -> int:
    """Apply a `device_spec` (`-d 2,3` or `-d cpu`) before CUDA initialises; returns the number of GPUs named."""
    if spec == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return 0
    os.environ["CUDA_VISIBLE_DEVICES"] = spec
    return len(spec.split(","))


def prepare_device(n_gpu: int, dist_info: DistInfo, logger: logging.Logger) -> tuple[torch.device, list[int]]:
    """The device to train on and the GPU ids for DataParallel (empty: no DataParallel).

    Under torchrun each process uses cuda:LOCAL_RANK (or the CPU). Otherwise n_gpu GPUs
    are used; with fewer present it warns and uses what is there, the CPU when none.
    """
    available = torch.cuda.device_count()
    if dist_info.enabled:
        if available:
            return torch.device("cuda", dist_info.local_rank), []
        return torch.device("cpu"), []
    if n_gpu > 0 and available == 0:
        logger.warning("n_gpu=%d but no GPU is available: training on the CPU", n_gpu)
        return torch.device("cpu"), []
    if n_gpu > available:
        logger.warning("n_gpu=%d but only %d GPU(s) are available: using %d", n_gpu, available, available)
        n_gpu = available
    if n_gpu == 0:
        return torch.device("cpu"), []
    return torch.device("cuda", 0), list(range(n_gpu)) if n_gpu > 1 else []


def move_to(batch, device: torch.device, non_blocking: bool = False):
    """Move a tensor or a dict/list/tuple of tensors to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: move_to(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device, non_blocking) for v in batch)
    return batch
