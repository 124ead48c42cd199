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
    return render_positions(position, image_width, render_sigma)


def render_positions(position: torch.Tensor, image_width: int, render_sigma: float) -> torch.Tensor:
    """Noiseless frames of a dot at `position` (...) in [-1, 1]: exp(-1/2 (pos - grid)^2 / sigma^2) on
    `image_width` pixels in [-1, 1]: (..., image_width)."""
    grid = torch.linspace(-1.0, 1.0, image_width, dtype=position.dtype)
    return torch.exp(-0.5 * (position[..., None] - grid) ** 2 / render_sigma ** 2)


@DATA_LOADERS.register("DotVideo")
class DotVideoDataLoader(BaseDataLoader):
    """Sequences of dot frames {"x": noisy (B, T, P), "clean": noiseless (B, T, P)}, T = chunk_len, P = image_width.

    mode "video" (the authors' data): one video of `num_frames` frames at times linspace(0, duration) with
    speed `speed` and start `x0`, cut into non-overlapping chunks of `chunk_len` frames; the test set is
    the continuation of the same video (the next `test_frames` frames, fresh noise), the validation set
    `num_val_sequences` chunks continuing it after the test frames (noise from `val_seed`).
    mode "sequences": `num_sequences` independent sequences of `chunk_len` frames with the same frame
    interval, starting positions x0 ~ U(-1, 1) and speeds ~ U(speed_range); `num_test_sequences` more
    for the test set, `num_val_sequences` more (drawn with `val_seed`) for the validation set. With
    `flip_prob`, the dot reverses direction at each frame with this probability (a random event the past does
    not predict, for latent-variable sequence models). With `min_len`, sequence lengths are uniform on
    {min_len, ..., chunk_len}: frames after a sequence's end are zero and batches carry {"mask": (B, T) bool},
    True on its frames.
    Either mode: a generated validation set (`num_val_sequences` > 0) replaces `validation_split`.

    Args:
        image_width, render_sigma, noise_sigma: pixels, width of the dot and pixel noise std.
        num_frames, duration: frames of the training video and the time they span (frame interval
            duration / (num_frames - 1)).
        chunk_len: T, frames per sequence.
        speed, x0: the video's speed v and start position.
        test_frames: frames of the held-out continuation (mode "video").
        num_sequences, num_test_sequences, speed_range, flip_prob, min_len: mode "sequences".
        data_seed, test_seed: seeds of the training and test noise (and random phases and speeds).
        val_seed, num_val_sequences: seed and size of the validation set (both modes); 0 sequences: none drawn.
    """

    def __init__(self, batch_size: int = 16, shuffle: bool = True, validation_split: float = 0.0,
                 num_workers: int = 0, split_seed: int = 0, mode: str = "video", image_width: int = 20,
                 render_sigma: float = 0.15, noise_sigma: float = 0.1, num_frames: int = 5000,
                 duration: float = 500.0, chunk_len: int = 50, speed: float = 0.75, x0: float = 0.0,
                 test_frames: int = 1000, num_sequences: int = 100, num_test_sequences: int = 20,
                 speed_range: list[float] = (0.5, 1.0), flip_prob: float = 0.0, min_len: int | None = None,
                 data_seed: int = 0, test_seed: int = 1, val_seed: int = 2, num_val_sequences: int = 0):
        super().__init__(batch_size, shuffle, validation_split, num_workers, split_seed)
        with_val = self.generated_validation("num_val_sequences", num_val_sequences, val_seed, data_seed, test_seed)
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
            if min_len is not None or flip_prob:
                raise ConfigError("config keys 'data_loader.args.min_len' and 'flip_prob' need mode 'sequences'")
            if test_frames < chunk_len:
                raise ConfigError(f"test_frames ({test_frames}) must be >= chunk_len ({chunk_len})")
            speed_, x0_ = torch.tensor(speed, dtype=f64), torch.tensor(x0, dtype=f64)
            train = render_dots(torch.arange(num_frames, dtype=f64) * dt, speed_, x0_, **render)
            test = render_dots((num_frames + torch.arange(test_frames, dtype=f64)) * dt, speed_, x0_, **render)
            train_clean = self._chunks(train, chunk_len)
            test_clean = self._chunks(test, chunk_len)
            if with_val:  # the chunks after the test frames
                first = num_frames + test_frames
                val = render_dots((first + torch.arange(num_val_sequences * chunk_len, dtype=f64)) * dt, speed_, x0_,
                                  **render)
                val_clean = self._chunks(val, chunk_len)
                val_source = (f"frames {first}-{first + len(val) - 1} of the video after the test frames, noise "
                              f"drawn with val_seed {val_seed}")
        else:
            if len(speed_range) != 2 or not 0 < speed_range[0] <= speed_range[1]:
                raise ConfigError(f"config key 'data_loader.args.speed_range' must be [low, high] with "
                                  f"0 < low <= high, got {speed_range}")
            if min_len is not None and not 1 <= min_len <= chunk_len:
                raise ConfigError(f"config key 'data_loader.args.min_len' must be in [1, chunk_len={chunk_len}], "
                                  f"got {min_len}")
            if not 0.0 <= flip_prob <= 1.0:
                raise ConfigError(f"config key 'data_loader.args.flip_prob' must be in [0, 1], got {flip_prob}")
            shape = dict(chunk_len=chunk_len, dt=dt, speed_range=speed_range, flip_prob=flip_prob, render=render)
            train_clean = self._random_sequences(num_sequences, seed=data_seed, **shape)
            test_clean = self._random_sequences(num_test_sequences, seed=test_seed + 1000, **shape)
            if with_val:
                val_clean = self._random_sequences(num_val_sequences, seed=val_seed + 1000, **shape)
                val_source = f"drawn from the generator with val_seed {val_seed}"
        self.train_set = self._dataset(train_clean, data_seed, min_len)
        self.test_set = self._dataset(test_clean, test_seed, min_len)
        if with_val:
            self.val_set, self.val_source = self._dataset(val_clean, val_seed, min_len), val_source
        self.split_validation()

    @staticmethod
    def _chunks(frames: torch.Tensor, chunk_len: int) -> torch.Tensor:
        """(F, P) -> (F // chunk_len, chunk_len, P), dropping the remainder."""
        usable = len(frames) // chunk_len * chunk_len
        return frames[:usable].reshape(-1, chunk_len, frames.shape[-1])

    @staticmethod
    def _random_sequences(count: int, chunk_len: int, dt: float, speed_range: list[float], flip_prob: float,
                          seed: int, render: dict) -> torch.Tensor:
        """(count, chunk_len, P) noiseless frames. Frame t shows time dt * (signed number of frames moved), the
        dot moving backwards (the triangle wave run in reverse) after an odd number of direction flips."""
        gen = torch.Generator().manual_seed(seed)
        x0 = 2.0 * torch.rand(count, generator=gen, dtype=torch.float64) - 1.0
        low, high = speed_range
        speed = low + (high - low) * torch.rand(count, generator=gen, dtype=torch.float64)
        frames = torch.arange(chunk_len, dtype=torch.float64).expand(count, chunk_len)
        if flip_prob > 0:
            flips = torch.rand(count, chunk_len - 1, generator=gen, dtype=torch.float64) < flip_prob
            direction = 1.0 - 2.0 * (flips.cumsum(1) % 2)  # direction of the move into frame t = 1..T-1
            frames = torch.cat([torch.zeros(count, 1, dtype=torch.float64), direction.cumsum(1)], 1)
        return render_dots(frames * dt, speed, x0, **render)

    def _dataset(self, clean: torch.Tensor, seed: int, min_len: int | None) -> TensorDictDataset:
        gen = torch.Generator().manual_seed(seed)
        noisy = clean + self.noise_sigma * torch.randn(clean.shape, generator=gen, dtype=clean.dtype)
        tensors = {"x": noisy.float(), "clean": clean.float()}
        if min_len is not None:
            count, length = clean.shape[:2]
            lengths = torch.randint(min_len, length + 1, (count,), generator=gen)
            mask = torch.arange(length) < lengths[:, None]
            tensors = {name: torch.where(mask[..., None], value, 0.0) for name, value in tensors.items()}
            tensors["mask"] = mask
        return TensorDictDataset(tensors)
