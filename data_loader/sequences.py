"""Sequences: variable-length sequences of D-dim frames from a user's .npz, as windows or padded wholes.

The file holds the sequences one after another: `points` (sum of L, D) float and `lengths` (N,) int;
optionally per-frame `labels` (sum of L,) int (-1: unlabelled), and 1-D string arrays `label_names`,
`channel_names` (D,) and `sequence_names` (N,). Write it with e.g.
`np.savez(path, points=np.concatenate(seqs), lengths=[len(s) for s in seqs])`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from base.base_data_loader import BaseDataLoader, TensorDictDataset
from data_loader.files import (SCALES, Scale, apply_scale, check_batch_size, check_finite, check_integer, check_ndim,
                               existing, integer_label_names, read_npz, resolve_test_split, scale_line,
                               scale_statistics, split_indices, strings)
from data_loader.registry import DATA_LOADERS
from utils.errors import DataError

OPTIONAL = ("labels", "label_names", "channel_names", "sequence_names")


class SequenceWindows(TensorDictDataset):
    """Windows of T frames cut from flat sequences, gathered a batch at a time.

    `tensors` are per-example {"sequence": (W,) int64, "start": (W,) int64 first frame within the sequence},
    so subsets and samplers act on windows; the frames stay in the shared flat `points` (sum of L, D).
    Batches: {"x": (B, T, D) float32 (0 on padding), "mask": (B, T) bool, "labels": (B, T) int64 (-1 on
    padding; when the file has labels), "sequence": (B,), "start": (B,)}.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], points: torch.Tensor, labels: torch.Tensor | None,
                 offsets: torch.Tensor, lengths: torch.Tensor, frames: int):
        super().__init__(tensors)
        self.points, self.labels, self.offsets, self.lengths, self.frames = points, labels, offsets, lengths, frames

    def real_frames(self) -> torch.Tensor:
        """(W,) number of real (unpadded) frames of each example."""
        seq, start = self.tensors["sequence"], self.tensors["start"]
        return (self.lengths[seq] - start).clamp(max=self.frames)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        seq, start = self.tensors["sequence"][idx], self.tensors["start"][idx]
        steps = torch.arange(self.frames)
        mask = steps < (self.lengths[seq] - start)[:, None]  # (B, T)
        gather = (self.offsets[seq] + start)[:, None] + steps  # (B, T) one index into the flat frames
        gather = gather.clamp_(max=len(self.points) - 1)
        batch = {"x": torch.where(mask[..., None], self.points[gather], 0.0), "mask": mask}
        if self.labels is not None:
            batch["labels"] = torch.where(mask, self.labels[gather], -1)
        return self.transform_batch({**batch, "sequence": seq, "start": start})


def read_sequences(path: Path) -> dict[str, np.ndarray]:
    """The checked arrays of a sequences .npz (see the module docstring)."""
    arrays = read_npz(path, ("points", "lengths"), OPTIONAL)
    points, lengths = arrays["points"], arrays["lengths"]
    check_ndim(points, (2,), "points", path, "(sum of L, D)")
    if not np.issubdtype(points.dtype, np.floating):
        raise DataError(f"points in {path} has dtype {points.dtype}; expected floats")
    check_integer(lengths, "lengths", path, minimum=0)
    if len(lengths) == 0:
        raise DataError(f"lengths in {path} is empty; the file holds no sequences")
    if int(lengths.sum()) != len(points):
        raise DataError(f"lengths in {path} sum to {int(lengths.sum())} but points has {len(points)} frames; "
                        f"lengths must give the length of each sequence in points")
    if (lengths == 0).any():
        raise DataError(f"lengths in {path} has a zero-length sequence at index {int(np.argmax(lengths == 0))}; "
                        f"remove empty sequences")
    check_finite(points, "points", path)
    if "labels" in arrays:
        check_integer(arrays["labels"], "labels", path, minimum=-1)
        if len(arrays["labels"]) != len(points):
            raise DataError(f"labels in {path} has {len(arrays['labels'])} entries but points has {len(points)} "
                            f"frames; give one label per frame")
    return arrays


def window_starts(lengths: torch.Tensor, sequences: torch.Tensor, window: int | None,
                  stride: int | None) -> dict[str, torch.Tensor]:
    """{"sequence", "start"} of every window of `sequences`: starts 0, stride, ... with start + window <= L
    (one start 0 per sequence when window is None)."""
    if window is None:
        return {"sequence": sequences.clone(), "start": torch.zeros_like(sequences)}
    counts = (lengths[sequences] - window) // stride + 1
    seq = sequences.repeat_interleave(counts)
    first = torch.cumsum(counts, 0) - counts  # index of each sequence's first window
    k = torch.arange(len(seq)) - first.repeat_interleave(counts)
    return {"sequence": seq, "start": k * stride}


