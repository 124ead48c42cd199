"""Pen-stroke loader: validation of the file, held-out drawings, normalisation, windows, batches, config."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_loader import DATA_LOADERS
from data_loader.strokes import PenStrokesDataLoader, cut_windows
from trainer.components import build_data, load_and_check
from utils.errors import ConfigError, DataError

T, MIN = 8, 3  # window_len, min_window_len used by most tests


def make_drawings(n: int = 12, seed: int = 0, scale: float = 1.0) -> list[np.ndarray]:
    """`n` drawings of 5..40 points: random offsets, random pen lifts, the last point lifted."""
    rng = np.random.default_rng(seed)
    drawings = []
    for length in rng.integers(5, 41, n):
        drawing = np.empty((length, 3))
        drawing[:, 0] = rng.random(length) < 0.2
        drawing[-1, 0] = 1.0
        drawing[:, 1:] = scale * rng.normal([2.0, -1.0], [3.0, 0.5], (length, 2))
        drawings.append(drawing)
    return drawings


def save(path: Path, drawings: list) -> str:
    arr = np.empty(len(drawings), dtype=object)
    for i, drawing in enumerate(drawings):
        arr[i] = drawing
    np.save(path, arr)
    return str(path)


@pytest.fixture
def strokes(tmp_path: Path) -> tuple[str, list[np.ndarray]]:
    drawings = make_drawings()
    return save(tmp_path / "strokes.npy", drawings), drawings


def load(path: str, **args) -> PenStrokesDataLoader:
    return PenStrokesDataLoader(**{"path": path, "window_len": T, "min_window_len": MIN,
                                   "test_fraction": 0.25, "batch_size": 5, **args})


def check_windows(data: PenStrokesDataLoader, dataset, drawings: list[np.ndarray],
                  min_len: int = MIN) -> list[int]:
    """Assert that `dataset`'s windows are `drawings` cut in order, each point once; returns dropped tails."""
    x, mask = dataset.tensors["x"], dataset.tensors["mask"]
    assert x.dtype == torch.float32 and mask.dtype == torch.bool and x.shape == (len(mask), T, 3)
    lengths = mask.sum(1)
    assert torch.equal(mask, torch.arange(T) < lengths[:, None]), "mask is a prefix of Trues"
    assert torch.all(x[~mask] == 0), "padding is exactly zero"
    assert torch.all(lengths >= min_len)
    x = x.double()
    x[..., 1:] = x[..., 1:] * data.offset_std.double() + data.offset_mean.double()
    start, dropped = 0, []
    for drawing in drawings:
        tail_kept = len(drawing) % T >= min_len
        count = len(drawing) // T + tail_kept
        kept = len(drawing) if tail_kept else len(drawing) // T * T
        points = x[start: start + count][mask[start: start + count]].numpy()
        np.testing.assert_allclose(points, drawing[:kept], atol=1e-5)
        assert np.array_equal(points[:, 0], drawing[:kept, 0])
        dropped.append(len(drawing) - kept)
        start += count
    assert start == len(x), "no window left over"
    return dropped


def test_windows_reconstruct_train_and_held_out_drawings(strokes):
    path, drawings = strokes
    data = load(path)
    held_out = data.test_drawings.tolist()
    assert len(held_out) == 3 and data.data_shape == (T, 3)
    train = [d for i, d in enumerate(drawings) if i not in held_out]
    dropped = check_windows(data, data.train_set, train)
    check_windows(data, data.test_set, [drawings[i] for i in held_out])
    assert all(0 <= n < MIN for n in dropped) and any(n > 0 for n in dropped), "short tails are dropped"
    assert (data.train_set.tensors["mask"].sum(1) < T).any(), "partial windows are kept, padded"


