"""Helpers shared by the loaders of user files (Arrays, ImageFolder, Sequences).

Every array is read with `allow_pickle=False`: an object array (pickled Python objects) is refused
before anything in it is unpickled. Problems with the data raise DataError, one line that names the
file and the key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from base.base_data_loader import random_split
from utils.errors import ConfigError, DataError

Scale = Literal["none", "standardize", "unit"]
SCALES = ("none", "standardize", "unit")


def existing(path: str, key: str, folder: bool = False) -> Path:
    """`path` (config key `data_loader.args.<key>`) as a Path; DataError when it is missing."""
    p = Path(path).expanduser()
    if not (p.is_dir() if folder else p.is_file()):
        kind = "folder" if folder else "data file"
        where = "" if p.is_absolute() else f", expected at {p.resolve()}"
        raise DataError(f"{kind} {p} (data_loader.args.{key}{where}) does not exist"
                        f"{'' if folder else ' or is not a file'}")
    return p


def _refuse(err: ValueError, where: str) -> DataError:
    """The DataError for a ValueError of np.load(..., allow_pickle=False)."""
    text = str(err)
    if "object" in text.lower() or "pickle" in text.lower():
        return DataError(f"{where} holds an object array (pickled Python objects), which is refused: save plain "
                         f"numeric/string arrays (np.savez with numbers, or strings of dtype str)")
    return DataError(f"cannot read {where}: {' '.join(text.split())[:200]}")


def read_npz(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The `required` and present `optional` arrays of an .npz archive, read without pickle."""
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise _refuse(err, f"data file {path}") from None
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read data file {path}: {' '.join(str(err).split())[:200]}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"data file {path} is a bare .npy array, expected an .npz archive (np.savez) with keys "
                        f"{', '.join(required)}")
    with archive:
        missing = [key for key in required if key not in archive.files]
        if missing:
            raise DataError(f"data file {path} has no key {missing[0]!r}; it has: "
                            f"{', '.join(archive.files) or 'nothing'}")
        arrays = {}
        for key in (*required, *(k for k in optional if k in archive.files)):
            try:
                arrays[key] = archive[key]
            except ValueError as err:
                raise _refuse(err, f"key {key!r} of {path}") from None
            except (OSError, EOFError) as err:
                raise DataError(f"cannot read key {key!r} of {path}: {' '.join(str(err).split())[:200]}") from None
    return arrays


def read_npy_mmap(path: Path) -> np.ndarray:
    """The array of a .npy file, memory-mapped read-only (its pages are read when used, once)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise _refuse(err, f"data file {path}") from None
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read data file {path}: {' '.join(str(err).split())[:200]}") from None


def check_ndim(array: np.ndarray, ndims: tuple[int, ...], key: str, path: Path, expected: str) -> None:
    if array.ndim not in ndims:
        raise DataError(f"{key} in {path} has {array.ndim} dimensions {tuple(array.shape)}; expected {expected}")


def check_integer(array: np.ndarray, key: str, path: Path, minimum: int) -> None:
    """A 1-D integer array whose values are >= `minimum`."""
    check_ndim(array, (1,), key, path, "a 1-D integer array")
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{key} in {path} has dtype {array.dtype}; expected integers")
    if len(array) and array.min() < minimum:
        first = int(np.argmax(array < minimum))
        raise DataError(f"{key} in {path} has the value {array[first]} at index {first}; values must be >= {minimum}")


def check_finite(array: np.ndarray, key: str, path: Path, block_bytes: int = 2**26) -> None:
    """DataError naming the count and first index of NaN/inf values of a float array (checked in blocks of
    rows, so a memory-mapped array needs no full-size mask)."""
    if not np.issubdtype(array.dtype, np.floating) or not array.size:
        return
    step = max(1, block_bytes // (array[:1].nbytes or 1))
    count, first = 0, None
    for start in range(0, len(array), step):
        bad = ~np.isfinite(array[start: start + step])
        count += int(bad.sum())
        if count and first is None:
            where = np.argwhere(bad)[0]
            first = (start + int(where[0]), *(int(i) for i in where[1:]))
    if count:
        raise DataError(f"{key} in {path} has {count} non-finite values (NaN or inf); the first at index "
                        f"{first[0] if len(first) == 1 else first}")


def check_numeric(array: np.ndarray, key: str, path: Path) -> None:
    if not (np.issubdtype(array.dtype, np.floating) or array.dtype == np.uint8):
        raise DataError(f"{key} in {path} has dtype {array.dtype}; expected floats or uint8")


def strings(array: np.ndarray | None, key: str, path: Path, count: int | None) -> tuple[str, ...] | None:
    """A 1-D string array as a tuple (None when absent); `count` entries when given."""
    if array is None:
        return None
    if array.ndim != 1 or array.dtype.kind not in "US":
        raise DataError(f"{key} in {path} must be a 1-D string array, got {array.dtype} of shape {array.shape}")
    if count is not None and len(array) != count:
        raise DataError(f"{key} in {path} has {len(array)} names, expected {count}")
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in array.tolist())


def resolve_test_split(test_given: bool, test_fraction: float | None, test_key: str) -> float | None:
    """The test fraction to draw (None when `test_key` names the test data); default 0.2 when neither is set."""
    if test_given and test_fraction is not None:
        raise ConfigError(f"config keys 'data_loader.args.{test_key}' and 'data_loader.args.test_fraction' both "
                          f"form the test split; set only one")
    if test_given:
        return None
    fraction = 0.2 if test_fraction is None else test_fraction
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"config key 'data_loader.args.test_fraction' must be in (0, 1), got {fraction}")
    return fraction


def split_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (kept, held-out) indices of range(n); max(1, round(fraction n)) held out, chosen with `seed`."""
    n_out = max(1, int(round(fraction * n)))
    if n_out >= n:
        raise DataError(f"test_fraction={fraction} of {n} leaves nothing to train on")
    return random_split(n, n_out, seed)


