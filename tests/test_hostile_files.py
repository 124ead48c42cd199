"""Files a user hands us never run code: pen-stroke .npy files, YAML configs, checkpoints.

Each hostile file, when loaded by an unrestricted reader, would create a marker file; the tests
check that the marker never appears and that the command fails with one line and exit status 2.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from data_loader.safe_npy import UnsafePickleError, load_npy
from tests.conftest import one_line_error, run_cli


class _RunsCommand:
    """Unpickling this calls os.system(command)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def hostile_npy(path: Path, marker: Path) -> Path:
    """An object array of two drawings whose second element runs `touch marker` when unpickled."""
    array = np.empty(2, dtype=object)
    array[0] = np.zeros((4, 3))
    array[1] = _RunsCommand(f"touch {marker}")
    np.save(path, array, allow_pickle=True)
    return path


def failed_with_one_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    return one_line_error(proc.stderr)


def test_the_hostile_npy_would_run_its_command_under_np_load(tmp_path):
    """The threat is real: numpy's unrestricted loader runs the command."""
    marker = tmp_path / "ran"
    np.load(hostile_npy(tmp_path / "evil.npy", marker), allow_pickle=True)
    assert marker.exists()


@pytest.mark.integration
def test_a_hostile_stroke_file_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    evil = hostile_npy(tmp_path / "evil.npy", marker)
    proc = run_cli("train.py", "-c", "configs/recurrent_graph_vae_strokes.yaml", "--set",
                   f"data_loader.args.path={evil}", "--set", f"trainer.save_dir={tmp_path / 'saved'}")
    err = failed_with_one_line(proc)
    assert f"refusing to load pen-stroke file {evil} (data_loader.args.path)" in err
    assert "posix.system" in err or "os.system" in err
    assert not marker.exists(), "the command in the data file ran"
    assert not (tmp_path / "saved").exists(), "a failed start left a run folder"


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_load_npy_reads_object_arrays_of_any_pickle_protocol(tmp_path, protocol):
    """numpy arrays (float, int, float32), nested object arrays and builtin containers come through."""
    array = np.empty(4, dtype=object)
    array[0] = np.arange(6.0).reshape(2, 3)
    array[1] = np.arange(3, dtype=np.int16)
    array[2] = [[0.0, 1.5, -2.0]]
    array[3] = np.float32(2.5)
    path = tmp_path / "ok.npy"
    with open(path, "wb") as f:  # what np.save writes, with the pickle protocol of older or newer numpy
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
        pickle.dump(array, f, protocol=protocol)
    loaded = load_npy(path)
    assert loaded.dtype == object and loaded.shape == (4,)
    np.testing.assert_array_equal(loaded[0], array[0])
    assert loaded[1].dtype == np.int16 and loaded[2] == array[2] and loaded[3] == np.float32(2.5)


def test_load_npy_reads_numeric_arrays_without_pickle(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(12.0).reshape(4, 3))
    np.testing.assert_array_equal(load_npy(tmp_path / "x.npy"), np.arange(12.0).reshape(4, 3))


@pytest.mark.parametrize("payload", [_RunsCommand("true"), Path("x"), {"a": print}])
def test_load_npy_refuses_every_other_global(tmp_path, payload):
    array = np.empty(1, dtype=object)
    array[0] = payload
    np.save(tmp_path / "bad.npy", array, allow_pickle=True)
    with pytest.raises(UnsafePickleError, match="not part of a numpy array"):
        load_npy(tmp_path / "bad.npy")


def test_a_yaml_config_with_a_python_tag_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    config = tmp_path / "evil.yaml"
    config.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n"
                      "arch: {type: VAE}\ndata_loader: {type: Pinwheel}\n")
    proc = run_cli("train.py", "-c", str(config))
    err = failed_with_one_line(proc)
    assert f"invalid YAML in {config}" in err and "python/object/apply" in err
    assert not marker.exists()


@pytest.mark.integration
def test_a_yaml_override_with_a_python_tag_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    proc = run_cli("train.py", "-c", "configs/vae_pinwheel.yaml", "--set",
                   f"name=!!python/object/apply:os.system ['touch {marker}']")
    assert "cannot parse override value" in failed_with_one_line(proc)
    assert not marker.exists()


@pytest.mark.integration
def test_a_checkpoint_carrying_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "payload": _RunsCommand(f"touch {marker}")}, path)
    with pytest.raises(pickle.UnpicklingError):  # the threat: a plain torch.load would have run it
        torch.load(path, weights_only=True)
    for script in ("train.py", "test.py"):
        proc = run_cli(script, "-r", str(path))
        assert f"checkpoint {path} cannot be read" in failed_with_one_line(proc)
    assert not marker.exists()


def test_a_hostile_legacy_mnist_cache_runs_nothing(tmp_path, capsys):
    """MNIST is read from raw IDX bytes; when they are missing and download is on, torchvision first looks
    for its legacy processed/*.pt cache, which it loads with weights_only=True: a payload is refused."""
    import train

    marker = tmp_path / "ran"
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir(parents=True)
    for name in ("training.pt", "test.pt"):
        torch.save((_RunsCommand(f"touch {marker}"), None), processed / name)
    code = train.main(["-c", "configs/vae_mnist.yaml", "--set", f"data_loader.args.root={tmp_path}",
                       "--set", f"trainer.save_dir={tmp_path / 'saved'}"])
    assert code == 2 and "MNIST train split" in one_line_error(capsys.readouterr().err)
    assert not marker.exists()
