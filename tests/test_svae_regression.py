"""Regression: short fixed-seed SVAE-GMM and SVAE-LDS runs give the recorded losses and test metrics, to 1e-6.

The SVAE-LDS numbers were recorded with the code from before the rebuild on the structured core
(model/svae/structured_vae.py, commit 9a66b81) by this same run: the last training epoch's means and
test.py's results with the metrics that existed then. The SVAE-GMM numbers were recorded the same way, with
the Gaussian likelihood, when issue 26 started mean field where x is integrated out instead of at uniform
responsibilities (which changed them on purpose: meanfield_iters 5.83 -> 3.5, elbo -96.415 -> -96.486).
Issue 27 made SVAE-LDS's pred_mse the error of the predictive mean, the average of 100 decoded sampled
continuations, instead of the decoded mean path (on purpose: 0.192898 -> 0.193027).

What may move these pins, on purpose: a change to what these short runs compute -- the SVAE-GMM/SVAE-LDS
losses or inference (model/svae/), the seeding or the batch order (utils/seeding.py, data_loader/), the
synthetic pinwheel or video data, the metrics named in REGRESSION_RUNS, the optimizer/trainer step, the shipped
configs/svae_gmm.yaml or svae_lds.yaml, the shrink (tests/shrinks.py: SHRINKS, VARIANTS["regression"],
REGRESSION_RUNS) -- or another torch version or CPU instruction set (rounding). Anything else that moves them
is a regression. To re-pin after an intended change: run
    python -m pytest -q tests/test_svae_regression.py -p no:cacheprovider
read the got/want values from the failure, check that the change explains them (say so in the commit), and
replace the numbers below with `run.metrics` and `results`, printed to full precision (repr)."""
from __future__ import annotations

import pytest

from tests.shrinks import REGRESSION_RUNS, shrink_args, tiny_config
from trainer import jobs
from trainer.components import load_and_check
from trainer.jobs import train

RECORDED = {
    "svae_gmm": {
        "train": {"components_in_use": 3.6666666666666665, "elbo": -96.48634440104166, "jitter_retries": 0.0,
                  "kl_global": 0.482161013285319, "kl_local": 3.3491561889648436, "loss": 96.48634440104166,
                  "meanfield_iters": 3.5, "recon": -92.655029296875},
        "test": {"elbo": -94.96159173302229, "kl_global": 0.5018358678578738, "ari": 0.5850692892266428,
                 "nmi": 0.7808796806084185, "components_in_use": 4, "num_examples": 40, "epoch": 3},
    },
    "svae_lds": {
        "train": {"elbo": -21.237342834472656, "jitter_retries": 0.0, "kl_global": 0.08659822742144267,
                  "kl_local": 0.8549423217773438, "loss": 21.237342834472656, "recon": -20.295801798502605},
        "test": {"elbo": -20.990227045625456, "kl_global": 0.10584813467909962, "pred_mse": 0.19302725474039714,
                 "pred_mse_repeat_last": 0.17554972072442374, "prefix_len": 6, "horizon": 5,
                 "dynamics_eigenvalue_moduli": [0.577593, 0.565667, 0.557044], "num_examples": 3, "epoch": 3},
    },
}

#: the recorded runs' shrink: tests/shrinks.py's rows with the "regression" variant; SHRINKS (config stem ->
#: (arch args, data args, steps per epoch, metrics)) is what tests/test_tensorboard.py and test_structured_vae.py read
SHRINKS = {name: (*shrink_args(name, "regression")[1:], *REGRESSION_RUNS[name]) for name in REGRESSION_RUNS}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_short_run_matches_the_recorded_numbers(name, tmp_path):
    len_epoch, metrics = REGRESSION_RUNS[name]
    config = tiny_config(name, "regression", epochs=3, len_epoch=len_epoch, save_dir=tmp_path)
    config["metrics"] = metrics
    run = train(load_and_check(base=config))
    results = jobs.evaluate(run.run_dir / "checkpoints" / "last.pt", progress=False)
    assert run.metrics == pytest.approx(RECORDED[name]["train"], rel=1e-6, abs=1e-6)
    for key, want in RECORDED[name]["test"].items():
        assert results[key] == pytest.approx(want, rel=1e-6, abs=1e-6), key
