"""Clustering metrics: adjusted Rand index and normalised mutual information of two labelings."""
from __future__ import annotations

from itertools import permutations

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


def match_labels(labels_pred: torch.Tensor, labels_true: torch.Tensor, num_labels: int) -> torch.Tensor:
    """`labels_pred` relabelled by the permutation of {0..num_labels-1} that agrees with `labels_true` most often
    (all permutations tried: for a handful of labels), e.g. to colour inferred states like the true ones."""
    agree = torch.zeros(num_labels, num_labels, dtype=torch.long)
    agree.index_put_((labels_pred.flatten().cpu(), labels_true.flatten().cpu()),
                     torch.ones(labels_pred.numel(), dtype=torch.long), accumulate=True)
    best = max(permutations(range(num_labels)), key=lambda p: sum(int(agree[k, p[k]]) for k in range(num_labels)))
    return torch.tensor(best, device=labels_pred.device)[labels_pred]
