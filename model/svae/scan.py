"""Parallel prefix scan (O(log T) depth) over the time dim of tuples of tensors."""
from __future__ import annotations

from typing import Callable

import torch

Elements = tuple[torch.Tensor, ...]


def associative_scan(combine: Callable[[Elements, Elements], Elements], elems: Elements, dim: int = 1,
                     reverse: bool = False) -> Elements:
    """Inclusive scan: out[t] = e[0] . e[1] . ... . e[t] (or e[t] . ... . e[T-1] with `reverse`).

    `combine(a, b)` computes a . b for an associative operator, where `a` holds the earlier elements
    and `b` the later ones, elementwise along `dim` (all tensors of `elems` share that dim's length).
    Pairs of neighbours are combined, the half-length sequence is scanned recursively and the
    remaining elements are filled in: O(T) work in O(log T) rounds of batched operations
    (the odd-even scheme of Blelloch's scan).
    """
    if reverse:
        flipped = tuple(e.flip(dim) for e in elems)
        out = associative_scan(lambda a, b: combine(b, a), flipped, dim)
        return tuple(e.flip(dim) for e in out)
    length = elems[0].shape[dim]
    if length < 2:
        return elems

    def take(e: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
        return e.narrow(dim, start, (stop if stop is not None else e.shape[dim]) - start)

    def every_other(e: torch.Tensor, start: int) -> torch.Tensor:
        index = torch.arange(start, e.shape[dim], 2, device=e.device)
        return e.index_select(dim, index)

    pairs = combine(tuple(every_other(take(e, 0, length - length % 2), 0) for e in elems),
                    tuple(every_other(e, 1) for e in elems))
    odd = associative_scan(combine, pairs, dim)  # prefixes ending at 1, 3, 5, ...
    later = tuple(every_other(e, 2) for e in elems)  # elements 2, 4, ...
    n_even = later[0].shape[dim]
    even = combine(tuple(take(o, 0, n_even) for o in odd), later) if n_even else later
    out = []
    for first, e_part, o_part in zip(elems, even, odd):
        e_full = torch.cat([take(first, 0, 1), e_part], dim)  # prefixes ending at 0, 2, 4, ...
        n_odd = o_part.shape[dim]
        interleaved = torch.stack([take(e_full, 0, n_odd), o_part], dim + 1).flatten(dim, dim + 1)
        if e_full.shape[dim] > n_odd:
            interleaved = torch.cat([interleaved, take(e_full, n_odd)], dim)
        out.append(interleaved)
    return tuple(out)
