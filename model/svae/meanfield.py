"""The one structured mean-field driver of the SVAEs (SVAE.md sections 3 and 6): block coordinate ascent on the
local posterior, without gradient until the batch-mean local KL settles, then one differentiable sweep.

A model supplies `sweep(state, differentiable)`, which builds the local posterior from the current state of
the other block (the SVAE-GMM's responsibilities q(z), the SVAE-SLDS's state weights q(z_t)) and returns it
with the next state. The posterior has `kl` (B,), the local KL of every example.
"""
from __future__ import annotations

import math
from typing import Any, Callable, TypeVar

import torch

State = TypeVar("State")


def coordinate_ascent(sweep: Callable[[State, bool], tuple[Any, State]], start: State, max_iter: int,
                      tol: float, retries: Callable[[Any], torch.Tensor]) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Up to `max_iter` sweeps without gradient from `start`, until the batch-mean local KL changes by less than
    `tol` nats, then one differentiable sweep from the last state (the path by which the encoder learns from the
    local KL). The stopping test reads one number per sweep: the sweep count is data-dependent by design.

    Returns the differentiable sweep's posterior, `retries`(posterior) (the jitter retries of a sweep, a tensor)
    summed over every sweep, and the number of sweeps without gradient (a 0-d tensor). Sums, not lists: a
    compiled step sees the same structure whatever the sweep count."""
    previous, state, sweeps, total = math.inf, start, 0, None
    with torch.no_grad():
        while sweeps < max_iter:
            post, state = sweep(state, False)
            total = retries(post) if total is None else total + retries(post)
            sweeps += 1
            current = float(post.kl.mean())
            if abs(previous - current) < tol:
                break
            previous = current
    post = sweep(state, True)[0]
    total = retries(post) if total is None else total + retries(post)
    return post, total, torch.tensor(sweeps, device=post.kl.device)
