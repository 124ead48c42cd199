"""Your own data end to end: the configs in configs/own/ on small generated files (data_loader/example_files.py)
train (train.train, what train.py runs), and test.py evaluates them (SVAE-SLDS on variable-length, real-valued,
labelled 7-channel sequences; GraphVAE on a folder of 20x20 RGB PNGs; SVAE-GMM on 5-D vectors); metrics
default to what the data allows, and a listed metric whose field is missing stops before training; --dry-run
writes nothing; RecurrentGraphVAE and SVAE-LDS take Sequences too."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_loader.example_files import write_images, write_sequences, write_vectors
from tests.conftest import ROOT, one_line_error, run_cli
from trainer import jobs
from trainer.components import build_data, build_model, eval_metric_names, load_and_check
from trainer.jobs import train
from utils.errors import ConfigError

SHRINK = {  # config -> (data writer, overrides of a tiny run)
    "svae_gmm_vectors": (lambda d: write_vectors(d / "vectors.npz", points_per_class=30),
                         ["arch.args.hidden_dims=[8]", "trainer.epochs=2", "trainer.len_epoch=null",
                          "arch.args.kl_warmup_epochs=1", "lr_scheduler=null"]),
    "graph_vae_images": (lambda d: write_images(d / "images", per_class=12),
                         ["arch.args.hidden_dims=[32]", "arch.args.head_hidden_dims=[8]", "trainer.epochs=2",
                          "data_loader.args.batch_size=8", "trainer.compile=false"]),
    "svae_slds_sequences": (lambda d: write_sequences(d / "sequences.npz", num_sequences=12, min_len=15,
                                                      max_len=30),
                            ["arch.args.hidden_dims=[8]", "arch.args.prefix_len=8", "arch.args.horizon=5",
                             "arch.args.max_iter=3", "arch.args.eval_samples=2", "trainer.epochs=2",
                             "data_loader.args.batch_size=4"]),
}


def own_overrides(name: str, tmp_path: Path, extra: list[str] = ()) -> list[str]:
    """`--set` overrides of configs/own/<name>.yaml for a tiny run on a small generated file under tmp_path."""
    write, overrides = SHRINK[name]
    return [f"data_loader.args.path={write(tmp_path)}", f"trainer.save_dir={tmp_path / 'saved'}",
            "trainer.verbosity=0", *overrides, *extra]


def own_cli(name: str, tmp_path: Path, extra: list[str] = ()) -> list[str]:
    """The train.py command line of the same run."""
    args = ["train.py", "-c", str(ROOT / "configs" / "own" / f"{name}.yaml")]
    for override in own_overrides(name, tmp_path, extra):
        args += ["--set", override]
    return args


def train_and_test(name: str, tmp_path: Path, extra: list[str] = (), checkpoint: str = "model_best.pt") -> dict:
    """Train the tiny run, evaluate `checkpoint` as test.py does; test_metrics.json's content."""
    run = train(load_and_check(ROOT / "configs" / "own" / f"{name}.yaml", own_overrides(name, tmp_path, extra)))
    jobs.evaluate(run.run_dir / "checkpoints" / checkpoint, iw_samples=3, progress=False)
    return json.loads((run.run_dir / "test_metrics.json").read_text())


@pytest.mark.integration
def test_svae_slds_on_variable_length_labelled_sequences(tmp_path):
    results = train_and_test("svae_slds_sequences", tmp_path)
    for key in ("elbo", "iw_nll", "pred_mse", "pred_mse_repeat_last", "state_ari", "state_nmi", "state_accuracy"):
        assert isinstance(results[key], float) and results[key] == results[key], key  # reported, not NaN
    assert 0 <= results["state_accuracy"] <= 1 and results["num_examples"] == 2  # 0.2 of 12 sequences


