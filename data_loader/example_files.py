"""Example data files in the three formats a user brings (README, "Train on your own data"), generated:

    python -m data_loader.example_files data/own

writes `vectors.npz` (Arrays: 5-D points in five curved clusters, with labels), `images/` (ImageFolder:
20x20 RGB PNGs of three shapes, one sub-folder per class) and `sequences.npz` (Sequences: 7-channel,
real-valued recordings of 40-120 frames from a 2-D switching linear dynamical system, with the regime of
every frame as its label). The configs in configs/own/ train on them; the tests write them under tmp_path.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data_loader.pinwheel import make_pinwheel
from data_loader.switching_dots import sticky_markov_states

SHAPES = ("disc", "square", "cross")
REGIMES = ("turn left", "turn right", "drift in")


def write_vectors(path: Path, points_per_class: int = 200, seed: int = 0) -> Path:
    """x (5 * points_per_class, 5) float32: the 2-D pinwheel lifted to 5-D by a fixed random map and a tanh,
    plus noise 0.05; y (N,) int64, its arm."""
    gen = torch.Generator().manual_seed(seed)
    points, labels = make_pinwheel(num_classes=5, points_per_class=points_per_class, seed=seed)
    lift = torch.randn(2, 5, generator=gen) / math.sqrt(2)
    x = torch.tanh(points / 5) @ lift * 3 + 0.05 * torch.randn(len(points), 5, generator=gen)
    np.savez(path, x=x.numpy().astype(np.float32), y=labels.numpy())
    return path


def write_images(folder: Path, per_class: int = 200, size: int = 20, seed: int = 0) -> Path:
    """`folder`/<shape>/<i>.png: 8-bit RGB images (size x size) of a shape of random colour, size and place on a
    dark background, one sub-folder per shape in SHAPES."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    for label, shape in enumerate(SHAPES):
        (folder / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            centre = rng.uniform(0.3 * size, 0.7 * size, 2)
            radius = rng.uniform(0.15 * size, 0.3 * size)
            dy, dx = rows - centre[0], cols - centre[1]
            if shape == "disc":
                inside = dy ** 2 + dx ** 2 <= radius ** 2
            elif shape == "square":
                inside = (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
            else:
                inside = ((np.abs(dy) <= radius / 3) | (np.abs(dx) <= radius / 3)) & (np.abs(dy) <= radius) \
                    & (np.abs(dx) <= radius)
            colour = rng.uniform(0.4, 1.0, 3)
            image = np.where(inside[..., None], colour, 0.1) + rng.normal(0, 0.03, (size, size, 3))
            Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8), "RGB").save(folder / shape / f"{i}.png")
    return folder


def write_sequences(path: Path, num_sequences: int = 60, min_len: int = 40, max_len: int = 120,
                    seed: int = 0) -> Path:
    """Sequences of 7 channels y_t = C x_t + d + noise 0.05 of a 2-D latent x_t+1 = A_z x_t + noise 0.02 whose
    regime z_t (REGIMES: rotation by +0.25 or -0.25 radians per frame at radius ~1, or decay towards 0 by 0.9)
    follows a sticky Markov chain (stay probability 0.97); lengths uniform in [min_len, max_len]. Saved as
    points (sum of L, 7) float32, lengths (N,), labels (sum of L,) the regimes, and label_names, channel_names,
    sequence_names."""
    gen = torch.Generator().manual_seed(seed)
    T = max_len
    rotation = [torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) for a in (0.25, -0.25)]
    dynamics = torch.stack([*rotation, 0.9 * torch.eye(2)])  # (3, 2, 2)
    states = sticky_markov_states(num_sequences, T, len(REGIMES), 0.97, gen)
    x = torch.randn(num_sequences, 2, generator=gen)
    x = x / x.norm(dim=-1, keepdim=True)
    path_x = [x]
    for t in range(T - 1):  # every sequence at once
        x = (dynamics[states[:, t]] @ x.unsqueeze(-1)).squeeze(-1) + 0.02 * torch.randn(x.shape, generator=gen)
        x = torch.where((states[:, t] < 2)[:, None], x / x.norm(dim=-1, keepdim=True).clamp(min=0.2), x)
        path_x.append(x)
    latent = torch.stack(path_x, 1)  # (N, T, 2)
    C, d = torch.randn(2, 7, generator=gen), torch.randn(7, generator=gen)
    y = latent @ C + d + 0.05 * torch.randn(num_sequences, T, 7, generator=gen)
    lengths = torch.randint(min_len, max_len + 1, (num_sequences,), generator=gen)
    keep = torch.arange(T) < lengths[:, None]
    np.savez(path, points=y[keep].numpy().astype(np.float32), lengths=lengths.numpy(),
             labels=states[keep].numpy(), label_names=np.array(REGIMES),
             channel_names=np.array([f"sensor {i}" for i in range(7)]),
             sequence_names=np.array([f"recording {i:02d}" for i in range(num_sequences)]))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write vectors.npz, images/ and sequences.npz")
    folder = parser.parse_args(argv).folder
    folder.mkdir(parents=True, exist_ok=True)
    for written in (write_vectors(folder / "vectors.npz"), write_images(folder / "images"),
                    write_sequences(folder / "sequences.npz")):
        print(f"wrote {written}")


if __name__ == "__main__":
    main()