@DATA_LOADERS.register("Sequences")
class SequencesDataLoader(BaseDataLoader):
    """Sequences of frames, as windows of `window` frames or whole sequences padded to the longest.

    Batches: {"x": (B, T, D) float32, "mask": (B, T) bool, "labels": (B, T) int64 (-1 on padding) when the
    file has labels, "sequence": (B,) int64, "start": (B,) int64}; data_shape (T, D). With a window,
    T = window, windows start every `stride` frames of a sequence (never crossing into the next) and
    mask is all True; with window null, T is the longest sequence of the file and shorter ones are
    zero-padded (mask False). Test and validation splits take whole sequences: `test_sequences`
    (indices) or a `test_fraction` of the sequences drawn with `split_seed` (0.2 with neither), then
    `validation_split` (fraction or count of the remaining sequences, drawn with `split_seed`).
    `test_sequences: all` is the unsupervised-segmentation protocol: train on every sequence and evaluate
    on every sequence (labels are only read by the metrics).
    Scaling statistics come from the training sequences' frames only; points are scaled once, at load.

    Args:
        path: the .npz file (see the module docstring).
        window: frames per example, or null (the default) for whole sequences.
        stride: frames between window starts (default: window, non-overlapping).
        test_sequences: indices of the test sequences, or "all" (train and test on every sequence).
        test_fraction: fraction of the sequences held out for testing (default 0.2 without test_sequences).
        scale: "none", "standardize" (per channel mean 0, std 1; std 0 -> 1) or "unit" (per channel min-max).
        frame_rate: frames per second of the recordings, for time axes in seconds (optional).
        test_whole_sequences: the test split as whole sequences padded to the longest (with a mask) even when
            training takes windows, so that test metrics cover every frame of each test sequence.

    Attributes: data_shape, label_names (file's label_names, else '0'..max, when labels exist),
    channel_names, sequence_names (tuples or None), path, window, stride, scale, shift and divisor
    ((1, D): x' = (x - shift) / divisor), lengths (N,), and train_sequences, val_sequences,
    test_sequences (sorted int64 indices; val empty without validation).
    """

    def __init__(self, path: str, batch_size: int = 32, shuffle: bool = True, validation_split: float = 0.0,
                 num_workers: int = 0, split_seed: int = 0, window: int | None = None, stride: int | None = None,
                 test_sequences: list[int] | str | None = None, test_fraction: float | None = None,
                 scale: Scale = "none", test_whole_sequences: bool = False, frame_rate: float | None = None):
        super().__init__(batch_size, shuffle, validation_split, num_workers, split_seed)
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or null, got {window}")
        if stride is not None and (window is None or stride < 1):
            raise ValueError(f"stride must be >= 1 and needs a window, got stride {stride} with window {window}")
        fraction = resolve_test_split(test_sequences is not None, test_fraction, "test_sequences")
        if isinstance(test_sequences, str) and test_sequences != "all":
            raise ValueError(f"test_sequences must be a list of sequence indices or 'all', got {test_sequences!r}")
        self.path, self.window, self.scale = existing(path, "path"), window, scale
        if frame_rate is not None and not frame_rate > 0:
            raise ValueError(f"frame_rate must be > 0 frames per second, got {frame_rate}")
        self.test_whole_sequences, self.frame_rate = test_whole_sequences, frame_rate
        self.stride = stride or window
        arrays = read_sequences(self.path)
        self.lengths = torch.from_numpy(arrays["lengths"].astype(np.int64))
        n = len(self.lengths)
        self.channel_names = strings(arrays.get("channel_names"), "channel_names", self.path, arrays["points"].shape[1])
        self.sequence_names = strings(arrays.get("sequence_names"), "sequence_names", self.path, n)
        if window is not None and int(self.lengths.min()) < window:
            short_seq = int(torch.argmin(self.lengths))
            raise DataError(f"sequence {self._name(short_seq)} in {self.path} has {int(self.lengths[short_seq])} "
                            f"frames, fewer than window {window}; lower data_loader.args.window or drop the sequence")
        self.test_on_all = test_sequences == "all"
        if self.test_on_all:
            self.train_sequences, self.test_sequences = torch.arange(n), torch.arange(n)
        elif fraction is None:
            bad = [i for i in test_sequences if not 0 <= i < n]
            if bad:
                raise DataError(f"data_loader.args.test_sequences names sequence {bad[0]}, but {self.path} has {n} "
                                f"sequences (0..{n - 1})")
            self.test_sequences = torch.tensor(sorted(set(test_sequences)), dtype=torch.long)
            self.train_sequences = torch.tensor([i for i in range(n) if i not in set(test_sequences)],
                                                dtype=torch.long)
            if not len(self.train_sequences):
                raise DataError(f"data_loader.args.test_sequences holds all {n} sequences of {self.path}; "
                                f"nothing is left to train on")
        else:
            self.train_sequences, self.test_sequences = split_indices(n, fraction, split_seed)
        self.val_sequences = self._split_validation_sequences()
        self._build(arrays)
        check_batch_size(len(self.train_set), batch_size, "windows" if window else "sequences", self.path)

    def _name(self, i: int) -> str:
        return f"{i} ({self.sequence_names[i]})" if self.sequence_names else str(i)

    def _split_validation_sequences(self) -> torch.Tensor:
        """Move `validation_split` (fraction or count) of the training sequences to validation."""
        kept, held_out = self.validation_indices(len(self.train_sequences), "sequences after the test split")
        val = self.train_sequences[held_out]
        self.train_sequences = self.train_sequences[kept]
        return val

    def split_validation(self) -> None:
        """Validation is split by whole sequence in __init__ (`_split_validation_sequences`)."""

    def _build(self, arrays: dict[str, np.ndarray]) -> None:
        """Scale the points with training statistics and make the three window datasets."""
        lengths = self.lengths
        offsets = torch.cumsum(lengths, 0) - lengths
        points = torch.from_numpy(arrays["points"])
        frame_sequence = torch.arange(len(lengths)).repeat_interleave(lengths)  # (sum of L,)
        train_frames = points[torch.isin(frame_sequence, self.train_sequences)]
        self.shift, self.divisor = scale_statistics(train_frames, self.scale, (0,))
        points = apply_scale(points, self.shift, self.divisor)
        labels = torch.from_numpy(arrays["labels"].astype(np.int64)) if "labels" in arrays else None
        self.data_shape = (self.window or int(lengths.max()), points.shape[1])

        def dataset(sequences: torch.Tensor, window: int | None) -> SequenceWindows:
            starts = window_starts(lengths, sequences, window, self.stride)
            return SequenceWindows(starts, points, labels, offsets, lengths, window or int(lengths.max()))

        self.train_set = dataset(self.train_sequences, self.window)
        self.test_set = dataset(self.test_sequences, None if self.test_whole_sequences else self.window)
        self.val_set = dataset(self.val_sequences, self.window) if len(self.val_sequences) else None
        if labels is not None:
            names = strings(arrays.get("label_names"), "label_names", self.path, None)
            top = int(labels.max())
            if names is not None and top >= len(names):
                raise DataError(f"labels in {self.path} go up to {top} but label_names has {len(names)} names")
            self.label_names = names or integer_label_names(labels)

    @property
    def frames_per_example(self) -> float:
        """Mean number of real frames per training example (window, or the mean training sequence length)."""
        return float(self.train_set.real_frames().double().mean())

    def describe(self) -> list[str]:
        counts = [("train", self.train_sequences), ("validation", self.val_sequences),
                  ("test" + (" (every sequence, trained on too)" if self.test_on_all else ""), self.test_sequences)]
        lengths = self.lengths.double()
        cut = (f"window {self.window}, stride {self.stride}" if self.window is not None
               else f"whole sequences padded to {self.data_shape[0]} frames")
        if self.test_whole_sequences and self.window is not None:
            cut += f"; test: whole sequences padded to {int(self.lengths.max())} frames"
        lines = [f"file: {self.path}", *super().describe(),
                 "sequences: " + ", ".join(f"{name} {len(s)}" for name, s in counts if len(s)),
                 f"lengths: min {int(lengths.min())}, median {lengths.median().item():g}, max {int(lengths.max())}",
                 cut, scale_line(self.scale, self.shift, self.divisor)]
        if self.channel_names is not None:
            lines.append(f"channels ({len(self.channel_names)}): {', '.join(self.channel_names[:12])}"
                         f"{', ...' if len(self.channel_names) > 12 else ''}")
        return lines

