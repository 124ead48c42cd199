"""Minimum versions of the libraries the code relies on, checked by the entry points before they
import anything that would fail on an older one with an obscure error."""
from __future__ import annotations

import re
import sys
from importlib import metadata

# torch 2.4: torch.amp.custom_fwd(device_type=...), the CPU `fused` Adam, torch.amp.GradScaler("cuda").
MINIMUM = {"torch": (2, 4), "torchvision": (0, 19), "numpy": (1, 24)}


def parse_version(text: str) -> tuple[int, ...]:
    """'2.4.1+cu121' -> (2, 4, 1); '2.5.0a0' -> (2, 5, 0)."""
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def version_problems() -> list[str]:
    """One phrase per library older than MINIMUM or missing."""
    problems = []
    for name, needed in MINIMUM.items():
        wanted = ".".join(map(str, needed))
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} >= {wanted} (not installed)")
            continue
        if parse_version(found) < needed:
            problems.append(f"{name} >= {wanted} (found {found})")
    return problems


def require_minimum_versions() -> None:
    """Exit with status 2 and one line saying what to install when a library is too old."""
    problems = version_problems()
    if problems:
        print(f"error: this code needs {', '.join(problems)}; run pip install -r requirements.txt", file=sys.stderr)
        raise SystemExit(2)
