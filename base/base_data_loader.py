"""BaseDataLoader: train / validation / test datasets and the torch DataLoaders over them.

Datasets hold their tensors in memory and are fetched a whole batch at a time
(`__getitems__`), so a batch costs one indexing operation, not B Python calls.
Batches are dicts of tensors. The keys every model and metric relies on (the batch-key contract):

    x        (B, *data_shape) float   the observations; sequences (B, T, D)
    y        (B,) int64               a label per example (classes of ImageFolder, `y` of Arrays)
    mask     (B, T) bool              True on a sequence's real frames, False on padding
    labels   (B, T) int64             a label per frame (annotated segments, generated regimes), -1 on padding
    clean    (B, T, D) float          noiseless frames (generated data only)
    states   (B, T) int64             true discrete states (generated data only)
    sequence, start  (B,) int64       which sequence a window was cut from, and its first frame

Shuffling uses a DistributedSampler in every case (one rank when not
distributed): the order depends on (seed, epoch) alone, so it needs no saved
state for exact resume and never touches the global RNG.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from utils.errors import ConfigError
from utils.seeding import mix_seed


def identity_collate(batch: Any) -> Any:
    """Collate for datasets whose `__getitems__` already returns a batch."""
    return batch


def random_split(n: int, n_held_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (kept, held-out) indices of range(n), `n_held_out` of them held out, drawn with a generator seeded
    by `seed` (the global RNG is not touched)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_held_out:].sort().values, order[:n_held_out].sort().values


def seed_worker(worker_id: int) -> None:
    """Seed python and numpy in a DataLoader worker from its torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class TensorDictDataset(Dataset):
    """Equal-length tensors in memory, returned as dict batches.

    Subclasses may override `transform_batch` (e.g. dynamic binarisation); it gets
    a generator private to this (seed, epoch, rank, worker) stream via `generator()`.
    """

    def __init__(self, tensors: dict[str, torch.Tensor]):
        lengths = {len(t) for t in tensors.values()}
        assert len(lengths) == 1, f"tensors of different lengths: { {k: len(t) for k, t in tensors.items()} }"
        self.tensors = tensors
        self.seed, self.epoch, self.rank = 0, 0, 0
        self._generator: torch.Generator | None = None

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.__getitems__([index]).items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.transform_batch({k: v[idx] for k, v in self.tensors.items()})

    def transform_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return batch

    def subset(self, indices: torch.Tensor) -> "TensorDictDataset":
        """A dataset of the same kind over `indices` (copies the rows)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.tensors = {k: v[indices] for k, v in self.tensors.items()}
        new._generator = None
        return new

    def set_stream(self, seed: int, rank: int) -> None:
        self.seed, self.rank = seed, rank
        self._generator = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._generator = None

    def generator(self) -> torch.Generator:
        """A generator seeded by (seed, epoch, rank, worker id), created on first use."""
        if self._generator is None:
            info = torch.utils.data.get_worker_info()
            worker = info.id if info is not None else -1
            self._generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, self.rank, worker + 1))
        return self._generator


class BaseDataLoader:
    """Builds DataLoaders for the train, validation and test splits.

    Subclasses set `train_set`, `test_set`, `data_shape` (shape of one example's
    "x") and `is_image`, then call `split_validation()`. Loaders of labelled data set
    `label_names` (names of the values of "y" or "labels"); loaders of sequences may set `channel_names`,
    `sequence_names` and `frame_rate` (frames per second) for figures and per-sequence results. Loaders of
    files add their own lines to `describe()` (what `train.py --dry-run` prints). Loaders of generated data
    may set `val_set` from their generator instead of splitting it off (`generated_validation`), with a
    `val_source` that says how.

    Args:
        batch_size: global batch size (divided among ranks under torchrun).
        shuffle: reshuffle the training set every epoch.
        validation_split: fraction (float < 1) or number (int) of training examples held out.
        num_workers: DataLoader worker processes.
        split_seed: seed of the validation split (independent of the training seed).
    """

    train_set: TensorDictDataset
    val_set: TensorDictDataset | None = None
    val_source: str | None = None  # where val_set comes from, for describe()
    test_set: TensorDictDataset
    data_shape: tuple[int, ...]
    is_image: bool = False
    label_names: tuple[str, ...] | None = None
    channel_names: tuple[str, ...] | None = None
    sequence_names: tuple[str, ...] | None = None
    frame_rate: float | None = None

    def __init__(self, batch_size: int = 128, shuffle: bool = True, validation_split: float = 0.0,
                 num_workers: int = 0, split_seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.validation_split = validation_split
        self.num_workers = num_workers
        self.split_seed = split_seed

    def split_validation(self) -> None:
        """Hold out `validation_split` of the training set, chosen with a private generator."""
        kept, held_out = self.validation_indices(len(self.train_set), "examples")
        if len(held_out):
            self.val_set = self.train_set.subset(held_out)
            self.train_set = self.train_set.subset(kept)
            self.val_source = (f"held out of the training set (validation_split {self.validation_split}, "
                               f"split_seed {self.split_seed})")

    def generated_validation(self, size_key: str, size: int, val_seed: int, data_seed: int, test_seed: int) -> bool:
        """Whether a loader of generated data draws its validation set from its generator (`size_key` > 0, with
        `val_seed`); the training set then keeps every example. It replaces `validation_split`: asking for both,
        a negative size or a `val_seed` equal to `data_seed` or `test_seed` is a config error."""
        if size < 0:
            raise ConfigError(f"config key 'data_loader.args.{size_key}' must be >= 0, got {size}")
        if size == 0:
            return False
        if self.validation_split:
            raise ConfigError(f"config keys 'data_loader.args.{size_key}' ({size}) and "
                              f"'data_loader.args.validation_split' ({self.validation_split}) both ask for a "
                              "validation set: set one of them to 0")
        for key, seed in (("data_seed", data_seed), ("test_seed", test_seed)):
            if val_seed == seed:
                raise ConfigError(f"config key 'data_loader.args.val_seed' ({val_seed}) equals '{key}': the "
                                  f"validation set needs a seed of its own")
        return True

    def validation_indices(self, n: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted (kept, held-out) indices of n training `what` (examples, sequences): `validation_split` of them
        (a fraction or a count) held out, drawn with `split_seed`."""
        split = self.validation_split
        n_val = int(split) if isinstance(split, int) else int(round(split * n))
        if isinstance(split, float) and not 0.0 <= split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1) as a fraction, got {split}")
        if not 0 <= n_val < n:
            raise ValueError(f"validation_split={split} leaves no training data ({n} {what})")
        return random_split(n, n_val, self.split_seed)

    @property
    def fields(self) -> tuple[str, ...]:
        """The keys of this loader's batches (the batch-key contract in the module docstring)."""
        return tuple(self.train_set.__getitems__([0]))

    @property
    def frames_per_example(self) -> float:
        """Mean number of real frames per training example: T of sequences (B, T, D), counted through
        "mask" where batches have one; 1 for data that is not a sequence."""
        if len(self.data_shape) != 2 or self.is_image:
            return 1.0
        mask = self.train_set.tensors.get("mask")
        return float(self.data_shape[0]) if mask is None else float(mask.sum()) / len(mask)

    def describe(self) -> list[str]:
        """Lines that summarise the data: examples per split, where the validation set comes from, the fields
        of a batch with their shapes, the labels."""
        splits = [("train", self.train_set), ("validation", self.val_set), ("test", self.test_set)]
        lines = ["examples: " + ", ".join(f"{name} {len(ds)}" for name, ds in splits if ds is not None)]
        if self.val_set is not None and self.val_source is not None:
            lines.append(f"validation: {len(self.val_set)} examples, {self.val_source}")
        one = self.train_set.__getitems__([0])
        lines.append("batch fields: " + ", ".join(
            f"{key} {tuple(value.shape[1:])} {str(value.dtype).removeprefix('torch.')}" for key, value in one.items()))
        if self.label_names is not None:
            lines.append(f"labels ({len(self.label_names)}): {', '.join(self.label_names)}")
        return lines

    def _loader(self, dataset: TensorDictDataset, batch_size: int, shuffle: bool, seed: int,
                rank: int, world_size: int, pin_memory: bool) -> DataLoader:
        if batch_size % world_size:
            raise ConfigError(
                f"config key 'data_loader.args.batch_size' ({batch_size}) must be divisible by the "
                f"number of processes ({world_size})"
            )
        dataset.set_stream(seed, rank)
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        return DataLoader(
            dataset, batch_size=batch_size // world_size, sampler=sampler, num_workers=self.num_workers,
            collate_fn=identity_collate, worker_init_fn=seed_worker, pin_memory=pin_memory,
        )

    def train_loader(self, seed: int, rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, self.shuffle, seed, rank, world_size, pin_memory)

    def val_loader(self, seed: int, rank: int = 0, world_size: int = 1,
                   pin_memory: bool = False) -> DataLoader | None:
        if self.val_set is None:
            return None
        return self._loader(self.val_set, self.batch_size, False, seed, rank, world_size, pin_memory)

    def test_loader(self, batch_size: int | None = None, pin_memory: bool = False) -> DataLoader:
        return self._loader(self.test_set, batch_size or self.batch_size, False, 0, 0, 1, pin_memory)
