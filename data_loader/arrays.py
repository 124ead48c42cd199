"""Arrays: examples from a user's .npz (`x`, optional integer labels `y`) or a bare .npy of `x`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from base.base_data_loader import BaseDataLoader, TensorDictDataset
from data_loader.files import (SCALES, Scale, apply_scale, check_batch_size, check_finite, check_integer, check_ndim,
                               check_numeric, existing, integer_label_names, read_npy_mmap, read_npz,
                               resolve_test_split, scale_line, scale_statistics, split_indices)
from data_loader.registry import DATA_LOADERS
from utils.errors import DataError


def read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """x (N, D), (N, H, W) or (N, C, H, W) float or uint8, and y (N,) int or None. A .npy is memory-mapped."""
    if path.suffix == ".npy":
        x, y = read_npy_mmap(path), None
    elif path.suffix == ".npz":
        arrays = read_npz(path, ("x",), ("y",))
        x, y = arrays["x"], arrays.get("y")
    else:
        raise DataError(f"data file {path} must end in .npz (keys x and optional y) or .npy (x alone)")
    check_ndim(x, (2, 3, 4), "x", path, "(N, D), (N, H, W) or (N, C, H, W)")
    check_numeric(x, "x", path)
    check_finite(x, "x", path)
    if y is not None:
        check_integer(y, "y", path, minimum=0)
        if len(y) != len(x):
            raise DataError(f"y in {path} has {len(y)} labels but x has {len(x)} examples; give one label per example")
    return x, y


def _tensors(x: np.ndarray, y: np.ndarray | None, rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """{"x": (n, *data_shape) in x's dtype, "y": (n,) int64}; `rows` selects (and copies) examples."""
    x = torch.from_numpy(np.asarray(np.array(x) if rows is None else x[rows.numpy()]))  # one copy out of a memory map
    x = x.unsqueeze(1) if x.dim() == 3 else x
    out = {"x": x}
    if y is not None:
        out["y"] = torch.from_numpy((y if rows is None else y[rows.numpy()]).astype(np.int64))
    return out


@DATA_LOADERS.register("Arrays")
class ArraysDataLoader(BaseDataLoader):
    """Examples from arrays: batches {"x": (B, *data_shape) float32, "y": (B,) int64 when the file has y}.

    `x` is (N, D), (N, H, W) or (N, C, H, W), float or uint8; (N, H, W) becomes data_shape (1, H, W), and
    3- or 4-dim data are images. A .npy is memory-mapped. The test split is `test_path` (a file of the same
    kind) or a `test_fraction` of `path`'s examples drawn with `split_seed`; with neither, test_fraction is
    0.2. Validation comes out of the rest (`validation_split`). Scaling statistics come from the training
    split only and are applied to every split once, at load.

    Args:
        path: the .npz (x, optional y) or .npy (x) file.
        test_path: a file of test examples (same layout as `path`).
        test_fraction: fraction of `path`'s examples held out for testing (default 0.2 without test_path).
        scale: "none"; "standardize" (per feature/channel mean 0, std 1; std 0 -> 1); "unit" (uint8: x / 255,
            float: per feature/channel min-max to [0, 1]).

    Attributes: data_shape, is_image, label_names (when y exists), path, test_path, scale, shift and
    divisor (x' = (x - shift) / divisor, shapes (1, *data_shape) with size 1 on the reduced dims).
    """

    def __init__(self, path: str, batch_size: int = 128, shuffle: bool = True, validation_split: float = 0.0,
                 num_workers: int = 0, split_seed: int = 0, test_path: str | None = None,
                 test_fraction: float | None = None, scale: Scale = "none"):
        super().__init__(batch_size, shuffle, validation_split, num_workers, split_seed)
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
        fraction = resolve_test_split(test_path is not None, test_fraction, "test_path")
        self.scale = scale
        self.path = existing(path, "path")
        self.test_path = existing(test_path, "test_path") if test_path is not None else None
        x, y = read_arrays(self.path)
        if self.test_path is None:
            kept, held_out = split_indices(len(x), fraction, split_seed)
            train, test = _tensors(x, y, kept), _tensors(x, y, held_out)
        else:
            test_x, test_y = read_arrays(self.test_path)
            if test_x.shape[1:] != x.shape[1:] or (test_y is None) != (y is None):
                raise DataError(f"x in {self.test_path} has shape {test_x.shape[1:]} per example and "
                                f"{'no ' if test_y is None else ''}y, but {self.path} has {x.shape[1:]} and "
                                f"{'no ' if y is None else ''}y; the test file must match")
            train, test = _tensors(x, y), _tensors(test_x, test_y)
        uint8 = train["x"].dtype == torch.uint8
        self.data_shape = tuple(train["x"].shape[1:])
        self.is_image = len(self.data_shape) == 3
        self.train_set, self.test_set = TensorDictDataset(train), TensorDictDataset(test)
        self.split_validation()
        check_batch_size(len(self.train_set), batch_size, "examples", self.path)
        dims = (0, 2, 3) if self.is_image else (0,)
        self._bytes_to_unit = scale == "unit" and uint8
        if self._bytes_to_unit:
            self.shift, self.divisor = scale_statistics(self.train_set.tensors["x"][:1], "none", dims)
            self.divisor = self.divisor * 255.0
        else:
            self.shift, self.divisor = scale_statistics(self.train_set.tensors["x"], scale, dims)
        for dataset in (self.train_set, self.val_set, self.test_set):
            if dataset is not None:
                dataset.tensors["x"] = apply_scale(dataset.tensors["x"], self.shift, self.divisor)
        if y is not None:
            self.label_names = integer_label_names(*(t["y"] for t in (train, test)))

    def describe(self) -> list[str]:
        files = f"{self.path}" + (f", test {self.test_path}" if self.test_path is not None else "")
        scaling = "scale unit: x / 255 (uint8)" if self._bytes_to_unit else scale_line(self.scale, self.shift,
                                                                                        self.divisor)
        return [f"files: {files}", *super().describe(), scaling]