def check_batch_size(n_train: int, batch_size: int, what: str, path: Path) -> None:
    if n_train < batch_size:
        raise DataError(f"{path} leaves {n_train} training {what} after the test and validation splits, fewer "
                        f"than batch_size {batch_size}; set data_loader.args.batch_size to {max(1, n_train)} or less")


def scale_statistics(x: torch.Tensor, scale: str, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, divisor) with x' = (x - shift) / divisor per feature/channel, reducing over `dims` of the
    training data `x`: standardize -> (mean, std) (population std, 0 -> 1), unit -> (min, max - min)
    (0 -> 1), none -> (0, 1). Both keep x's dims (size 1 on `dims`)."""
    x = x.double()
    if scale == "standardize":
        std, mean = torch.std_mean(x, dim=dims, correction=0, keepdim=True)
        return mean, torch.where(std > 0, std, 1.0)
    if scale == "unit":
        low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
        return low, torch.where(high > low, high - low, 1.0)
    shape = [1 if i in dims else s for i, s in enumerate(x.shape)]
    return torch.zeros(shape, dtype=x.dtype), torch.ones(shape, dtype=x.dtype)


def apply_scale(x: torch.Tensor, shift: torch.Tensor, divisor: torch.Tensor) -> torch.Tensor:
    """(x - shift) / divisor as float32 (in place when x already is float32)."""
    x = x.float()
    return x.sub_(shift.float()).div_(divisor.float())


def short(values: torch.Tensor, limit: int = 6) -> str:
    """'[0.12, 3.4, ...]' : the first `limit` values, 3 significant digits."""
    flat = values.flatten().tolist()
    text = ", ".join(f"{v:.3g}" for v in flat[:limit])
    return f"[{text}{', ...' if len(flat) > limit else ''}] ({len(flat)})" if len(flat) > limit else f"[{text}]"


def scale_line(scale: str, shift: torch.Tensor, divisor: torch.Tensor) -> str:
    """A describe() line for the scaling of the data."""
    if scale == "standardize":
        return f"scale standardize: mean {short(shift)} std {short(divisor)} (training split)"
    if scale == "unit":
        return f"scale unit: min {short(shift)} range {short(divisor)} (training split)"
    return "scale none"


def integer_label_names(*labels: torch.Tensor) -> tuple[str, ...]:
    """('0', ..., 'max') over the (non-negative) labels of every split."""
    top = max((int(y.max()) for y in labels if len(y) and int(y.max()) >= 0), default=-1)
    return tuple(str(i) for i in range(top + 1))
