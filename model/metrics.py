"""Clustering metrics: adjusted Rand index, normalised mutual information and matched accuracy of two
labelings, and the optimal one-to-one matching of labels behind the last."""
from __future__ import annotations

import numpy as np
import torch


def contingency_table(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """Counts n_ij of points with label i in `labels_a` and j in `labels_b`: (I, J) float64.
    Labels: (N,) integer tensors; only the labels that occur get a row or column."""
    _, a = torch.unique(labels_a, return_inverse=True)
    _, b = torch.unique(labels_b, return_inverse=True)
    num_b = int(b.max()) + 1
    counts = torch.bincount(a * num_b + b, minlength=(int(a.max()) + 1) * num_b)
    return counts.view(-1, num_b).double()


def adjusted_rand_index(labels_true: torch.Tensor, labels_pred: torch.Tensor) -> float:
    """Hubert-Arabie ARI: 1 for identical partitions (up to relabelling), about 0 for chance."""
    table = contingency_table(labels_true, labels_pred)

    def pairs(x: torch.Tensor) -> torch.Tensor:
        return (x * (x - 1) / 2).sum()

    index = pairs(table)
    rows, cols = pairs(table.sum(1)), pairs(table.sum(0))
    total = pairs(table.sum().reshape(1))
    expected = rows * cols / total if total > 0 else torch.tensor(0.0, dtype=torch.float64)
    maximum = (rows + cols) / 2
    if maximum == expected:  # both partitions trivial (one cluster, or all singletons)
        return 1.0
    return float((index - expected) / (maximum - expected))


def normalized_mutual_info(labels_true: torch.Tensor, labels_pred: torch.Tensor) -> float:
    """I(a; b) / ((H(a) + H(b)) / 2) in nats (the arithmetic normalisation); 1 for identical
    partitions, 0 for independent ones. Two one-cluster labelings count as identical."""
    table = contingency_table(labels_true, labels_pred)
    p = table / table.sum()
    pa, pb = p.sum(1), p.sum(0)

    def entropy(q: torch.Tensor) -> torch.Tensor:
        q = q[q > 0]
        return -(q * q.log()).sum()

    ha, hb = entropy(pa), entropy(pb)
    if ha == 0 and hb == 0:
        return 1.0
    nz = p > 0
    mutual = (p[nz] * (p[nz] / (pa[:, None] * pb[None, :])[nz]).log()).sum()
    return float(mutual / ((ha + hb) / 2))


def linear_assignment(score: np.ndarray) -> list[tuple[int, int]]:
    """The one-to-one pairs (row, column) of a score matrix (R, C) with the largest total score, min(R, C) pairs
    (the Hungarian method with potentials, O(R^2 C) for R <= C)."""
    if score.shape[0] > score.shape[1]:
        return [(r, c) for c, r in linear_assignment(score.T)]
    cost = -np.asarray(score, dtype=np.float64)
    rows, cols = cost.shape
    u, v = np.zeros(rows + 1), np.zeros(cols + 1)
    owner = np.zeros(cols + 1, dtype=np.int64)  # owner[j]: the row (1-based) assigned to column j; column 0 is free
    way = np.zeros(cols + 1, dtype=np.int64)
    for row in range(1, rows + 1):
        owner[0], col = row, 0
        slack = np.full(cols + 1, np.inf)
        used = np.zeros(cols + 1, dtype=bool)
        while owner[col] != 0:  # grow alternating paths until one ends in a free column
            used[col] = True
            current = owner[col]
            reduced = cost[current - 1] - u[current] - v[1:]
            better = ~used[1:] & (reduced < slack[1:])
            slack[1:][better] = reduced[better]
            way[1:][better] = col
            free = np.flatnonzero(~used[1:]) + 1
            nxt = free[np.argmin(slack[free])]
            delta = slack[nxt]
            u[owner[used]] += delta
            v[used] -= delta
            slack[~used] -= delta
            col = nxt
        while col:  # flip the path
            previous = way[col]
            owner[col] = owner[previous]
            col = previous
    return sorted((int(owner[c]) - 1, c - 1) for c in range(1, cols + 1) if owner[c])


def matched_accuracy(labels_true: torch.Tensor, labels_pred: torch.Tensor) -> float:
    """The share of points whose predicted label maps to their true label under the one-to-one map of predicted
    to true labels that maximises it (Hungarian matching); predicted labels left unmatched count as wrong."""
    table = contingency_table(labels_pred, labels_true).numpy()
    return float(sum(table[r, c] for r, c in linear_assignment(table)) / table.sum())


def match_labels(labels_pred: torch.Tensor, labels_true: torch.Tensor, num_labels: int) -> torch.Tensor:
    """The permutation of {0..num_labels-1} (num_labels,) that maps `labels_pred` to `labels_true` most often (a
    linear assignment; index it with predicted labels), e.g. to colour inferred states like the true ones.
    Labels (...) in 0..num_labels-1."""
    agree = torch.zeros(num_labels, num_labels, dtype=torch.long)
    agree.index_put_((labels_pred.flatten().cpu(), labels_true.flatten().cpu()),
                     torch.ones(labels_pred.numel(), dtype=torch.long), accumulate=True)
    best = dict(linear_assignment(agree.numpy()))
    return torch.tensor([best[k] for k in range(num_labels)], device=labels_pred.device)