def test_cut_windows_small_case():
    drawing = torch.arange(11.0).repeat(3, 1).T  # (11, 3)
    x, mask = cut_windows([drawing, drawing[:2]], window_len=4, min_window_len=3)
    assert x.shape == (3, 4, 3) and mask.sum().item() == 11  # 4 + 4 + 3; the 2-point drawing is dropped
    assert torch.equal(x[2, :, 0], torch.tensor([8.0, 9.0, 10.0, 0.0]))
    x, mask = cut_windows([drawing], window_len=4, min_window_len=4)
    assert x.shape == (2, 4, 3) and mask.all()


def test_normalisation_uses_training_drawings_only(tmp_path, strokes):
    path, drawings = strokes
    test_a = save(tmp_path / "a.npy", make_drawings(4, seed=1))
    test_b = save(tmp_path / "b.npy", make_drawings(5, seed=2, scale=100.0))
    a = load(path, test_path=test_a, min_window_len=1)
    b = load(path, test_path=test_b, min_window_len=1)
    offsets = np.concatenate(drawings)[:, 1:]
    np.testing.assert_allclose(a.offset_mean.numpy(), offsets.mean(0), rtol=1e-6)
    np.testing.assert_allclose(a.offset_std.numpy(), offsets.std(0), rtol=1e-6)
    assert a.offset_mean.shape == (2,) and a.offset_mean.dtype == torch.float32
    assert torch.equal(a.offset_mean, b.offset_mean) and torch.equal(a.offset_std, b.offset_std)
    assert torch.equal(a.train_set.tensors["x"], b.train_set.tensors["x"])
    assert len(a.test_drawings) == 0
    assert a.test_set.tensors["mask"].sum() == sum(len(d) for d in make_drawings(4, seed=1))
    normalised = a.train_set.tensors["x"][a.train_set.tensors["mask"]][:, 1:].double()  # every point kept
    assert torch.allclose(normalised.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(normalised.std(0, unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-5)
    check_windows(b, b.test_set, make_drawings(5, seed=2, scale=100.0), min_len=1)  # test set uses the training stats


def test_held_out_drawings_do_not_change_the_statistics(tmp_path, strokes):
    path, drawings = strokes
    a = load(path)
    changed = [d.copy() for d in drawings]
    for i in a.test_drawings.tolist():
        changed[i][:, 1:] *= 1000.0
    b = load(save(tmp_path / "changed.npy", changed))
    assert torch.equal(a.test_drawings, b.test_drawings)
    assert torch.equal(a.offset_mean, b.offset_mean) and torch.equal(a.offset_std, b.offset_std)
    assert torch.equal(a.train_set.tensors["x"], b.train_set.tensors["x"])
    assert not torch.equal(a.test_set.tensors["x"], b.test_set.tensors["x"])
    train = np.concatenate([d for i, d in enumerate(drawings) if i not in a.test_drawings.tolist()])
    np.testing.assert_allclose(a.offset_std.numpy(), train[:, 1:].std(0), rtol=1e-6)


def test_normalize_off_and_constant_channel(tmp_path, strokes):
    path, drawings = strokes
    raw = load(path, normalize=False)
    assert torch.equal(raw.offset_mean, torch.zeros(2)) and torch.equal(raw.offset_std, torch.ones(2))
    check_windows(raw, raw.train_set, [d for i, d in enumerate(drawings) if i not in raw.test_drawings.tolist()])
    flat = [d.copy() for d in drawings]
    for d in flat:
        d[:, 2] = 0.5
    data = load(save(tmp_path / "flat.npy", flat))
    assert data.offset_std[1] == 1.0 and torch.isfinite(data.train_set.tensors["x"]).all()


def test_split_depends_on_split_seed_only(strokes):
    path, _ = strokes
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = load(path, split_seed=3)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG is not used"
    torch.manual_seed(123)
    assert torch.equal(load(path, split_seed=3).test_drawings, a.test_drawings)
    assert not torch.equal(load(path, split_seed=4).test_drawings, a.test_drawings)
    assert len(load(path, test_fraction=0.01).test_drawings) == 1, "at least one drawing is held out"


def test_batches_and_validation_split(strokes):
    path, _ = strokes
    data = load(path, batch_size=4, validation_split=0.2)
    n_train, n_val = len(data.train_set), len(data.val_set)
    assert n_val == round(0.2 * (n_train + n_val)) and n_train % 4
    batches = list(data.train_loader(seed=0))
    assert all(b["x"].shape == (4, T, 3) and b["x"].dtype == torch.float32 for b in batches[:-1])
    assert all(b["mask"].shape == (4, T) and b["mask"].dtype == torch.bool for b in batches[:-1])
    assert batches[-1]["x"].shape == (n_train % 4, T, 3) and batches[-1]["mask"].shape == (n_train % 4, T)
    assert sum(b["mask"].sum() for b in batches) == data.train_set.tensors["mask"].sum()
    assert next(iter(data.test_loader()))["x"].shape[1:] == (T, 3)


def test_built_from_a_config(strokes, regression_config):
    path, _ = strokes
    args = {"path": path, "window_len": T, "batch_size": 4}
    config = load_and_check(base={**regression_config, "data_loader": {"type": "PenStrokes", "args": args}})
    data = build_data(config)
    assert isinstance(data, PenStrokesDataLoader) and data.data_shape == (T, 3) and data.batch_size == 4
    with pytest.raises(ConfigError, match="data_loader.args.window_len' must be int"):
        DATA_LOADERS.build({"type": "PenStrokes", "args": {**args, "window_len": "8"}}, "data_loader")
    with pytest.raises(ConfigError, match="misses required argument.*path"):
        DATA_LOADERS.build({"type": "PenStrokes", "args": {"window_len": T}}, "data_loader")


@pytest.mark.parametrize("content, match", [
    (np.zeros((4, 5, 3)), "must hold a 1-D object array.*float64"),
    (np.empty((2, 2), dtype=object), "must hold a 1-D object array"),
    ([], "holds no drawings"),
    ([np.zeros((5, 3)), np.zeros((5, 2))], r"drawing 1 has shape \(5, 2\), expected \(L, 3\)"),
    ([np.zeros((0, 3))], r"drawing 0 has shape \(0, 3\)"),
    ([np.zeros(6)], r"drawing 0 has shape \(6,\)"),
    ([np.array([[0.0, 1, 1], [2.0, 1, 1]])], "drawing 0 has pen_lift values other than 0 and 1"),
    ([np.zeros((3, 3)), np.array([[1.0, np.nan, 0.0]])], "drawing 1 has non-finite"),
    ([np.array([[1.0, np.inf, 0.0]])], "drawing 0 has non-finite"),
])
def test_malformed_files_are_data_errors(tmp_path, content, match):
    path = tmp_path / "bad.npy"
    if isinstance(content, np.ndarray):
        np.save(path, content, allow_pickle=True)
    else:
        save(path, content)
    with pytest.raises(DataError, match=match) as info:
        load(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_files_name_the_file_and_key(tmp_path, strokes):
    path, _ = strokes
    with pytest.raises(DataError, match=r"nothing\.npy \(data_loader\.args\.path\) not found; point"):
        load(str(tmp_path / "nothing.npy"))
    with pytest.raises(DataError, match=r"gone\.npy \(data_loader\.args\.test_path\) not found"):
        load(path, test_path=str(tmp_path / "gone.npy"))


@pytest.mark.parametrize("args, match", [
    ({"window_len": 1, "min_window_len": 1}, "'data_loader.args.window_len' must be >= 2"),
    ({"min_window_len": 0}, "'data_loader.args.min_window_len' must be in"),
    ({"min_window_len": T + 1}, "'data_loader.args.min_window_len' must be in"),
    ({"test_fraction": 0.0}, "'data_loader.args.test_fraction' must be in"),
    ({"test_fraction": 1.0}, "'data_loader.args.test_fraction' must be in"),
    ({"test_fraction": 0.97}, "'data_loader.args.test_fraction' .* leaving none to train on"),
    ({"window_len": 64, "min_window_len": 64}, "no training window.*'data_loader.args.min_window_len'"),
])
def test_bad_arguments_are_config_errors(strokes, args, match):
    with pytest.raises(ConfigError, match=match):
        load(strokes[0], **args)


def test_a_single_drawing_leaves_nothing_to_train_on(tmp_path):
    path = save(tmp_path / "one.npy", make_drawings(1))
    with pytest.raises(ConfigError, match="holds out 1 of the 1 drawings"):
        load(path)
    assert len(load(path, test_path=path).train_set) > 0


def save_npz(path: Path, drawings: list[np.ndarray]) -> str:
    np.savez(path, points=np.concatenate(drawings), lengths=[len(d) for d in drawings])
    return str(path)


def test_npz_and_object_array_give_the_same_data_set(tmp_path, strokes):
    path, drawings = strokes
    from_npy = load(path)
    from_npz = load(save_npz(tmp_path / "strokes.npz", drawings))
    for name in ("train_set", "test_set"):
        a, b = getattr(from_npy, name).tensors, getattr(from_npz, name).tensors
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["mask"], b["mask"])
    assert torch.equal(from_npy.offset_mean, from_npz.offset_mean)
    assert torch.equal(from_npy.test_drawings, from_npz.test_drawings)
    check_windows(from_npz, from_npz.train_set,
                  [d for i, d in enumerate(drawings) if i not in set(from_npz.test_drawings.tolist())])


def test_npz_reads_integer_offsets_of_any_width(tmp_path):
    drawings = [np.array([[0, 3, -2], [1, 1, 1]], dtype=np.int16), np.array([[1, -5, 4]], dtype=np.int16)]
    data = load(save_npz(tmp_path / "int.npz", drawings), test_path=save_npz(tmp_path / "int_test.npz", drawings),
                normalize=False, min_window_len=1)
    check_windows(data, data.train_set, [d.astype(np.float64) for d in drawings], min_len=1)


@pytest.mark.parametrize("arrays, match", [
    ({"points": np.zeros((5, 3))}, r"has no lengths array \(it holds \['points'\]\)"),
    ({"lengths": np.array([5])}, "has no points array"),
    ({"points": np.zeros((5, 2)), "lengths": np.array([5])}, r"points has shape \(5, 2\)"),
    ({"points": np.zeros((5, 3)), "lengths": np.array([2.0, 3.0])}, "lengths must be a 1-D integer array"),
    ({"points": np.zeros((5, 3)), "lengths": np.array([2, 2])}, "sum to the 5 rows of points, got min 2 and sum 4"),
    ({"points": np.zeros((5, 3)), "lengths": np.array([5, 0])}, "lengths must be >= 1"),
    ({"points": np.zeros((0, 3)), "lengths": np.zeros(0, dtype=int)}, "holds no drawings"),
    ({"points": np.full((2, 3), 0.5), "lengths": np.array([2])}, "drawing 0 has pen_lift values other than 0 and 1"),
])
def test_malformed_npz_files_are_data_errors(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match) as info:
        load(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_npz_with_pickled_members_or_other_content_is_refused(tmp_path):
    drawings = np.empty(1, dtype=object)
    drawings[0] = np.zeros((3, 3))
    np.savez(tmp_path / "pickled.npz", points=drawings, lengths=np.array([3]))
    with pytest.raises(DataError, match="Object arrays cannot be loaded when allow_pickle=False"):
        load(str(tmp_path / "pickled.npz"))
    np.save(tmp_path / "array.npy", np.zeros((3, 3)))
    (tmp_path / "array.npy").rename(tmp_path / "renamed.npz")
    with pytest.raises(DataError, match=r"renamed\.npz \(data_loader\.args\.path\) is not an \.npz archive"):
        load(str(tmp_path / "renamed.npz"))
    (tmp_path / "text.npz").write_text("points,lengths\n")
    with pytest.raises(DataError, match=r"cannot read pen-stroke file .*text\.npz"):
        load(str(tmp_path / "text.npz"))
