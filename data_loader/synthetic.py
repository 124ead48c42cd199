"""Random in-memory data of a given shape: offline input for benchmarks and tests."""
from __future__ import annotations

import torch

from base.base_data_loader import BaseDataLoader, TensorDictDataset
from data_loader.registry import DATA_LOADERS


@DATA_LOADERS.register("Synthetic")
class SyntheticDataLoader(BaseDataLoader):
    """{"x": (B, *data_shape), "y": (B,)} with x binary (Bernoulli(0.5)) or standard normal.

    Args:
        num_examples: training examples (the test set has num_examples // 10, at least one batch).
        data_shape: shape of one example, e.g. [784] or [1, 28, 28].
        binary: 0/1 pixels instead of Gaussian values.
        data_seed: seed of the generated values.
    """

    def __init__(self, batch_size: int = 128, shuffle: bool = True, validation_split: float = 0.0,
                 num_workers: int = 0, split_seed: int = 0, num_examples: int = 10000,
                 data_shape: list[int] = (784,), binary: bool = True, data_seed: int = 0):
        super().__init__(batch_size, shuffle, validation_split, num_workers, split_seed)
        self.data_shape = tuple(data_shape)
        self.is_image = len(self.data_shape) == 3
        gen = torch.Generator().manual_seed(data_seed)
        n_test = max(num_examples // 10, batch_size)

        def make(n: int) -> TensorDictDataset:
            x = torch.randn(n, *self.data_shape, generator=gen)
            x = (x > 0).float() if binary else x
            return TensorDictDataset({"x": x, "y": torch.zeros(n, dtype=torch.long)})

        self.train_set, self.test_set = make(num_examples), make(n_test)
        self.split_validation()
