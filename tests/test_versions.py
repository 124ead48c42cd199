"""The entry points name the library versions they need instead of failing obscurely on older ones."""
from __future__ import annotations

import pytest

from tests.conftest import run_cli
from utils import versions


@pytest.mark.parametrize("text, parsed", [("2.4.1+cu121", (2, 4, 1)), ("2.5.0a0+git1234", (2, 5, 0)),
                                          ("0.19.1", (0, 19, 1)), ("1.26.4", (1, 26, 4)), ("2.10", (2, 10))])
def test_parse_version(text, parsed):
    assert versions.parse_version(text) == parsed


def test_older_or_missing_libraries_are_named(monkeypatch):
    installed = {"torch": "2.3.1+cpu", "torchvision": "0.19.0", "numpy": "2.1.0"}

    def version(name: str) -> str:
        if name not in installed:
            raise versions.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(versions.metadata, "version", version)
    assert versions.version_problems() == ["torch >= 2.4 (found 2.3.1+cpu)"]
    installed["torch"] = "2.10.0"
    del installed["numpy"]
    assert versions.version_problems() == ["numpy >= 1.24 (not installed)"]


@pytest.mark.parametrize("script", ["train.py", "test.py"])
def test_entry_points_stop_on_an_old_torch_with_one_line(script):
    fake_old_torch = ("import importlib.metadata as m, runpy, sys; real = m.version; "
                      "m.version = lambda name: '2.2.2' if name == 'torch' else real(name); "
                      f"sys.argv = ['{script}', '--help']; runpy.run_path('{script}', run_name='__main__')")
    proc = run_cli("-c", fake_old_torch)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == ("error: this code needs torch >= 2.4 (found 2.2.2); "
                                   "run pip install -r requirements.txt")
    assert "usage" in run_cli(script, "--help").stdout  # with the real versions it starts
