"""Importance-weighted log-likelihood estimates, computed in chunks of samples."""
from __future__ import annotations

import math
from typing import Callable

import torch

#: samples x examples evaluated per chunk (bounds memory whatever K is)
ROWS_PER_CHUNK = 16384


def iw_log_likelihood(log_weights: Callable[[int], torch.Tensor], num_samples: int,
                      batch_size: int) -> torch.Tensor:
    """log (1/K) sum_k w_k, with log w_k = log p(x, z_k) - log q(z_k | x), z_k ~ q.

    Args:
        log_weights: n -> (n, B) log weights of n fresh samples per example.
        num_samples: K.
        batch_size: B (sets the chunk size, so that at most ROWS_PER_CHUNK rows run at once).

    Returns:
        (B,) estimate per example; its expectation increases with K towards log p(x).
    """
    if num_samples < 1:
        raise ValueError(f"number of importance samples must be >= 1, got {num_samples}")
    chunk = max(1, min(num_samples, ROWS_PER_CHUNK // max(batch_size, 1)))
    total = None
    done = 0
    while done < num_samples:
        n = min(chunk, num_samples - done)
        part = torch.logsumexp(log_weights(n).double(), dim=0)
        total = part if total is None else torch.logaddexp(total, part)
        done += n
    return total - math.log(num_samples)
