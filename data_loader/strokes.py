"""Pen-stroke sequences (handwriting, sketches), cut into fixed-length windows.

A drawing is a float array (L, 3) of rows (pen_lift, dx, dy): pen_lift is 1 when the pen is lifted
after the point (end of a stroke), else 0; (dx, dy) is the offset from the previous point. Two file
formats hold a list of drawings:
- `.npz` (recommended, no pickle): `points` (sum of L, 3), the drawings one after another, and
  `lengths` (number of drawings,) integers, e.g. `np.savez(path, points=np.concatenate(drawings),
  lengths=[len(d) for d in drawings])`.
- `.npy`: `np.save` of a 1-D object array with one drawing per element. It is unpickled admitting
  numpy arrays only (`data_loader.safe_npy`), so a file cannot run code.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from base.base_data_loader import BaseDataLoader, TensorDictDataset
from data_loader.registry import DATA_LOADERS
from data_loader.safe_npy import UnsafePickleError, load_npy
from utils.errors import ConfigError, DataError

_FORMATS = ("an .npz with `points` (sum of L, 3) and `lengths` (number of drawings,), or an .npy object "
            "array of (L, 3) drawings; columns (pen_lift, dx, dy)")


def _read_npz(path: Path, where: str) -> list[np.ndarray]:
    """The drawings of a `points`/`lengths` .npz, read without pickle."""
    archive = np.load(path, allow_pickle=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{where} is not an .npz archive (np.savez); expected {_FORMATS}")
    with archive:
        missing = [key for key in ("points", "lengths") if key not in archive.files]
        if missing:
            raise DataError(f"{where} has no {' or '.join(missing)} array (it holds {sorted(archive.files)}); "
                            f"expected {_FORMATS}")
        points, lengths = archive["points"], archive["lengths"]
    if points.ndim != 2 or points.shape[1] != 3:
        raise DataError(f"{where}: points has shape {points.shape}, expected (sum of L, 3)")
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        raise DataError(f"{where}: lengths must be a 1-D integer array, got {lengths.dtype} of shape {lengths.shape}")
    if len(lengths) and (lengths.min() < 1 or lengths.sum() != len(points)):
        raise DataError(f"{where}: lengths must be >= 1 and sum to the {len(points)} rows of points, got "
                        f"min {lengths.min()} and sum {lengths.sum()}")
    return np.split(points, np.cumsum(lengths)[:-1]) if len(lengths) else []


def _read_npy(path: Path, where: str) -> np.ndarray:
    """The 1-D object array of drawings of an .npy file, unpickled admitting numpy arrays only."""
    try:
        array = load_npy(path)
    except UnsafePickleError as err:
        raise DataError(f"refusing to load {where}: {err}. Only numpy arrays are read from .npy files; save the "
                        f"drawings as an .npz with points and lengths (see the README)") from None
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, TypeError, AttributeError) as err:
        raise DataError(f"cannot read {where}: {' '.join(str(err).split())[:200]}; expected {_FORMATS}") from None
    if array.dtype != object or array.ndim != 1:
        raise DataError(f"{where} must hold a 1-D object array (one (L, 3) drawing per element, saved with "
                        f"np.save), got a {array.dtype} array of shape {array.shape}")
    return array


def load_strokes(path: str | Path, key: str = "path") -> list[torch.Tensor]:
    """Read and validate a pen-stroke file (.npz or .npy): a list of (L_i, 3) float64 drawings, L_i >= 1.

    `key` names the config key that points at the file, for the error messages."""
    path = Path(path)
    where = f"pen-stroke file {path} (data_loader.args.{key})"
    if not path.is_file():
        raise DataError(f"{where} not found; point data_loader.args.{key} at {_FORMATS}")
    if path.suffix == ".npz":
        try:
            elements = _read_npz(path, where)
        except (OSError, ValueError, EOFError) as err:  # not a zip, a member with pickled objects, ...
            raise DataError(f"cannot read {where}: {' '.join(str(err).split())[:200]}; expected {_FORMATS}") from None
    else:
        elements = _read_npy(path, where)
    if len(elements) == 0:
        raise DataError(f"{where} holds no drawings; it needs at least one (L, 3) drawing")
    drawings = []
    for i, element in enumerate(elements):
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
        path: .npz (points, lengths) or .npy object array of (L, 3) drawings (see the module docstring).
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
