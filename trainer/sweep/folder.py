"""The sweep folder saved/<name>/sweeps/<MMDD-HHMMSS>/ and the locks that keep runs apart.

The folder holds sweep.json (the spec and its identity), one folder per run, results.csv, summary.md
and, for a search without --storage, the study (study.db). The same command finds the same folder
again (the newest with the same identity), so that starting it again continues the sweep. A run is
claimed with an exclusive `flock` on .locks/<run>: the lock is held for as long as the process that
runs it lives, and the kernel drops it when that process dies, even by SIGKILL."""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from trainer.sweep.spec import SweepSpec
from utils.checkpoint import write_atomic
from utils.errors import OutputWriteError
from utils.run_dir import check_save_dir, new_folder

SPEC_FILE = "sweep.json"


class FileLock:
    """An exclusive `flock` on `path` (created if missing). `acquire(wait=False)` says whether it was
    taken; the lock lasts until `release()` or the end of the process. As a context manager it waits."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self, wait: bool = False) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor releases the lock
            self.fd = None

    def __enter__(self) -> FileLock:
        self.acquire(wait=True)
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def sweeps_root(spec: SweepSpec) -> Path:
    return Path(spec.config["trainer"]["save_dir"]) / spec.config["name"] / "sweeps"


def open_sweep_folder(spec: SweepSpec, fresh: bool = False) -> tuple[Path, bool]:
    """The sweep folder for `spec`: the newest one with the same identity (unless `fresh`), else a new
    one with sweep.json written. Returns (folder, created)."""
    root = sweeps_root(spec)
    check_save_dir(root)
    identity = spec.identity()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputWriteError(root, err) from None
    with FileLock(root / ".lock"):  # two commands started at once pick the same folder
        if not fresh:
            same = [spec for spec in root.glob(f"*/{SPEC_FILE}")
                    if json.loads(spec.read_text()).get("identity") == identity]
            if same:  # the newest: sweep.json is written once, when its folder is made
                return max(same, key=lambda spec: spec.stat().st_mtime_ns).parent, False
        folder = new_folder(root)
        text = json.dumps({"identity": identity, "spec": spec.to_json()}, indent=2)
        write_atomic(folder / SPEC_FILE, lambda tmp: tmp.write_text(text))
        return folder, True


def read_spec(folder: Path) -> SweepSpec:
    return SweepSpec.from_json(json.loads((folder / SPEC_FILE).read_text())["spec"])


def run_lock(folder: Path, run: str) -> FileLock:
    """The lock that claims run (or trial) `run` of the sweep in `folder`."""
    return FileLock(folder / ".locks" / run)
