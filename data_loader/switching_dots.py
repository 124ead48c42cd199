"""Bouncing dots whose speed switches between regimes (SVAE.md section 6): data with known discrete states for
the switching LDS. Generated in memory, no download."""
from __future__ import annotations

import torch

from base.base_data_loader import BaseDataLoader, TensorDictDataset
from data_loader.dots import render_positions, triangle_wave
from data_loader.registry import DATA_LOADERS
from utils.errors import ConfigError


def sticky_markov_states(count: int, length: int, num_states: int, stay_prob: float,
                         gen: torch.Generator) -> torch.Tensor:
    """(count, length) states of a Markov chain that starts uniformly and at each step stays with probability
    `stay_prob`, else jumps to one of the other states uniformly."""
    first = torch.randint(num_states, (count, 1), generator=gen)
    jumps = torch.rand(count, length - 1, generator=gen, dtype=torch.float64) >= stay_prob
    offsets = torch.randint(1, max(num_states, 2), (count, length - 1), generator=gen) * jumps
    return (first + torch.cat([torch.zeros_like(first), offsets.cumsum(1)], 1)) % num_states


@DATA_LOADERS.register("SwitchingDots")
class SwitchingDotsDataLoader(BaseDataLoader):
    """Sequences of a dot bouncing in a 1-D image {"x": noisy (B, T, P), "clean": noiseless (B, T, P),
    "labels": the regime of each frame (B, T) long}, T = chunk_len, P = image_width; `label_names` "speed v".

    The regime z_t follows a sticky Markov chain over len(speeds) regimes and sets the speed of the move from
    frame t to t+1: phase_t+1 = phase_t + speeds[z_t] * frame_interval, position = triangle_wave(phase) (period
    2, range [-1, 1]; the phase of frame 1 is uniform), rendered as in the bouncing-dot video, plus Gaussian
    pixel noise. The test set is `num_test_sequences` fresh sequences, the validation set `num_val_sequences`
    more drawn with `val_seed` (or, instead, `validation_split` of the training sequences is held out).

    Args:
        image_width, render_sigma, noise_sigma: pixels, width of the dot and pixel noise std.
        chunk_len: T.
        speeds: the speed of each regime (triangle-wave periods per unit time / 2).
        stay_prob: probability that the regime stays from one frame to the next.
        frame_interval: time between frames.
        num_sequences, num_test_sequences: training and test sequences.
        data_seed, test_seed: seeds of the training and test sequences and noise.
        val_seed, num_val_sequences: seed and size of the validation set; 0 sequences: none drawn.
    """

    def __init__(self, batch_size: int = 16, shuffle: bool = True, validation_split: float = 0.0,
                 num_workers: int = 0, split_seed: int = 0, image_width: int = 20, render_sigma: float = 0.15,
                 noise_sigma: float = 0.1, chunk_len: int = 50, speeds: list[float] = (0.3, 1.0, 2.0),
                 stay_prob: float = 0.95, frame_interval: float = 0.1, num_sequences: int = 200,
                 num_test_sequences: int = 50, data_seed: int = 0, test_seed: int = 1, val_seed: int = 2,
                 num_val_sequences: int = 0):
        super().__init__(batch_size, shuffle, validation_split, num_workers, split_seed)
        with_val = self.generated_validation("num_val_sequences", num_val_sequences, val_seed, data_seed, test_seed)
        if chunk_len < 2:
            raise ConfigError(f"config key 'data_loader.args.chunk_len' must be >= 2, got {chunk_len}")
        if len(speeds) < 1 or any(v < 0 for v in speeds):
            raise ConfigError(f"config key 'data_loader.args.speeds' must be a non-empty list of speeds >= 0, "
                              f"got {list(speeds)}")
        if not 0.0 <= stay_prob <= 1.0:
            raise ConfigError(f"config key 'data_loader.args.stay_prob' must be in [0, 1], got {stay_prob}")
        for name, value in [("num_sequences", num_sequences), ("num_test_sequences", num_test_sequences)]:
            if value < 1:
                raise ConfigError(f"config key 'data_loader.args.{name}' must be >= 1, got {value}")
        self.data_shape = (chunk_len, image_width)
        self.num_states = len(speeds)
        self.label_names = tuple(f"speed {v:g}" for v in speeds)
        shape = dict(length=chunk_len, speeds=torch.tensor(list(speeds), dtype=torch.float64), stay_prob=stay_prob,
                     frame_interval=frame_interval, image_width=image_width, render_sigma=render_sigma,
                     noise_sigma=noise_sigma)
        self.train_set = self._dataset(num_sequences, seed=data_seed, **shape)
        self.test_set = self._dataset(num_test_sequences, seed=test_seed + 1000, **shape)
        if with_val:
            self.val_set = self._dataset(num_val_sequences, seed=val_seed + 1000, **shape)
            self.val_source = f"drawn from the generator with val_seed {val_seed}"
        self.split_validation()

    @staticmethod
    def _dataset(count: int, length: int, speeds: torch.Tensor, stay_prob: float, frame_interval: float,
                 image_width: int, render_sigma: float, noise_sigma: float, seed: int) -> TensorDictDataset:
        gen = torch.Generator().manual_seed(seed)
        states = sticky_markov_states(count, length, len(speeds), stay_prob, gen)
        start = 2.0 * torch.rand(count, 1, generator=gen, dtype=torch.float64)
        moves = speeds[states[:, :-1]] * frame_interval
        phase = torch.cat([start, start + moves.cumsum(1)], 1)
        clean = render_positions(triangle_wave(phase), image_width, render_sigma)
        noisy = clean + noise_sigma * torch.randn(clean.shape, generator=gen, dtype=clean.dtype)
        return TensorDictDataset({"x": noisy.float(), "clean": clean.float(), "labels": states})
