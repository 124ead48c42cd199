"""Pen-stroke sequences (handwriting, sketches) from a .npy object array, cut into fixed-length windows.

The common format: `np.save` of a 1-D object array with one element per drawing, each a float array
(L, 3) of rows (pen_lift, dx, dy): pen_lift is 1 when the pen is lifted after the point (end of a
stroke), else 0; (dx, dy) is the offset from the previous point.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from base.base_data_loader import BaseDataLoader, TensorDictDataset
from data_loader.registry import DATA_LOADERS
from utils.errors import ConfigError, DataError


def load_strokes(path: str | Path, key: str = "path") -> list[torch.Tensor]:
    """Read and validate a pen-stroke file: a list of (L_i, 3) float64 drawings, L_i >= 1.

    `key` names the config key that points at the file, for the error messages."""
    where = f"pen-stroke file {path} (data_loader.args.{key})"
    if not Path(path).is_file():
        raise DataError(f"{where} not found; point data_loader.args.{key} at a .npy object array of "
                        f"(L, 3) drawings with columns (pen_lift, dx, dy)")
    try:
        array = np.load(path, allow_pickle=True, encoding="latin1")
    except Exception as err:
        raise DataError(f"cannot read {where} with np.load: {' '.join(str(err).split())[:200]}") from None
    if not isinstance(array, np.ndarray) or array.dtype != object or array.ndim != 1:
        got = f"{array.dtype} array of shape {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise DataError(f"{where} must hold a 1-D object array (one (L, 3) drawing per element, saved with "
                        f"np.save), got a {got}")
    if len(array) == 0:
        raise DataError(f"{where} holds no drawings; it needs at least one (L, 3) drawing")
    drawings = []
    for i, element in enumerate(array):
        try:
            drawing = np.asarray(element, dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(f"{where}: drawing {i} is not a numeric array ({type(element).__name__})") from None
        if drawing.ndim != 2 or drawing.shape[1] != 3 or len(drawing) < 1:
            raise DataError(f"{where}: drawing {i} has shape {drawing.shape}, expected (L, 3) with L >= 1 "
                            f"(columns pen_lift, dx, dy)")
        if not np.isfinite(drawing).all():
            raise DataError(f"{where}: drawing {i} has non-finite (NaN or infinite) values; clean the file")
        if not np.isin(drawing[:, 0], (0.0, 1.0)).all():
            raise DataError(f"{where}: drawing {i} has pen_lift values other than 0 and 1 in column 0; "
                            f"columns must be (pen_lift, dx, dy)")
        drawings.append(torch.from_numpy(drawing))
    return drawings


def cut_windows(drawings: list[torch.Tensor], window_len: int,
                min_window_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each (L_i, C) drawing into consecutive non-overlapping windows of `window_len` points.

    A drawing's last, partial window is zero-padded when it has >= `min_window_len` points, else dropped.
    Returns x (N, window_len, C), in drawing order, and mask (N, window_len) bool, True on real points.
    """
    xs, masks = [], []
    for drawing in drawings:
        length, channels = drawing.shape
        count = -(-length // window_len)  # ceil
        padded = drawing.new_zeros(count * window_len, channels)
        padded[:length] = drawing
        mask = torch.arange(count * window_len) < length
        keep = count if length - (count - 1) * window_len >= min_window_len else count - 1
        xs.append(padded.view(count, window_len, channels)[:keep])
        masks.append(mask.view(count, window_len)[:keep])
    return torch.cat(xs), torch.cat(masks)


@DATA_LOADERS.register("PenStrokes")
class PenStrokesDataLoader(BaseDataLoader):
    """Windows of pen strokes {"x": (B, T, 3) float32, "mask": (B, T) bool}, T = window_len.

    x rows are (pen_lift, dx, dy) with (dx, dy) normalised by the training drawings' per-channel
    `offset_mean` and `offset_std` ((2,) tensors); mask is True on real points, False on the zero
    padding after them. No point is in two windows. The validation split is over training windows.

    Args:
        path: .npy object array of (L, 3) drawings (see `load_strokes`).
        test_path: file of test drawings; when None, `test_fraction` of the drawings of `path`
            (whole drawings, at least one) are held out, chosen with `split_seed`.
        test_fraction: fraction of drawings held out for testing when there is no test_path.
        window_len: T, points per window.
        min_window_len: shortest last, partial window of a drawing that is kept (padded).
        normalize: standardise (dx, dy) with the training drawings' mean and std; else mean 0, std 1.
    Attributes:
        test_drawings: indices in `path` of the held-out drawings (empty when test_path is given).
    """

    def __init__(self, batch_size: int = 64, shuffle: bool = True, validation_split: float = 0.0,
                 num_workers: int = 0, split_seed: int = 0, *, path: str, test_path: str | None = None,
                 test_fraction: float = 0.1, window_len: int = 64, min_window_len: int = 2,
                 normalize: bool = True):
        super().__init__(batch_size, shuffle, validation_split, num_workers, split_seed)
        if window_len < 2:
            raise ConfigError(f"config key 'data_loader.args.window_len' must be >= 2, got {window_len}")
        if not 1 <= min_window_len <= window_len:
            raise ConfigError(f"config key 'data_loader.args.min_window_len' must be in [1, window_len="
                              f"{window_len}], got {min_window_len}")
        if test_path is None and not 0.0 < test_fraction < 1.0:
            raise ConfigError(f"config key 'data_loader.args.test_fraction' must be in (0, 1) when "
                              f"data_loader.args.test_path is not set, got {test_fraction}")
        drawings = load_strokes(path, "path")
        if test_path is not None:
            train, test = drawings, load_strokes(test_path, "test_path")
            self.test_drawings = torch.zeros(0, dtype=torch.long)
        else:
            n = len(drawings)
            n_test = max(1, round(test_fraction * n))
            if n_test >= n:
                raise ConfigError(f"config key 'data_loader.args.test_fraction' ({test_fraction}) holds out "
                                  f"{n_test} of the {n} drawings in {path}, leaving none to train on; lower "
                                  f"it or set data_loader.args.test_path")
            order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
            self.test_drawings = order[:n_test].sort().values
            held_out = set(self.test_drawings.tolist())
            train = [d for i, d in enumerate(drawings) if i not in held_out]
            test = [drawings[i] for i in self.test_drawings.tolist()]
        offsets = torch.cat(train)[:, 1:]
        self.offset_mean, self.offset_std = torch.zeros(2), torch.ones(2)
        if normalize:
            std = offsets.std(dim=0, unbiased=False)
            self.offset_mean = offsets.mean(dim=0).float()
            self.offset_std = torch.where(std > 0, std, torch.ones_like(std)).float()
        self.data_shape = (window_len, 3)
        self.train_set = self._dataset(train, window_len, min_window_len, "training")
        self.test_set = self._dataset(test, window_len, min_window_len, "test")
        self.split_validation()

    def _dataset(self, drawings: list[torch.Tensor], window_len: int, min_window_len: int,
                 role: str) -> TensorDictDataset:
        """Normalise the offsets and cut into windows; padding stays exactly zero."""
        mean, std = self.offset_mean.double(), self.offset_std.double()
        scaled = [torch.cat([d[:, :1], (d[:, 1:] - mean) / std], dim=1) for d in drawings]
        x, mask = cut_windows(scaled, window_len, min_window_len)
        if len(x) == 0:
            raise ConfigError(f"no {role} window: every {role} drawing is shorter than config key "
                              f"'data_loader.args.min_window_len' ({min_window_len}); lower it")
        return TensorDictDataset({"x": x.float(), "mask": mask})
