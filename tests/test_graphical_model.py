"""The GraphicalModel interface: typed statistics that a misspelt factor cannot slip past, and an SVI step that
reads each factor from its own field."""
from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

from model.expfam import dirichlet, niw
from model.expfam.niw import NIWNatural
from model.svae.gmm import GaussianMixture
from model.svae.graphical_model import DIRICHLET, NIW, GraphicalModel

DT = torch.float64


class TwoFactors(NamedTuple):
    weights: torch.Tensor
    components: NIWNatural
    count: torch.Tensor


class Misspelt(GraphicalModel):
    Statistics = TwoFactors

    def __init__(self, name: str):
        super().__init__()
        self.add_global_factor("weights", DIRICHLET, dirichlet.alpha_to_natural(torch.ones(3, dtype=DT)))
        self.add_global_factor(name, NIW, niw.standard_to_natural(torch.zeros(3, 2, dtype=DT),
                                                                  torch.ones(3, dtype=DT),
                                                                  torch.eye(2, dtype=DT).expand(3, 2, 2),
                                                                  torch.full((3,), 4.0, dtype=DT)))


def test_a_misspelt_factor_fails_when_the_model_is_built():
    Misspelt("components")  # spelt as its Statistics field: fine
    with pytest.raises(TypeError, match="'compnents' has no field in TwoFactors"):
        Misspelt("compnents")


def test_the_svi_step_reads_each_factor_from_its_typed_field():
    torch.manual_seed(0)
    pgm = GaussianMixture(3, 2, max_iter=5, tol=1e-3, prior_alpha=1.0, prior_kappa=0.5, prior_nu_offset=0.5,
                          init_mean_scale=1.0)
    q_weights, q_niw = pgm.natural("dirichlet").clone(), NIWNatural(*(t.clone() for t in pgm.natural("niw")))
    stats = pgm.Statistics(torch.tensor([1.0, 2.0, 3.0], dtype=DT),
                           NIWNatural(*(torch.rand_like(t) for t in q_niw)), torch.tensor(6.0, dtype=DT))
    pgm.natural_gradient_step(stats, num_train=12, rho=0.5)
    scale = 12 / 6
    torch.testing.assert_close(pgm.natural("dirichlet"),
                               0.5 * q_weights + 0.5 * (pgm.natural("dirichlet", prior=True) + scale * stats.dirichlet))
    for got, old, prior, stat in zip(pgm.natural("niw"), q_niw, pgm.natural("niw", prior=True), stats.niw):
        torch.testing.assert_close(got, 0.5 * old + 0.5 * (prior + scale * stat))
