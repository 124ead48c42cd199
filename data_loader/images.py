"""ImageFolder: PNG/JPEG images of a folder, decoded once into memory; class sub-folders give labels."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from base.base_data_loader import BaseDataLoader, TensorDictDataset
from data_loader.files import check_batch_size, existing, resolve_test_split, split_indices
from data_loader.registry import DATA_LOADERS
from utils.errors import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg")
BINARIZE_SEED = 0  # the fixed binarisation of validation and test images


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def list_images(root: Path) -> tuple[list[Path], list[str] | None]:
    """The image files under `root` and their class names (sorted sub-folder names; None without sub-folders)."""
    loose = _images_in(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if loose and folders:
        raise DataError(f"folder {root} holds both images ({loose[0].name}, ...) and sub-folders ({folders[0].name}, "
                        f"...); put every image in a class sub-folder, or all of them directly in {root}")
    if not folders:
        if not loose:
            raise DataError(f"folder {root} has no images ({', '.join(EXTENSIONS)}) and no class sub-folders")
        return loose, None
    files, classes = [], []
    for folder in folders:
        images = _images_in(folder)
        if not images:
            raise DataError(f"class folder {folder} has no images ({', '.join(EXTENSIONS)})")
        files += images
        classes += [folder.name] * len(images)
    return files, classes


def decode(path: Path, channels: int, size: list[int] | None) -> np.ndarray:
    """One image as uint8 (channels, H, W), converted to gray or RGB and resized (bilinear) to `size`."""
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if size is not None:
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as err:
        raise DataError(f"image {path} does not decode ({' '.join(str(err).split())[:150]}); remove or re-save it")
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def read_folder(root: Path, channels: int, size: list[int] | None) -> tuple[torch.Tensor, list[str] | None]:
    """Images (N, channels, H, W) uint8 and their class names (or None)."""
    files, classes = list_images(root)
    images = [decode(files[0], channels, size)]
    for path in files[1:]:
        images.append(decode(path, channels, size))
        if images[-1].shape != images[0].shape:
            raise DataError(f"image {path} is {images[-1].shape[1]}x{images[-1].shape[2]} but {files[0]} is "
                            f"{images[0].shape[1]}x{images[0].shape[2]}; set data_loader.args.size: [H, W] to "
                            f"resize every image")
    return torch.from_numpy(np.stack(images)), classes


class BinarizedImages(TensorDictDataset):
    """Images resampled as Bernoulli(intensity) every time they are drawn.

    Holds {"x": (N, C, H, W) uint8, "y"?}; batches {"x": (B, C, H, W) float 0/1, "y": (B,) int64}.
    """

    def transform_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        probs = batch["x"].float().div_(255.0)
        return {**batch, "x": torch.bernoulli(probs, generator=self.generator())}


class UnitImages(TensorDictDataset):
    """Holds {"x": (N, C, H, W) uint8, "y"?}; batches {"x": (B, C, H, W) float in [0, 1], "y": (B,) int64}."""

    def transform_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**batch, "x": batch["x"].float().div_(255.0)}


@DATA_LOADERS.register("ImageFolder")
class ImageFolderDataLoader(BaseDataLoader):
    """Images of a folder: batches {"x": (B, C, H, W) float in [0, 1], "y": (B,) int64 with class folders}.

    Class sub-folders of `path` (sorted names) give the labels y; images directly in `path` (no
    sub-folders) give no y. Files ending in .png, .jpg or .jpeg (any case) are decoded once, into a
    uint8 tensor held in memory. The test split is the folder `test_path` (its class folders must be
    among `path`'s) or a `test_fraction` of `path`'s images drawn with `split_seed`; with neither,
    test_fraction is 0.2.

    Args:
        path: the image folder.
        test_path: a folder of test images, laid out like `path`.
        test_fraction: fraction of `path`'s images held out for testing (default 0.2 without test_path).
        size: [H, W] to resize every image to (bilinear); without it all images must share one size.
        channels: 1 (gray) or 3 (RGB); images are converted.
        binarize: "none" (intensities) or "dynamic" (training images resampled as Bernoulli(intensity)
            at every draw; validation and test images binarised once with seed 0).

    Attributes: data_shape (C, H, W), is_image, label_names (class folder names, when there are
    sub-folders), path, test_path, binarize.
    """

    is_image = True

    def __init__(self, path: str, batch_size: int = 128, shuffle: bool = True, validation_split: float = 0.0,
                 num_workers: int = 0, split_seed: int = 0, test_path: str | None = None,
                 test_fraction: float | None = None, size: list[int] | None = None, channels: Literal[1, 3] = 3,
                 binarize: Literal["none", "dynamic"] = "none"):
        super().__init__(batch_size, shuffle, validation_split, num_workers, split_seed)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        if binarize not in ("none", "dynamic"):
            raise ValueError(f"binarize must be 'none' or 'dynamic', got {binarize!r}")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size must be [H, W] with positive H and W, got {size}")
        fraction = resolve_test_split(test_path is not None, test_fraction, "test_path")
        self.binarize = binarize
        self.path = existing(path, "path", folder=True)
        self.test_path = existing(test_path, "test_path", folder=True) if test_path is not None else None
        x, classes = read_folder(self.path, channels, size)
        names = sorted(set(classes)) if classes is not None else None
        train = {"x": x, **({"y": _labels(classes, names, self.path)} if names else {})}
        if self.test_path is None:
            kept, held_out = split_indices(len(x), fraction, split_seed)
            train, test = {k: v[kept] for k, v in train.items()}, {k: v[held_out] for k, v in train.items()}
        else:
            test_x, test_classes = read_folder(self.test_path, channels, size)
            if test_x.shape[1:] != x.shape[1:] or (test_classes is None) != (classes is None):
                raise DataError(f"the images of {self.test_path} ({tuple(test_x.shape[1:])}, "
                                f"{'no ' if test_classes is None else ''}class folders) do not match those of "
                                f"{self.path} ({tuple(x.shape[1:])}, {'no ' if classes is None else ''}class folders)")
            test = {"x": test_x, **({"y": _labels(test_classes, names, self.test_path)} if names else {})}
        self.data_shape = tuple(x.shape[1:])
        self.label_names = tuple(names) if names else None
        self.train_set = (BinarizedImages if binarize == "dynamic" else UnitImages)(train)
        self.test_set = self._fixed(test)
        self.split_validation()
        if self.val_set is not None:
            self.val_set = self._fixed(self.val_set.tensors)
        check_batch_size(len(self.train_set), batch_size, "images", self.path)

    def _fixed(self, tensors: dict[str, torch.Tensor]) -> TensorDictDataset:
        """A held-out split: intensities, or binarised once with BINARIZE_SEED."""
        if self.binarize == "none":
            return UnitImages(tensors)
        probs = tensors["x"].float().div_(255.0)
        x = torch.bernoulli(probs, generator=torch.Generator().manual_seed(BINARIZE_SEED))
        return TensorDictDataset({**tensors, "x": x})

    def describe(self) -> list[str]:
        files = f"{self.path}" + (f", test {self.test_path}" if self.test_path is not None else "")
        return [f"folders: {files}", *super().describe(), f"binarize {self.binarize}"]


def _labels(classes: list[str], names: list[str], root: Path) -> torch.Tensor:
    """(N,) int64 index of each image's class in `names`."""
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(classes) - set(index))
    if unknown:
        raise DataError(f"class folder {root / unknown[0]} is not among the training classes ({', '.join(names)})")
    return torch.tensor([index[c] for c in classes], dtype=torch.long)
