"""MNIST from torchvision's raw IDX layout, with dynamic or fixed binarisation.

Files are looked up under `<root>/MNIST/raw/` (plain or .gz), as torchvision's
MNIST class stores them; when missing and `download` is on, torchvision fetches
them. Either split can be trained or tested on, optionally restricted to an
index range (e.g. the test split's first 9,000 images to train, last 1,000 to
evaluate).
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from base.base_data_loader import BaseDataLoader, TensorDictDataset
from data_loader.registry import DATA_LOADERS
from utils.errors import DataError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (optionally gzipped) into a tensor."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read MNIST file {path}: {err}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{path} is truncated or corrupt: {len(data)} bytes, expected {expected}")
    array = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(dims)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def _find(raw: Path, name: str) -> Path | None:
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_mnist_split(root: str | Path, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the 'train' or 'test' split."""
    raw = Path(root) / "MNIST" / "raw"
    names = [f"{_PREFIX[split]}-images-idx3-ubyte", f"{_PREFIX[split]}-labels-idx1-ubyte"]
    paths = [_find(raw, n) for n in names]
    if None in paths and download:
        import torchvision

        try:
            torchvision.datasets.MNIST(root=str(root), train=split == "train", download=True)
        except Exception as err:
            raise DataError(
                f"MNIST {split} split is not under {raw} and downloading it failed "
                f"({' '.join(str(err).split())[:200]}). Copy the IDX files "
                f"({', '.join(names)}, plain or .gz) into {raw}, as torchvision's MNIST stores them."
            ) from None
        paths = [_find(raw, n) for n in names]
    if None in paths:
        missing = [f"{raw / n}[.gz]" for n, p in zip(names, paths) if p is None]
        raise DataError(
            f"MNIST {split} split not found: looked for {', '.join(missing)}. Set "
            f"data_loader.args.download=true on a machine with network access, or copy the IDX files "
            f"there (data_loader.args.root is the folder that contains MNIST/raw)."
        )
    images, labels = (read_idx(p) for p in paths)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(f"MNIST files in {raw} do not match: images {tuple(images.shape)}, labels {tuple(labels.shape)}")
    return images, labels.long()


class BinarizedMNIST(TensorDictDataset):
    """MNIST images resampled as Bernoulli(pixel intensity) every time they are drawn.

    Batches: {"x": (B, 1, 28, 28) float 0/1, "y": (B,) int64}.
    """

    def transform_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        probs = batch["x"].float().div_(255.0)
        return {"x": torch.bernoulli(probs, generator=self.generator()), "y": batch["y"]}


def _slice(images: torch.Tensor, labels: torch.Tensor, index_range: list[int] | None, key: str):
    if index_range is None:
        return images, labels
    if len(index_range) != 2 or not 0 <= index_range[0] < index_range[1] <= len(images):
        raise DataError(f"data_loader.args.{key} must be [start, stop] within 0..{len(images)}, got {index_range}")
    return images[index_range[0]: index_range[1]], labels[index_range[0]: index_range[1]]


@DATA_LOADERS.register("MNIST")
class MnistDataLoader(BaseDataLoader):
    """Binarised MNIST: dynamic binarisation for training, a fixed one for validation and test.

    Args:
        root: folder that contains MNIST/raw.
        download: fetch the files with torchvision when they are missing.
        binarize: "dynamic" (fresh sample per draw), "fixed" (sampled once) or "none" (intensities in [0, 1]).
        train_split, test_split: which MNIST split ('train' or 'test') each role reads.
        train_range, test_range: optional [start, stop) index ranges within those splits.
        test_binarize_seed: seed of the fixed binarisation of validation and test images.
    """

    data_shape = (1, 28, 28)
    is_image = True

    def __init__(self, batch_size: int = 128, shuffle: bool = True, validation_split: float = 0.0,
                 num_workers: int = 0, split_seed: int = 0, root: str = "data/", download: bool = True,
                 binarize: str = "dynamic", train_split: str = "train", test_split: str = "test",
                 train_range: list[int] | None = None, test_range: list[int] | None = None,
                 test_binarize_seed: int = 0):
        super().__init__(batch_size, shuffle, validation_split, num_workers, split_seed)
        for key, value in (("train_split", train_split), ("test_split", test_split)):
            if value not in _PREFIX:
                raise ValueError(f"{key} must be 'train' or 'test', got {value!r}")
        if binarize not in ("dynamic", "fixed", "none"):
            raise ValueError(f"binarize must be 'dynamic', 'fixed' or 'none', got {binarize!r}")
        self.binarize = binarize
        self.test_binarize_seed = test_binarize_seed
        train = _slice(*load_mnist_split(root, train_split, download), train_range, "train_range")
        test = _slice(*load_mnist_split(root, test_split, download), test_range, "test_range")
        self.train_set = self._dataset(*train, dynamic=binarize == "dynamic")
        self.test_set = self._dataset(*test, dynamic=False)
        self.split_validation()
        if self.val_set is not None and binarize == "dynamic":  # validation: binarised once, like test
            self.val_set = self._dataset(self.val_set.tensors["x"], self.val_set.tensors["y"], dynamic=False)

    def _dataset(self, images: torch.Tensor, labels: torch.Tensor, dynamic: bool) -> TensorDictDataset:
        images = images.unsqueeze(1) if images.dim() == 3 else images  # (N, 1, 28, 28)
        if dynamic:
            return BinarizedMNIST({"x": images, "y": labels})
        x = images.float() / 255.0
        if self.binarize != "none":
            x = torch.bernoulli(x, generator=torch.Generator().manual_seed(self.test_binarize_seed))
        return TensorDictDataset({"x": x, "y": labels})