def test_graph_vae_on_a_folder_of_rgb_images(tmp_path):
    results = train_and_test("graph_vae_images", tmp_path)
    assert {"elbo", "iw_nll"} <= results.keys() and results["num_examples"] == 7  # 0.2 of 36 images
    assert (Path(results["checkpoint"]).parent.parent / "figures" / "test_reconstructions.png").is_file()


def test_svae_gmm_on_vectors_reports_clustering_metrics_by_default(tmp_path):
    results = train_and_test("svae_gmm_vectors", tmp_path)
    assert {"elbo", "iw_nll", "ari", "nmi", "components_in_use"} <= results.keys()
    assert results["num_examples"] == 30
    figures = Path(results["checkpoint"]).parent.parent / "figures"
    assert (figures / "test_clusters_latent.png").is_file() and not (figures / "test_clusters_data.png").exists()


def test_a_listed_metric_whose_field_is_missing_stops_before_training(tmp_path):
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, x=np.load(write_vectors(tmp_path / "vectors.npz", points_per_class=30))["x"])
    result = run_cli(*own_cli("svae_gmm_vectors", tmp_path, [f"data_loader.args.path={unlabelled}",
                                                              "metrics=[elbo, ari]"]))
    assert result.returncode == 2
    err = one_line_error(result.stderr)
    assert "'ari'" in err and "'y'" in err
    assert not (tmp_path / "saved").exists()


def test_dry_run_prints_the_data_model_and_metrics_and_writes_nothing(tmp_path):
    result = run_cli(*own_cli("svae_slds_sequences", tmp_path), "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in ("sequences.npz", "examples: train 10, test 2", "lengths: min", "scale standardize: mean",
                 "labels (3): turn left, turn right, drift in", "trainable parameters",
                 "metrics: elbo, iw_nll, pred_mse, pred_mse_repeat_last, state_ari, state_nmi, state_accuracy"):
        assert text in out, (text, out)
    assert not (tmp_path / "saved").exists()


@pytest.mark.integration
@pytest.mark.parametrize("arch", ["RecurrentGraphVAE", "SVAE-LDS"])
def test_other_sequence_models_take_sequences(arch, tmp_path):
    """Windows of 12 frames (RecurrentGraphVAE) or whole padded sequences (SVAE-LDS, Bernoulli-free real data)."""
    args = {"RecurrentGraphVAE": ["arch.args={state_dim: 8, feature_dims: [8], encoder_dim: 8, "
                                  "head_hidden_dims: [8], decoder_hidden_dims: [8], prefix_len: 6, horizon: 4}",
                                  "data_loader.args.window=12", "data_loader.args.stride=6"],
            "SVAE-LDS": ["arch.args={latent_dim: 2, hidden_dims: [8], likelihood: gaussian, prefix_len: 8, "
                         "horizon: 5, eval_samples: 2}"]}[arch]
    results = train_and_test("svae_slds_sequences", tmp_path, [f"arch.type={arch}", "metrics=null", *args],
                             checkpoint="last.pt")
    assert "elbo" in results and results["num_examples"] >= 2  # 2 test sequences, whole or as windows


def test_prediction_metrics_are_left_out_by_default_when_examples_are_too_short(tmp_path):
    """Windows of 10 frames cannot hold prefix_len + horizon = 13: the default metrics skip the prediction
    metrics, and listing one is a one-line error before training."""
    extra = ["data_loader.args.window=10", "data_loader.args.stride=5"]
    config = load_and_check(ROOT / "configs" / "own" / "svae_slds_sequences.yaml",
                            own_overrides("svae_slds_sequences", tmp_path, extra))
    data = build_data(config)
    metrics = eval_metric_names(config, build_model(config, data), data)
    assert metrics == ("elbo", "iw_nll", "state_ari", "state_nmi", "state_accuracy")
    config["metrics"] = ["elbo", "pred_mse"]
    with pytest.raises(ConfigError, match="'pred_mse'.*prefix_len \\+ horizon = 13 frames.*has 10"):
        eval_metric_names(config, build_model(config, data), data)
