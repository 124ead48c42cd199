"""Run folders saved/<name>/<YYYYMMDD-HHMMSS>-<unique>/ and the environment record."""
from __future__ import annotations

import json
import platform
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def new_run_dir(save_dir: str | Path, name: str) -> Path:
    """Create a fresh run folder; the random suffix keeps runs started in the same second apart."""
    while True:
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        path = Path(save_dir) / name / run_id
        try:
            (path / "checkpoints").mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment_record() -> dict:
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_run_files(run_dir: Path, config: dict, keep_environment: bool = False) -> None:
    """The resolved config and the environment record (a resumed run keeps the first record)."""
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = run_dir / "environment.json"
    if not (keep_environment and env.exists()):
        env.write_text(json.dumps(environment_record(), indent=2))
