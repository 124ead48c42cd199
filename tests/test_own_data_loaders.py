"""The loaders of users' own files: Arrays (.npz/.npy), ImageFolder (PNG/JPEG) and Sequences (.npz).

Tiny files under tmp_path: values come back exactly (after the chosen scaling), splits are disjoint
(by whole sequence for Sequences), scaling statistics come from the training split only, and every
kind of bad data is a one-line DataError naming the file and key, raised before anything runs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_loader import DATA_LOADERS
from data_loader.arrays import ArraysDataLoader
from data_loader.files import check_finite
from data_loader.images import ImageFolderDataLoader
from data_loader.sequences import SequencesDataLoader
from tests.conftest import one_line_error, run_cli
from utils.errors import ConfigError, DataError


def batch_of(dataset) -> dict[str, torch.Tensor]:
    """The whole dataset as one batch."""
    return dataset.__getitems__(list(range(len(dataset))))


class Marker:
    """Unpickling this object creates the file `path` (proof that a loader ran pickled code)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def assert_pickle_never_ran(load, saved: Path, marker: Path) -> None:
    """`load()` refuses the object array in `saved` without creating `marker`; the payload itself works."""
    with pytest.raises(DataError, match=r"object array \(pickled Python objects\), which is refused") as err:
        load()
    assert str(saved) in str(err.value)
    assert not marker.exists()
    np.load(saved, allow_pickle=True)  # the payload does run when pickles are allowed
    assert marker.exists()


# ---------------------------------------------------------------- Arrays


