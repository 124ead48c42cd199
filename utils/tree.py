"""Nested containers of tensors (dicts, tuples, NamedTuples, None leaves), e.g. a model's typed statistics."""
from __future__ import annotations

from typing import Any, Callable

import torch


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], tree: Any) -> Any:
    """The same structure with `fn` applied to every tensor (None stays None)."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {key: map_tensors(fn, value) for key, value in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(map_tensors(fn, value) for value in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(map_tensors(fn, value) for value in tree)
    if tree is None:
        return None
    raise TypeError(f"expected tensors in dicts, tuples or lists, got {type(tree).__name__}")


def tensors(tree: Any) -> list[torch.Tensor]:
    """Every tensor of the structure, in `map_tensors`' order."""
    found: list[torch.Tensor] = []
    map_tensors(lambda t: found.append(t) or t, tree)
    return found
