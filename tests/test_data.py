"""Data loaders: pinwheel, MNIST (generated IDX files and the real test split), splits, seeding, the validation
sets of the generated data sets."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from data_loader.dots import DotVideoDataLoader
from data_loader.mnist import MnistDataLoader, load_mnist_split, read_idx
from data_loader.pinwheel import PinwheelDataLoader, make_pinwheel
from data_loader.switching_dots import SwitchingDotsDataLoader
from tests.conftest import SHARED_MNIST, write_idx
from utils.errors import ConfigError, DataError


def test_pinwheel_matches_its_definition():
    points, labels = make_pinwheel(num_classes=5, points_per_class=200, seed=3)
    assert points.shape == (1000, 2) and labels.shape == (1000,)
    assert torch.equal(torch.bincount(labels), torch.full((5,), 200))
    # undo the map: radius/scale = |f| and the tangential feature is small
    radius = points.double().norm(dim=1) / 10.0
    assert abs(radius.mean() - 1.0) < 0.05
    # y = 10 f @ R(theta) with a row vector f = (f0, ~0) puts arm k at angle -theta,
    # theta = 2 pi k / 5 + 0.25 exp(f0), f0 ~ 1 +- 0.3
    for k in range(5):
        angle = torch.atan2(points[labels == k, 1], points[labels == k, 0]).double()
        expected = -(2 * math.pi * k / 5 + 0.25 * math.e)
        delta = torch.remainder(angle - expected + math.pi, 2 * math.pi) - math.pi
        assert delta.abs().median() < 0.3
    again, _ = make_pinwheel(num_classes=5, points_per_class=200, seed=3)
    assert torch.equal(points, again)
    other, _ = make_pinwheel(num_classes=5, points_per_class=200, seed=4)
    assert not torch.equal(points, other)


def test_pinwheel_loader_splits_and_test_set():
    data = PinwheelDataLoader(batch_size=10, points_per_class=20, validation_split=0.2)
    assert len(data.train_set) == 80 and len(data.val_set) == 20 and len(data.test_set) == 500
    batch = next(iter(data.train_loader(seed=0)))
    assert batch["x"].shape == (10, 2) and batch["y"].dtype == torch.long
    train_x = {tuple(x.tolist()) for x in data.train_set.tensors["x"]}
    assert not train_x & {tuple(x.tolist()) for x in data.val_set.tensors["x"]}


def test_validation_split_never_touches_the_global_rng():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = PinwheelDataLoader(points_per_class=20, validation_split=0.25, split_seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    b = PinwheelDataLoader(points_per_class=20, validation_split=0.25, split_seed=5)
    assert torch.equal(a.val_set.tensors["x"], b.val_set.tensors["x"])


def test_shuffling_depends_on_seed_and_epoch_only():
    data = PinwheelDataLoader(batch_size=100, points_per_class=20)
    loader = data.train_loader(seed=0)

    def order(epoch: int) -> torch.Tensor:
        loader.sampler.set_epoch(epoch)
        return torch.cat([b["y"] * 0 + b["x"][:, 0] for b in loader])

    first = order(0)
    torch.manual_seed(999)
    assert torch.equal(order(0), first)
    assert not torch.equal(order(1), first)


#: the generated data sets, small: id -> (loader, arguments, the key of the validation set's size, that size,
#: the examples it makes)
GENERATED = {
    "pinwheel": (PinwheelDataLoader, dict(points_per_class=20, test_points_per_class=10),
                 "val_points_per_class", 4, 20),
    "video": (DotVideoDataLoader, dict(num_frames=200, duration=20.0, chunk_len=10, test_frames=40),
              "num_val_sequences", 3, 3),
    "sequences": (DotVideoDataLoader, dict(mode="sequences", num_sequences=30, num_test_sequences=7, chunk_len=12,
                                           min_len=6, flip_prob=0.1), "num_val_sequences", 5, 5),
    "switching": (SwitchingDotsDataLoader, dict(num_sequences=6, num_test_sequences=2, chunk_len=12),
                  "num_val_sequences", 3, 3),
}


def rows(tensor: torch.Tensor) -> set[tuple]:
    """The examples of `tensor` (N, ...) as a set of flat tuples."""
    return {tuple(row.tolist()) for row in tensor.flatten(1)}


@pytest.mark.parametrize("name", GENERATED)
def test_generated_validation_set_is_drawn_with_its_own_seed(name):
    loader, args, size_key, size, examples = GENERATED[name]
    data = loader(**args, **{size_key: size})
    assert data.validation_split == 0 and len(data.val_set) == examples
    val = data.val_set.tensors
    assert val.keys() == data.train_set.tensors.keys()
    assert not rows(val["x"]) & (rows(data.train_set.tensors["x"]) | rows(data.test_set.tensors["x"]))
    again = loader(**args, **{size_key: size}).val_set.tensors
    assert all(torch.equal(value, again[key]) for key, value in val.items()), "reproducible"
    other = loader(**args, **{size_key: size}, val_seed=7).val_set.tensors
    assert not torch.equal(val["x"], other["x"]), "drawn with val_seed"
    assert f"validation: {examples} examples, " in "\n".join(data.describe())
    assert "val_seed 2" in "\n".join(data.describe())


@pytest.mark.parametrize("name", GENERATED)
def test_asking_for_a_validation_set_leaves_training_and_test_sets_unchanged(name):
    loader, args, size_key, size, _ = GENERATED[name]
    without, with_val = loader(**args), loader(**args, **{size_key: size})
    assert without.val_set is None
    for split in ("train_set", "test_set"):
        before, after = getattr(without, split).tensors, getattr(with_val, split).tensors
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), split


@pytest.mark.parametrize("name", GENERATED)
def test_validation_split_with_a_generated_validation_set_is_a_config_error(name):
    loader, args, size_key, size, _ = GENERATED[name]
    with pytest.raises(ConfigError) as info:
        loader(**args, **{size_key: size}, validation_split=0.2)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and f"'data_loader.args.{size_key}' ({size})" in message
    assert "'data_loader.args.validation_split' (0.2)" in message
    for seed_key in ("data_seed", "test_seed"):
        with pytest.raises(ConfigError, match=f"'data_loader.args.val_seed' \\(5\\) equals '{seed_key}'"):
            loader(**args, **{size_key: size, "val_seed": 5, seed_key: 5})
    with pytest.raises(ConfigError, match=f"'data_loader.args.{size_key}' must be >= 0"):
        loader(**args, **{size_key: -1})
    split = loader(**args, validation_split=2)  # without a generated set, validation_split works as before
    assert len(split.val_set) == 2 and "held out of the training set (validation_split 2" in "\n".join(split.describe())


def test_read_idx_plain_and_gzip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte", "b-idx3-ubyte.gz"):
        write_idx(tmp_path / name, array)
        assert torch.equal(read_idx(tmp_path / name), torch.from_numpy(array))
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x03\x00")
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(tmp_path / "bad")


def test_mnist_from_generated_idx_files(mnist_root):
    data = MnistDataLoader(root=str(mnist_root), download=False, batch_size=8, validation_split=10)
    assert len(data.train_set) == 50 and len(data.val_set) == 10 and len(data.test_set) == 30
    batch = next(iter(data.train_loader(seed=0)))
    assert batch["x"].shape == (8, 1, 28, 28)
    assert set(batch["x"].unique().tolist()) <= {0.0, 1.0}
    images, labels = load_mnist_split(mnist_root, "test", download=False)
    assert images.shape == (30, 28, 28) and labels.dtype == torch.long


def test_dynamic_binarisation_is_fresh_and_reproducible(mnist_root):
    def draws(seed: int, epoch: int, workers: int = 0) -> torch.Tensor:
        data = MnistDataLoader(root=str(mnist_root), download=False, batch_size=60, shuffle=False,
                               num_workers=workers)
        loader = data.train_loader(seed=seed)
        loader.dataset.set_epoch(epoch)
        return next(iter(loader))["x"]

    a = draws(0, 0)
    assert torch.equal(a, draws(0, 0)), "same seed and epoch: same binarisation"
    assert not torch.equal(a, draws(0, 1)), "a new epoch draws fresh pixels"
    assert not torch.equal(a, draws(1, 0)), "another seed draws other pixels"
    assert torch.equal(draws(0, 0, workers=1), draws(0, 0, workers=1)), "reproducible with workers"
    # the mean of the draws estimates the intensity
    images, _ = load_mnist_split(mnist_root, "train", download=False)
    mean = torch.stack([draws(0, e) for e in range(40)]).mean(0)
    assert (mean - images.unsqueeze(1).float() / 255).abs().mean() < 0.06


def test_test_set_binarisation_is_fixed(mnist_root):
    a = MnistDataLoader(root=str(mnist_root), download=False)
    b = MnistDataLoader(root=str(mnist_root), download=False)
    assert torch.equal(a.test_set.tensors["x"], b.test_set.tensors["x"])
    assert set(a.test_set.tensors["x"].unique().tolist()) == {0.0, 1.0}


def test_mnist_index_ranges(mnist_root):
    data = MnistDataLoader(root=str(mnist_root), download=False, train_split="test", train_range=[0, 20],
                           test_range=[20, 30])
    assert len(data.train_set) == 20 and len(data.test_set) == 10
    with pytest.raises(DataError, match="train_range"):
        MnistDataLoader(root=str(mnist_root), download=False, train_range=[0, 1000])


def test_missing_mnist_offline_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as info:
        MnistDataLoader(root=str(tmp_path / "nothing"), download=False)
    message = str(info.value)
    assert str(tmp_path / "nothing" / "MNIST" / "raw") in message and "download=true" in message


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError, match="downloading it failed .*no network.*Copy the IDX files"):
        MnistDataLoader(root=str(tmp_path), download=True)


@pytest.mark.skipif(not (SHARED_MNIST / "MNIST" / "raw").is_dir(),
                    reason="../shared/data/MNIST/raw is not present on this machine")
def test_real_mnist_test_split_loads_through_the_same_code():
    data = MnistDataLoader(root=str(SHARED_MNIST), download=False, train_split="test", train_range=[0, 9000],
                           test_range=[9000, 10000], batch_size=128)
    assert len(data.train_set) == 9000 and len(data.test_set) == 1000
    images, labels = load_mnist_split(SHARED_MNIST, "test", download=False)
    assert images.shape == (10000, 28, 28) and torch.equal(torch.bincount(labels)[:2], torch.tensor([980, 1135]))
    assert 0.12 < data.test_set.tensors["x"].mean() < 0.15  # about 13% of MNIST pixels are on