def write_xy(path: Path, n: int = 40, d: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x (n, d) float64 with distinct scales per feature, y = arange(n) (each row's id)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.arange(1, d + 1) + np.arange(d) * 10
    y = np.arange(n)
    np.savez(path, x=x, y=y)
    return x, y


def test_arrays_standardize_uses_the_training_split_only(tmp_path):
    x, _ = write_xy(tmp_path / "d.npz")
    data = ArraysDataLoader(str(tmp_path / "d.npz"), batch_size=4, test_fraction=0.25, validation_split=0.2,
                            split_seed=3, scale="standardize")
    train, val, test = (batch_of(s) for s in (data.train_set, data.val_set, data.test_set))
    ids = [b["y"].numpy() for b in (train, val, test)]
    assert [len(i) for i in ids] == [24, 6, 10]
    assert sorted(np.concatenate(ids).tolist()) == list(range(40))  # disjoint and complete
    mean, std = x[ids[0]].mean(0), x[ids[0]].std(0)
    for batch, rows in zip((train, val, test), ids):
        assert batch["x"].dtype == torch.float32 and batch["y"].dtype == torch.int64
        np.testing.assert_allclose(batch["x"].numpy(), (x[rows] - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data.shift.flatten().numpy(), mean)
    assert data.data_shape == (3,) and not data.is_image
    assert data.label_names == tuple(str(i) for i in range(40))
    lines = "\n".join(data.describe())
    assert str(tmp_path / "d.npz") in lines and "scale standardize: mean [" in lines and "(training split)" in lines


def test_arrays_test_path_unit_scaling_and_same_seed_same_split(tmp_path):
    x, _ = write_xy(tmp_path / "train.npz", n=20)
    test_x, _ = write_xy(tmp_path / "test.npz", n=6, seed=1)
    data = ArraysDataLoader(str(tmp_path / "train.npz"), batch_size=2, test_path=str(tmp_path / "test.npz"),
                            validation_split=5, scale="unit")
    rows = batch_of(data.train_set)["y"].numpy()
    low, high = x[rows].min(0), x[rows].max(0)
    assert len(data.test_set) == 6 and len(data.val_set) == 5 and len(rows) == 15
    np.testing.assert_allclose(batch_of(data.test_set)["x"].numpy(), (test_x - low) / (high - low), rtol=1e-5,
                               atol=1e-6)
    again = ArraysDataLoader(str(tmp_path / "train.npz"), batch_size=2, test_path=str(tmp_path / "test.npz"),
                             validation_split=5, scale="unit")
    assert torch.equal(batch_of(again.val_set)["y"], batch_of(data.val_set)["y"])


def test_arrays_npy_is_memory_mapped_and_uint8_unit_is_x_over_255(tmp_path, monkeypatch):
    x = np.random.default_rng(0).integers(0, 256, (12, 5, 4), dtype=np.uint8)
    path = tmp_path / "x.npy"
    np.save(path, x)
    os.chmod(path, 0o444)
    calls = []
    real_load = np.load

    def load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", load)
    data = ArraysDataLoader(str(path), batch_size=3, test_fraction=0.25, scale="unit")
    assert calls == [{"mmap_mode": "r", "allow_pickle": False}]
    assert data.data_shape == (1, 5, 4) and data.is_image and data.label_names is None
    train = batch_of(data.train_set)
    assert set(train) == {"x"} and train["x"].shape == (9, 1, 5, 4)
    rows = {x[i].tobytes(): i for i in range(12)}
    for image in train["x"]:
        original = x[rows[(image[0] * 255).round().to(torch.uint8).numpy().tobytes()]]
        assert torch.equal(image[0], torch.from_numpy(original).float() / 255)
    assert "x / 255" in "\n".join(data.describe())


def test_arrays_images_standardize_per_channel(tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 2, 3, 3)).astype(np.float32) * [[[5.0]], [[0.1]]]
    np.savez(tmp_path / "d.npz", x=x.astype(np.float32))
    data = ArraysDataLoader(str(tmp_path / "d.npz"), batch_size=2, test_fraction=0.2, scale="standardize")
    train = batch_of(data.train_set)["x"]
    assert data.shift.shape == (1, 2, 1, 1)
    torch.testing.assert_close(train.mean((0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(train.std((0, 2, 3), correction=0), torch.ones(2), atol=1e-5, rtol=0)


def test_arrays_constant_feature_keeps_divisor_one_and_non_finite_first_index_is_global(tmp_path):
    x = np.ones((10, 2), dtype=np.float32) * [[3.0, 0.0]]
    x[:, 1] = np.arange(10)
    np.savez(tmp_path / "d.npz", x=x)
    data = ArraysDataLoader(str(tmp_path / "d.npz"), batch_size=1, scale="standardize")
    assert data.divisor[0, 0] == 1.0 and (batch_of(data.train_set)["x"][:, 0] == 0).all()
    x[7, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(DataError, match=r"has 1 non-finite values .* at index \(7, 1\)"):
        ArraysDataLoader(str(tmp_path / "x.npy"))
    with pytest.raises(DataError, match=r"has 1 non-finite values .* at index \(7, 1\)"):
        check_finite(np.load(tmp_path / "x.npy", mmap_mode="r"), "x", tmp_path / "x.npy", block_bytes=16)


def test_arrays_test_split_keys_are_exclusive(tmp_path):
    write_xy(tmp_path / "d.npz")
    with pytest.raises(ConfigError, match="'data_loader.args.test_path' and 'data_loader.args.test_fraction'"):
        ArraysDataLoader(str(tmp_path / "d.npz"), test_path=str(tmp_path / "d.npz"), test_fraction=0.1)
    data = ArraysDataLoader(str(tmp_path / "d.npz"), batch_size=1)  # neither: test_fraction 0.2
    assert len(data.test_set) == 8
    spec = {"type": "Arrays", "args": {"path": str(tmp_path / "d.npz"), "scale": "zscore"}}
    with pytest.raises(ConfigError, match="scale"):
        DATA_LOADERS.build(spec, "data_loader")


def arrays_case(tmp_path: Path, name: str) -> tuple[Path, dict]:
    """A bad Arrays file (or arguments) named `name`; returns the path and extra loader arguments."""
    path = tmp_path / "d.npz"
    x = np.zeros((20, 3))
    if name == "missing file":
        path = tmp_path / "nowhere.npz"
    elif name == "missing key":
        np.savez(path, a=x)
    elif name == "non-finite":
        x[12, 1] = np.nan
        x[13, 0] = np.inf
        x[19, 2] = -np.inf
        np.savez(path, x=x)
    elif name == "ndim":
        np.savez(path, x=np.zeros(20))
    elif name == "labels":
        np.savez(path, x=x, y=np.zeros(19, dtype=int))
    elif name == "batch size":
        np.savez(path, x=x)
        return path, {"batch_size": 13, "validation_split": 0.25}
    return path, {}


@pytest.mark.parametrize("name, message", [
    ("missing file", r"data file .*nowhere.npz \(data_loader.args.path\S*\) does not exist"),
    ("missing key", r"data file .*d.npz has no key 'x'; it has: a"),
    ("non-finite", r"x in .*d.npz has 3 non-finite values \(NaN or inf\); the first at index \(12, 1\)"),
    ("ndim", r"x in .*d.npz has 1 dimensions \(20,\); expected \(N, D\)"),
    ("labels", r"y in .*d.npz has 19 labels but x has 20 examples"),
    ("batch size", r"d.npz leaves 12 training examples .* fewer than batch_size 13; set data_loader.args.batch_size "
                   r"to 12 or less"),
])
def test_arrays_bad_data_is_one_data_error(tmp_path, name, message):
    path, args = arrays_case(tmp_path, name)
    with pytest.raises(DataError, match=message) as err:
        ArraysDataLoader(str(path), **{"batch_size": 2, **args})
    assert len(str(err.value).splitlines()) == 1


def test_arrays_refuse_object_arrays_without_running_them(tmp_path):
    marker = tmp_path / "ran"
    payload = np.array([Marker(marker), 1], dtype=object)
    npy = tmp_path / "x.npy"
    np.save(npy, payload, allow_pickle=True)
    assert_pickle_never_ran(lambda: ArraysDataLoader(str(npy), batch_size=1), npy, marker)
    marker.unlink()
    npz = tmp_path / "d.npz"
    np.savez(npz, x=np.zeros((4, 2)), y=payload)
    with pytest.raises(DataError, match=r"key 'y' of .*d.npz holds an object array"):
        ArraysDataLoader(str(npz), batch_size=1)
    assert not marker.exists()


@pytest.mark.integration
def test_bad_data_through_the_cli_is_one_line_and_makes_no_run_folder(tmp_path):
    arrays_case(tmp_path, "non-finite")
    np.save(tmp_path / "objects.npy", np.array([Marker(tmp_path / "ran"), 1], dtype=object), allow_pickle=True)
    for path, message in ((tmp_path / "d.npz", "3 non-finite values"), (tmp_path / "objects.npy", "object array")):
        config = {"name": "t", "arch": {"type": "VAE", "args": {"hidden_dims": [8], "latent_dim": 2,
                                                                "likelihood": "gaussian"}},
                  "data_loader": {"type": "Arrays", "args": {"path": str(path), "batch_size": 2}},
                  "trainer": {"epochs": 1, "save_dir": str(tmp_path / "saved"), "verbosity": 0, "tensorboard": False}}
        (tmp_path / "config.json").write_text(json.dumps(config))
        result = run_cli("train.py", "-c", str(tmp_path / "config.json"))
        assert result.returncode == 2, result.stderr
        error = one_line_error(result.stderr)
        assert message in error and str(path) in error
        assert not (tmp_path / "saved").exists() or not any((tmp_path / "saved").iterdir())
    assert not (tmp_path / "ran").exists()


# ---------------------------------------------------------------- ImageFolder


def write_images(root: Path, classes: dict[str, int], shape=(6, 5, 3), seed: int = 0) -> dict[str, list[np.ndarray]]:
    """PNG images (shape H, W, 3 uint8) in class folders (or directly in `root` for the class "")."""
    rng = np.random.default_rng(seed)
    written = {}
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        written[name] = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]
        for i, image in enumerate(written[name]):
            Image.fromarray(image).save(root / name / f"img{i}.{'PNG' if i % 2 else 'png'}")
    return written


def test_image_folder_classes_values_and_test_path(tmp_path):
    train = write_images(tmp_path / "train", {"cat": 3, "dog": 4})
    test = write_images(tmp_path / "test", {"dog": 2}, seed=1)
    data = ImageFolderDataLoader(str(tmp_path / "train"), batch_size=7, test_path=str(tmp_path / "test"))
    assert data.label_names == ("cat", "dog") and data.data_shape == (3, 6, 5) and data.is_image
    batch = batch_of(data.train_set)
    expected = np.stack(train["cat"] + train["dog"]).transpose(0, 3, 1, 2) / 255.0
    torch.testing.assert_close(batch["x"], torch.from_numpy(expected).float())
    assert batch["y"].tolist() == [0, 0, 0, 1, 1, 1, 1]
    test_batch = batch_of(data.test_set)
    assert test_batch["y"].tolist() == [1, 1]
    expected = np.stack(test["dog"]).transpose(0, 3, 1, 2) / 255.0
    torch.testing.assert_close(test_batch["x"], torch.from_numpy(expected).float())


def test_image_folder_gray_resize_no_classes_and_disjoint_split(tmp_path):
    images = write_images(tmp_path / "flat", {"": 10})[""]
    data = ImageFolderDataLoader(str(tmp_path / "flat"), batch_size=2, channels=1, size=[4, 3], test_fraction=0.3,
                                 validation_split=2)
    assert data.label_names is None and data.data_shape == (1, 4, 3)
    batches = [batch_of(s)["x"] for s in (data.train_set, data.val_set, data.test_set)]
    assert set(batch_of(data.train_set)) == {"x"}
    assert [len(b) for b in batches] == [5, 2, 3]
    expected = {np.asarray(Image.fromarray(i).convert("L").resize((3, 4), Image.BILINEAR)).tobytes() for i in images}
    seen = [(x[0] * 255).round().to(torch.uint8).numpy().tobytes() for b in batches for x in b]
    assert set(seen) == expected and len(seen) == 10  # every image once, in exactly one split


def test_image_folder_dynamic_binarization(tmp_path):
    write_images(tmp_path / "img", {"a": 6, "b": 6})
    data = ImageFolderDataLoader(str(tmp_path / "img"), batch_size=2, binarize="dynamic", validation_split=2)
    first, second = (batch_of(data.train_set)["x"] for _ in range(2))
    assert set(first.unique().tolist()) <= {0.0, 1.0} and not torch.equal(first, second)
    assert torch.equal(batch_of(data.val_set)["x"], batch_of(data.val_set)["x"])
    assert set(batch_of(data.test_set)["x"].unique().tolist()) <= {0.0, 1.0}


def test_image_folder_bad_data(tmp_path):
    with pytest.raises(DataError, match=r"folder .*nothere \(data_loader.args.path\S*\) does not exist"):
        ImageFolderDataLoader(str(tmp_path / "nothere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"folder .*empty has no images"):
        ImageFolderDataLoader(str(tmp_path / "empty"))
    write_images(tmp_path / "broken", {"a": 3})
    (tmp_path / "broken" / "a" / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"image .*broken/a/bad.jpg does not decode"):
        ImageFolderDataLoader(str(tmp_path / "broken"))
    write_images(tmp_path / "sizes", {"a": 2})
    Image.fromarray(np.zeros((7, 7, 3), dtype=np.uint8)).save(tmp_path / "sizes" / "a" / "z.png")
    with pytest.raises(DataError, match=r"image .*sizes/a/z.png is 7x7 but .*img0.png is 6x5; set data_loader.args"):
        ImageFolderDataLoader(str(tmp_path / "sizes"))
    assert ImageFolderDataLoader(str(tmp_path / "sizes"), batch_size=1, size=[7, 7]).data_shape == (3, 7, 7)
    with pytest.raises(DataError, match=r"sizes leaves 2 training images .* fewer than batch_size 3"):
        ImageFolderDataLoader(str(tmp_path / "sizes"), batch_size=3, size=[7, 7])


# ---------------------------------------------------------------- Sequences

LENGTHS = [5, 8, 3, 6, 7, 4, 9, 5]


def write_sequences(path: Path, lengths=LENGTHS, d: int = 2, **extra) -> dict[str, np.ndarray]:
    """float32 frames with distinct values: points[i] = (i, 2 i + i * i / 7, ...); labels i % 3."""
    total = sum(lengths)
    frame = np.arange(total, dtype=np.float64)
    points = np.stack([frame * (c + 1) + (frame ** 2 / 7 if c else 0) for c in range(d)], axis=1).astype(np.float32)
    arrays = dict(points=points, lengths=np.array(lengths), labels=np.arange(total) % 3, **extra)
    np.savez(path, **arrays)
    return arrays


def sequence_frames(arrays: dict, s: int) -> np.ndarray:
    offsets = np.concatenate([[0], np.cumsum(arrays["lengths"])])
    return arrays["points"][offsets[s]: offsets[s + 1]]


def test_sequences_whole_padded_values_masks_and_labels(tmp_path):
    arrays = write_sequences(tmp_path / "s.npz", label_names=np.array(["rest", "walk", "run"]),
                             channel_names=np.array(["u", "v"]),
                             sequence_names=np.array([f"s{i}" for i in range(8)]))
    data = SequencesDataLoader(str(tmp_path / "s.npz"), batch_size=2, window=None, test_sequences=[1, 6])
    assert data.data_shape == (9, 2)  # the longest sequence over all splits (a test one)
    assert data.label_names == ("rest", "walk", "run") and data.channel_names == ("u", "v")
    assert data.sequence_names[3] == "s3" and data.test_sequences.tolist() == [1, 6]
    for dataset in (data.train_set, data.test_set):
        batch = batch_of(dataset)
        lengths = torch.tensor(LENGTHS)[batch["sequence"]]
        assert torch.equal(batch["mask"].sum(1), lengths) and batch["mask"].dtype == torch.bool
        for b, s in enumerate(batch["sequence"].tolist()):
            length = LENGTHS[s]
            np.testing.assert_array_equal(batch["x"][b, :length].numpy(), sequence_frames(arrays, s))
            assert (batch["x"][b, length:] == 0).all() and (batch["labels"][b, length:] == -1).all()
            assert (batch["labels"][b, :length] >= 0).all()
    assert set(batch_of(data.test_set)["sequence"].tolist()) == {1, 6}
    assert data.frames_per_example == pytest.approx(np.mean([LENGTHS[i] for i in (0, 2, 3, 4, 5, 7)]))
    assert data.fields == ("x", "mask", "labels", "sequence", "start")
    lines = "\n".join(data.describe())
    assert "sequences: train 6, test 2" in lines and "lengths: min 3, median 5, max 9" in lines
    assert "labels (3): rest, walk, run" in lines and "padded to 9 frames" in lines


def test_sequences_test_on_all_trains_and_tests_on_every_sequence_and_tests_whole(tmp_path):
    """The unsupervised-segmentation protocol: every sequence in both splits, scaled with all frames; windows for
    training, whole padded sequences (every frame once) for testing."""
    arrays = write_sequences(tmp_path / "s.npz")
    data = SequencesDataLoader(str(tmp_path / "s.npz"), batch_size=2, window=3, stride=1, test_sequences="all",
                               test_whole_sequences=True, scale="standardize", frame_rate=10.0)
    assert data.train_sequences.tolist() == data.test_sequences.tolist() == list(range(8))
    assert data.data_shape == (3, 2) and data.frame_rate == 10.0
    np.testing.assert_allclose(data.shift.numpy()[0], arrays["points"].astype(np.float64).mean(0))
    test = batch_of(data.test_set)
    assert test["x"].shape == (8, 9, 2) and test["sequence"].tolist() == list(range(8))
    assert torch.equal(test["mask"].sum(1), torch.tensor(LENGTHS))  # every frame of every sequence, once
    assert len(data.train_set) == sum(length - 2 for length in LENGTHS)  # windows of 3, stride 1
    lines = "\n".join(data.describe())
    assert "test (every sequence, trained on too) 8" in lines
    assert "window 3, stride 1; test: whole sequences padded to 9 frames" in lines
    with pytest.raises(ValueError, match="test_sequences must be a list of sequence indices or 'all'"):
        SequencesDataLoader(str(tmp_path / "s.npz"), batch_size=2, test_sequences="every")
    with pytest.raises(ValueError, match="frame_rate must be > 0"):
        SequencesDataLoader(str(tmp_path / "s.npz"), batch_size=2, test_sequences="all", frame_rate=0.0)


def test_sequences_windows_never_cross_sequences(tmp_path):
    arrays = write_sequences(tmp_path / "s.npz")
    data = SequencesDataLoader(str(tmp_path / "s.npz"), batch_size=2, window=3, stride=2, test_fraction=0.25)
    offsets = np.concatenate([[0], np.cumsum(LENGTHS)])
    for dataset in (data.train_set, data.test_set):
        batch = batch_of(dataset)
        assert batch["x"].shape[1:] == (3, 2) and batch["mask"].all()
        for s in batch["sequence"].unique().tolist():
            starts = batch["start"][batch["sequence"] == s].tolist()
            assert starts == list(range(0, LENGTHS[s] - 3 + 1, 2))
        for x, labels, s, start in zip(batch["x"], batch["labels"], batch["sequence"], batch["start"]):
            assert start + 3 <= LENGTHS[s]
            first = offsets[s] + start
            np.testing.assert_array_equal(x.numpy(), arrays["points"][first: first + 3])
            np.testing.assert_array_equal(labels.numpy(), arrays["labels"][first: first + 3])
    assert data.frames_per_example == 3.0 and data.data_shape == (3, 2)
    assert set(data.train_set.tensors) == {"sequence", "start"}  # windows are indices into one shared frame tensor
    assert data.train_set.points is data.test_set.points
    assert "window 3, stride 2" in "\n".join(data.describe())


def test_sequences_splits_are_by_whole_sequence(tmp_path):
    arrays = write_sequences(tmp_path / "s.npz", lengths=[6] * 20)
    data = SequencesDataLoader(str(tmp_path / "s.npz"), batch_size=2, window=4, stride=1, test_fraction=0.2,
                               validation_split=0.25, split_seed=7)
    ids = [set(batch_of(s)["sequence"].tolist()) for s in (data.train_set, data.val_set, data.test_set)]
    assert [len(i) for i in ids] == [12, 4, 4]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    assert ids[0] | ids[1] | ids[2] == set(range(20))
    held_out = {v for s in ids[1] | ids[2] for v in sequence_frames(arrays, s)[:, 0].tolist()}
    for batch in data.train_loader(seed=0):  # no frame of a test or validation sequence is trained on
        assert not set(batch["x"][..., 0].flatten().tolist()) & held_out
    other = SequencesDataLoader(str(tmp_path / "s.npz"), batch_size=2, window=4, test_fraction=0.2,
                                validation_split=0.25, split_seed=8)
    assert set(other.test_sequences.tolist()) != ids[2] or set(other.val_sequences.tolist()) != ids[1]


@pytest.mark.parametrize("scale", ["standardize", "unit"])
def test_sequences_scaling_uses_training_frames_only(tmp_path, scale):
    arrays = write_sequences(tmp_path / "s.npz")
    data = SequencesDataLoader(str(tmp_path / "s.npz"), batch_size=1, window=None, test_sequences=[6],
                               validation_split=2, scale=scale)
    train = data.train_sequences.tolist()
    assert len(train) == 5 and 6 not in train and not set(train) & set(data.val_sequences.tolist())
    frames = np.concatenate([sequence_frames(arrays, s) for s in train])
    if scale == "standardize":
        shift, divisor = frames.mean(0), frames.std(0)
    else:
        shift, divisor = frames.min(0), frames.max(0) - frames.min(0)
    np.testing.assert_allclose(data.shift.flatten().numpy(), shift)
    np.testing.assert_allclose(data.divisor.flatten().numpy(), divisor)
    test = batch_of(data.test_set)
    np.testing.assert_allclose(test["x"][0].numpy(), (sequence_frames(arrays, 6) - shift) / divisor, rtol=1e-5)
    assert f"scale {scale}:" in "\n".join(data.describe())


def test_sequences_from_a_config_and_through_a_dataloader(tmp_path):
    write_sequences(tmp_path / "s.npz")
    spec = {"type": "Sequences", "args": {"path": str(tmp_path / "s.npz"), "window": None, "batch_size": 3,
                                          "test_sequences": [0], "scale": "standardize", "num_workers": 0}}
    data = DATA_LOADERS.build(spec, "data_loader")
    batches = list(data.train_loader(seed=0))
    assert sum(len(b["x"]) for b in batches) == 7 and batches[0]["x"].shape == (3, 9, 2)
    assert len(batch_of(data.train_set)["x"]) == len(data.train_set)
    with pytest.raises(ConfigError, match="'data_loader.args.test_sequences' and 'data_loader.args.test_fraction'"):
        DATA_LOADERS.build({**spec, "args": {**spec["args"], "test_fraction": 0.5}}, "data_loader")


def sequences_case(path: Path, name: str) -> dict:
    """Write a bad sequences file `name` at `path`; returns extra loader arguments."""
    lengths, points, labels = np.array([4, 5, 6]), np.zeros((15, 2)), np.zeros(15, dtype=int)
    arrays = dict(points=points, lengths=lengths, labels=labels)
    if name == "missing key":
        del arrays["lengths"]
    elif name == "sum":
        arrays["lengths"] = np.array([4, 5, 7])
    elif name == "zero length":
        arrays["lengths"] = np.array([4, 0, 11])
    elif name == "labels":
        arrays["labels"] = np.zeros(14, dtype=int)
    elif name == "non-finite":
        points[7, 1] = np.nan
    elif name == "ndim":
        arrays["points"] = np.zeros(15)
    elif name == "object":
        arrays["label_names"] = np.array(["a", 1], dtype=object)
    np.savez(path, **arrays)
    return {"window": 5} if name == "short" else {"test_sequences": [3]} if name == "test index" else \
        {"batch_size": 6, "window": 2} if name == "batch size" else {}


@pytest.mark.parametrize("name, message", [
    ("missing key", r"data file .*s.npz has no key 'lengths'; it has: points, labels"),
    ("sum", r"lengths in .*s.npz sum to 16 but points has 15 frames"),
    ("zero length", r"lengths in .*s.npz has a zero-length sequence at index 1"),
    ("short", r"sequence 0 in .*s.npz has 4 frames, fewer than window 5"),
    ("labels", r"labels in .*s.npz has 14 entries but points has 15 frames"),
    ("non-finite", r"points in .*s.npz has 1 non-finite values \(NaN or inf\); the first at index \(7, 1\)"),
    ("ndim", r"points in .*s.npz has 1 dimensions \(15,\); expected \(sum of L, D\)"),
    ("object", r"key 'label_names' of .*s.npz holds an object array \(pickled Python objects\), which is refused"),
    ("test index", r"data_loader.args.test_sequences names sequence 3, but .*s.npz has 3 sequences"),
    ("batch size", r"s.npz leaves 5 training windows .* fewer than batch_size 6; set data_loader.args.batch_size to 5"),
])
def test_sequences_bad_data_is_one_data_error(tmp_path, name, message):
    args = {"batch_size": 1, "test_sequences": [0], **sequences_case(tmp_path / "s.npz", name)}
    with pytest.raises(DataError, match=message) as err:
        SequencesDataLoader(str(tmp_path / "s.npz"), **args)
    assert len(str(err.value).splitlines()) == 1
