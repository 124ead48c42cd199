"""The bouncing-dot video (SVAE.md section 4): a Gaussian bump bouncing between the ends of a
1-D image, observed with Gaussian pixel noise. Generated in memory, no download."""
from __future__ import annotations

import torch

from base.base_data_loader import BaseDataLoader, TensorDictDataset
from data_loader.registry import DATA_LOADERS
from utils.errors import ConfigError


def triangle_wave(t: torch.Tensor) -> torch.Tensor:
    """Period 2, range [-1, 1], -1 at t = 0 (rising), 1 at t = 1."""
    phase = torch.remainder(t, 2.0)
    return torch.where(phase < 1.0, 2.0 * phase - 1.0, 3.0 - 2.0 * phase)


def render_dots(times: torch.Tensor, speed: torch.Tensor, x0: torch.Tensor, image_width: int,
                render_sigma: float) -> torch.Tensor:
    """Noiseless frames: position(t) = triangle(v (t + (1 + x0) / 2)), frame = exp(-1/2 (pos - grid)^2 / sigma^2)
    on `image_width` pixels in [-1, 1]. times (..., T), speed and x0 broadcast to (...) -> (..., T, image_width)."""
    position = triangle_wave(speed[..., None] * (times + (1.0 + x0[..., None]) / 2.0))
    grid = torch.linspace(-1.0, 1.0, image_width, dtype=times.dtype)
    return torch.exp(-0.5 * (position[..., None] - grid) ** 2 / render_sigma ** 2)


@DATA_LOADERS.register("DotVideo")
class DotVideoDataLoader(BaseDataLoader):
    """Sequences of dot frames {"x": noisy (B, T, P), "clean": noiseless (B, T, P)}, T = chunk_len, P = image_width.

    mode "video" (the authors' data): one video of `num_frames` frames at times linspace(0, duration) with
    speed `speed` and start `x0`, cut into non-overlapping chunks of `chunk_len` frames; the test set is
    the continuation of the same video (the next `test_frames` frames, fresh noise).
    mode "sequences": `num_sequences` independent sequences of `chunk_len` frames with the same frame
    interval, starting positions x0 ~ U(-1, 1) and speeds ~ U(speed_range); `num_test_sequences` more
    for the test set.

    Args:
        image_width, render_sigma, noise_sigma: pixels, width of the dot and pixel noise std.
        num_frames, duration: frames of the training video and the time they span (frame interval
            duration / (num_frames - 1)).
        chunk_len: T, frames per sequence.
        speed, x0: the video's speed v and start position.
        test_frames: frames of the held-out continuation (mode "video").
        num_sequences, num_test_sequences, speed_range: mode "sequences".
        data_seed, test_seed: seeds of the training and test noise (and random phases and speeds).
    """

    def __init__(self, batch_size: int = 16, shuffle: bool = True, validation_split: float = 0.0,
                 num_workers: int = 0, split_seed: int = 0, mode: str = "video", image_width: int = 20,
                 render_sigma: float = 0.15, noise_sigma: float = 0.1, num_frames: int = 5000,
                 duration: float = 500.0, chunk_len: int = 50, speed: float = 0.75, x0: float = 0.0,
                 test_frames: int = 1000, num_sequences: int = 100, num_test_sequences: int = 20,
                 speed_range: list[float] = (0.5, 1.0), data_seed: int = 0, test_seed: int = 1):
        super().__init__(batch_size, shuffle, validation_split, num_workers, split_seed)
        if mode not in ("video", "sequences"):
            raise ConfigError(f"config key 'data_loader.args.mode' must be 'video' or 'sequences', got {mode!r}")
        if chunk_len < 2 or num_frames < chunk_len:
            raise ConfigError(f"need 2 <= chunk_len <= num_frames, got chunk_len={chunk_len}, "
                              f"num_frames={num_frames}")
        self.data_shape = (chunk_len, image_width)
        self.noise_sigma = noise_sigma
        dt = duration / (num_frames - 1)
        render = dict(image_width=image_width, render_sigma=render_sigma)
        f64 = torch.float64
        if mode == "video":
            if test_frames < chunk_len:
                raise ConfigError(f"test_frames ({test_frames}) must be >= chunk_len ({chunk_len})")
            speed_, x0_ = torch.tensor(speed, dtype=f64), torch.tensor(x0, dtype=f64)
            train = render_dots(torch.arange(num_frames, dtype=f64) * dt, speed_, x0_, **render)
            test = render_dots((num_frames + torch.arange(test_frames, dtype=f64)) * dt, speed_, x0_, **render)
            train_clean = self._chunks(train, chunk_len)
            test_clean = self._chunks(test, chunk_len)
        else:
            if len(speed_range) != 2 or not 0 < speed_range[0] <= speed_range[1]:
                raise ConfigError(f"config key 'data_loader.args.speed_range' must be [low, high] with "
                                  f"0 < low <= high, got {speed_range}")
            times = torch.arange(chunk_len, dtype=f64) * dt
            train_clean = self._random_sequences(num_sequences, times, speed_range, data_seed, render)
            test_clean = self._random_sequences(num_test_sequences, times, speed_range, test_seed + 1000, render)
        self.train_set = self._dataset(train_clean, data_seed)
        self.test_set = self._dataset(test_clean, test_seed)
        self.split_validation()

    @staticmethod
    def _chunks(frames: torch.Tensor, chunk_len: int) -> torch.Tensor:
        """(F, P) -> (F // chunk_len, chunk_len, P), dropping the remainder."""
        usable = len(frames) // chunk_len * chunk_len
        return frames[:usable].reshape(-1, chunk_len, frames.shape[-1])

    @staticmethod
    def _random_sequences(count: int, times: torch.Tensor, speed_range: list[float], seed: int,
                          render: dict) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        x0 = 2.0 * torch.rand(count, generator=gen, dtype=times.dtype) - 1.0
        low, high = speed_range
        speed = low + (high - low) * torch.rand(count, generator=gen, dtype=times.dtype)
        return render_dots(times, speed, x0, **render)

    def _dataset(self, clean: torch.Tensor, seed: int) -> TensorDictDataset:
        gen = torch.Generator().manual_seed(seed)
        noisy = clean + self.noise_sigma * torch.randn(clean.shape, generator=gen, dtype=clean.dtype)
        return TensorDictDataset({"x": noisy.float(), "clean": clean.float()})
