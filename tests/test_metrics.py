"""ARI, NMI and matched accuracy against hand-computed cases; the linear assignment against enumeration."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from model.metrics import adjusted_rand_index, linear_assignment, match_labels, matched_accuracy, \
    normalized_mutual_info


def t(*labels: int) -> torch.Tensor:
    return torch.tensor(labels)


def test_identical_partitions_up_to_relabelling_score_one():
    assert adjusted_rand_index(t(0, 0, 1, 1, 2, 2), t(5, 5, 3, 3, 9, 9)) == pytest.approx(1.0)
    assert normalized_mutual_info(t(0, 0, 1, 1, 2, 2), t(5, 5, 3, 3, 9, 9)) == pytest.approx(1.0)


def test_hand_computed_case():
    # true [0,0,0,1,1,1], pred [0,0,1,1,2,2]: table [[2,1,0],[0,1,2]]
    # sum C(n_ij,2) = 1+1 = 2; rows C(3,2)*2 = 6; cols C(2,2)*3 = 3; C(6,2) = 15
    # expected = 6*3/15 = 1.2; max = 4.5; ARI = (2-1.2)/(4.5-1.2) = 0.8/3.3
    true, pred = t(0, 0, 0, 1, 1, 1), t(0, 0, 1, 1, 2, 2)
    assert adjusted_rand_index(true, pred) == pytest.approx(0.8 / 3.3)
    # I = sum p_ij log(p_ij / (p_i p_j)): p = [[2,1,0],[0,1,2]]/6, p_i = 1/2, p_j = 1/3
    mutual = 2 * (2 / 6) * math.log((2 / 6) / (1 / 6)) + 2 * (1 / 6) * math.log((1 / 6) / (1 / 6))
    h_true, h_pred = math.log(2), math.log(3)
    assert normalized_mutual_info(true, pred) == pytest.approx(mutual / ((h_true + h_pred) / 2))


def test_independent_partitions_score_zero():
    true, pred = t(0, 0, 1, 1), t(0, 1, 0, 1)
    assert normalized_mutual_info(true, pred) == pytest.approx(0.0, abs=1e-12)
    # sum C(n_ij,2) = 0; rows 2, cols 2, C(4,2) = 6: expected 2/3, max 2: ARI = -2/3 / (4/3) = -0.5
    assert adjusted_rand_index(true, pred) == pytest.approx(-0.5)


def test_symmetric_and_one_cluster_cases():
    a, b = t(0, 0, 1, 2, 2, 2, 1), t(1, 1, 1, 0, 0, 2, 2)
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_index(b, a))
    assert normalized_mutual_info(a, b) == pytest.approx(normalized_mutual_info(b, a))
    assert adjusted_rand_index(t(0, 0, 0), t(1, 1, 1)) == 1.0
    assert normalized_mutual_info(t(0, 0, 1), t(4, 4, 4)) == pytest.approx(0.0)


def test_match_labels_undoes_a_relabelling():
    """Predicted labels that are a permutation of the true ones (plus a few errors) map back onto them."""
    true = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    predicted = torch.tensor([2, 2, 0, 0, 0, 0, 1, 1, 1, 1])  # 2 -> 0, 0 -> 1, 1 -> 2, one error
    matched = match_labels(predicted, true, 3)[predicted]
    assert matched.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2]


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (4, 2), (2, 5), (5, 5), (6, 4)])
def test_linear_assignment_is_the_best_of_all_matchings(shape):
    """Against enumerating every one-to-one matching of the smaller side into the larger."""
    gen = np.random.default_rng(sum(shape))
    for _ in range(20):
        score = gen.integers(0, 30, shape).astype(float)
        pairs = linear_assignment(score)
        rows, cols = zip(*pairs)
        assert len(pairs) == min(shape) and len(set(rows)) == len(set(cols)) == len(pairs)
        small, large = min(shape), max(shape)
        oriented = score if shape[0] <= shape[1] else score.T
        best = max(sum(oriented[i, p[i]] for i in range(small)) for p in itertools.permutations(range(large), small))
        assert sum(score[r, c] for r, c in pairs) == best


def test_matched_accuracy_counts_frames_under_the_best_one_to_one_map():
    true = t(0, 0, 0, 1, 1, 2, 2, 2)
    assert matched_accuracy(true, t(5, 5, 5, 7, 7, 9, 9, 9)) == 1.0  # any relabelling
    # predicted 0 covers labels 0 and 1: only one of them may have it; predicted 1 -> label 2
    assert matched_accuracy(true, t(0, 0, 0, 0, 0, 1, 1, 1)) == pytest.approx(6 / 8)
    # more predicted states than labels: the unmatched state's frames are wrong
    assert matched_accuracy(true, t(0, 0, 3, 1, 1, 2, 2, 2)) == pytest.approx(7 / 8)


@pytest.mark.parametrize("num_true,num_pred", [(3, 3), (2, 4), (4, 2), (5, 5)])
def test_matched_accuracy_against_brute_force_over_all_one_to_one_maps(num_true, num_pred):
    """state_accuracy's reduction against trying every one-to-one map of predicted states to labels."""
    gen = torch.Generator().manual_seed(10 * num_true + num_pred)
    for _ in range(10):
        true = torch.randint(num_true, (40,), generator=gen)
        pred = torch.where(torch.rand(40, generator=gen) < 0.6, true % num_pred, torch.randint(num_pred, (40,),
                                                                                               generator=gen))
        pred = torch.randperm(num_pred, generator=gen)[pred]  # the state names carry no meaning
        small, large = min(num_true, num_pred), max(num_true, num_pred)
        best = 0
        for chosen in itertools.permutations(range(large), small):
            # predicted state p -> label mapping[p]; unmapped predicted states count as wrong
            mapping = dict(zip(range(num_pred), chosen)) if num_pred <= num_true else dict(zip(chosen, range(num_true)))
            best = max(best, sum(mapping.get(int(p), -1) == int(y) for p, y in zip(pred, true)))
        assert matched_accuracy(true, pred) == pytest.approx(best / 40)
