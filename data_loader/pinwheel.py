"""The pinwheel data set (SVAE.md section 3): a 2-D mixture of curved arms, with labels."""
from __future__ import annotations

import math

import torch

from base.base_data_loader import BaseDataLoader, TensorDictDataset
from data_loader.registry import DATA_LOADERS


def make_pinwheel(num_classes: int = 5, points_per_class: int = 100, radial_std: float = 0.3,
                  tangential_std: float = 0.05, rate: float = 0.25, scale: float = 10.0,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample pinwheel points.

    Features f ~ N(0, diag(radial_std^2, tangential_std^2)) with f_0 += 1; arm k is
    rotated by angle 2 pi k / num_classes + rate * exp(f_0); y = scale * f @ R(angle)
    with R = [[cos, -sin], [sin, cos]]. Points come in a random order.

    Returns:
        points: (num_classes * points_per_class, 2) float32.
        labels: (num_classes * points_per_class,) int64 arm index.
    """
    gen = torch.Generator().manual_seed(seed)
    n = num_classes * points_per_class
    features = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    features = features * torch.tensor([radial_std, tangential_std], dtype=torch.float64)
    features[:, 0] += 1.0
    labels = torch.arange(num_classes).repeat_interleave(points_per_class)
    angles = 2 * math.pi * labels / num_classes + rate * torch.exp(features[:, 0])
    cos, sin = torch.cos(angles), torch.sin(angles)
    rotations = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (n, 2, 2)
    points = scale * torch.einsum("ni,nij->nj", features, rotations)
    order = torch.randperm(n, generator=gen)
    return points[order].float(), labels[order]


@DATA_LOADERS.register("Pinwheel")
class PinwheelDataLoader(BaseDataLoader):
    """Pinwheel points {"x": (B, 2), "y": (B,)}; the test set is drawn with `test_seed`, the validation set
    with `val_seed` (or, instead, `validation_split` of the training points is held out).

    Args:
        num_classes, points_per_class, radial_std, tangential_std, rate, scale: see `make_pinwheel`.
        data_seed: seed of the training points.
        test_seed: seed of the held-out test points.
        test_points_per_class: size of the test set per arm.
        val_seed: seed of the validation points.
        val_points_per_class: size of the validation set per arm; 0: none drawn.
    """

    data_shape = (2,)

    def __init__(self, batch_size: int = 50, shuffle: bool = True, validation_split: float = 0.0,
                 num_workers: int = 0, split_seed: int = 0, num_classes: int = 5,
                 points_per_class: int = 100, radial_std: float = 0.3, tangential_std: float = 0.05,
                 rate: float = 0.25, scale: float = 10.0, data_seed: int = 0, test_seed: int = 1,
                 test_points_per_class: int = 100, val_seed: int = 2, val_points_per_class: int = 0):
        super().__init__(batch_size, shuffle, validation_split, num_workers, split_seed)
        shape = dict(num_classes=num_classes, radial_std=radial_std, tangential_std=tangential_std,
                     rate=rate, scale=scale)
        x, y = make_pinwheel(points_per_class=points_per_class, seed=data_seed, **shape)
        self.train_set = TensorDictDataset({"x": x, "y": y})
        x, y = make_pinwheel(points_per_class=test_points_per_class, seed=test_seed, **shape)
        self.test_set = TensorDictDataset({"x": x, "y": y})
        if self.generated_validation("val_points_per_class", val_points_per_class, val_seed, data_seed, test_seed):
            x, y = make_pinwheel(points_per_class=val_points_per_class, seed=val_seed, **shape)
            self.val_set = TensorDictDataset({"x": x, "y": y})
            self.val_source = f"drawn from the generator with val_seed {val_seed}"
        self.split_validation()
