"""The one shrink table and the one tiny-config helper of the test suite.

SHRINKS holds, per architecture, its shipped config and the arch and data arguments that shrink it to a run
of seconds; the variants below it (the regression pins' and the DDP tests') are changes on top of a row, not
copies of it. `tiny_config` reads a shipped config and applies a row (and a variant); every test that trains a
shrunk shipped config builds it here. tests/test_compile.py checks that every shipped architecture has a row.
"""
from __future__ import annotations

import copy
from pathlib import Path

from utils.config import read_config_file

ROOT = Path(__file__).resolve().parent.parent

#: architecture -> (shipped config, arch args, data args): every architecture's shipped config shrunk to seconds
SHRINKS: dict[str, tuple[str, dict, dict]] = {
    "VAE": ("vae_pinwheel.yaml", dict(hidden_dims=[16, 16], kl_warmup_epochs=2),
            dict(points_per_class=20, batch_size=10, validation_split=0.2)),
    "SVAE-GMM": ("svae_gmm.yaml", dict(num_components=5, hidden_dims=[8, 8], kl_warmup_epochs=1),
                 dict(points_per_class=12, batch_size=10, test_points_per_class=8, val_points_per_class=2)),
    "SVAE-LDS": ("svae_lds.yaml", dict(latent_dim=3, hidden_dims=[8], prefix_len=6, horizon=5, eval_samples=2),
                 dict(num_frames=144, duration=14.3, chunk_len=12, test_frames=36, batch_size=4,
                      num_val_sequences=1)),
    "SVAE-SLDS": ("svae_slds.yaml", dict(latent_dim=2, hidden_dims=[8], prefix_len=6, horizon=5, eval_samples=2,
                                         max_iter=5),
                  dict(chunk_len=12, num_sequences=12, num_test_sequences=3, batch_size=4, num_val_sequences=2)),
    "SVAE-HMM": ("svae_hmm.yaml", dict(latent_dim=2, hidden_dims=[8], prefix_len=6, horizon=5, eval_samples=2,
                                       max_iter=5),
                 dict(chunk_len=12, num_sequences=12, num_test_sequences=3, batch_size=4, num_val_sequences=2)),
    "GraphVAE": ("graph_vae.yaml", dict(num_nodes=4, node_dim=3, hidden_dims=[32, 16], head_hidden_dims=[8]),
                 dict(download=False, batch_size=16, validation_split=12, num_workers=0)),
    "GraphLSTMVAE": ("graph_lstm_vae.yaml", dict(lstm_hidden=8, num_nodes=4, node_dim=3, hidden_dims=[32, 16],
                                                 head_hidden_dims=[8]),
                     dict(download=False, batch_size=16, validation_split=12, num_workers=0)),
    "RecurrentGraphVAE": ("recurrent_graph_vae.yaml",
                          dict(num_nodes=3, node_dim=2, state_dim=8, feature_dims=[8], encoder_dim=8,
                               head_hidden_dims=[8], decoder_hidden_dims=[8], prefix_len=5, horizon=4,
                               prediction_samples=2),
                          dict(chunk_len=10, num_sequences=55, num_test_sequences=12, validation_split=10,
                               batch_size=10, min_len=9)),
}

#: variants, as changes on top of a row: variant -> config stem -> (arch changes, data changes).
#: "regression": the runs whose numbers tests/test_svae_regression.py pins (the GMM with the Gaussian
#: likelihood: the pins predate the Student-t default). "ddp": the SVAEs whose one SVI step is compared across
#: a 2-rank DDP run and one process (tests/test_distributed.py, tests/test_cuda.py): mean field run to
#: convergence and a global batch of 10, so that the globals do not depend on how the batch is split.
VARIANTS: dict[str, dict[str, tuple[dict, dict]]] = {
    "regression": {"svae_gmm": (dict(likelihood="gaussian"), dict(val_points_per_class=0)),  # the pins: no val_*
                   "svae_lds": ({}, dict(num_val_sequences=0))},
    "ddp": {
        "svae_gmm": (dict(num_components=4, hidden_dims=[8], max_iter=1000, tol=1e-12, rho=0.5),
                     dict(points_per_class=8, batch_size=10, test_points_per_class=2)),
        "svae_lds": (dict(rho=0.5), dict(num_frames=120, duration=12.0, test_frames=24, batch_size=10)),
        "svae_slds": (dict(rho=0.5, max_iter=1000, tol=1e-12), dict(num_sequences=10, num_test_sequences=2,
                                                                    batch_size=10)),
        "svae_hmm": (dict(rho=0.5, max_iter=1000, tol=1e-12), dict(num_sequences=10, num_test_sequences=2,
                                                                  batch_size=10)),
    },
}

#: the regression runs: config stem -> (steps per epoch, the metrics recorded)
REGRESSION_RUNS = {"svae_gmm": (6, ["elbo", "ari", "nmi", "components_in_use"]),
                   "svae_lds": (3, ["elbo", "pred_mse", "pred_mse_repeat_last"])}
#: the DDP runs: config stem -> the number of SVI-updated buffers (`pgm.q_*`)
DDP_UPDATED = {"svae_gmm": 5, "svae_lds": 8, "svae_slds": 10, "svae_hmm": 6}

#: what every tiny run sets in its trainer section unless told otherwise: quiet, no TensorBoard, no figures
QUIET = dict(verbosity=0, tensorboard=False, visualize_every=0)

_BY_STEM = {Path(config).stem: arch for arch, (config, _, _) in SHRINKS.items()}


def shrink_args(name: str, variant: str | None = None) -> tuple[str, dict, dict]:
    """(shipped config file, arch args, data args) of an architecture (`SVAE-GMM`) or a config stem
    (`svae_gmm`), with `variant`'s changes applied."""
    config, arch_args, data_args = SHRINKS[_BY_STEM.get(name, name)]
    arch_args, data_args = copy.deepcopy(arch_args), copy.deepcopy(data_args)
    if variant is not None:
        arch_change, data_change = VARIANTS[variant][Path(config).stem]
        arch_args.update(copy.deepcopy(arch_change))
        data_args.update(copy.deepcopy(data_change))
    return config, arch_args, data_args


def shrunk_config(name: str, arch_args: dict, data_args: dict, mnist_root: Path | None = None) -> dict:
    """configs/`name` with `arch_args` and `data_args` applied; MNIST read offline from `mnist_root`."""
    config = read_config_file(ROOT / "configs" / name)
    config["arch"]["args"].update(arch_args)
    config["data_loader"]["args"].update(data_args)
    if config["data_loader"]["type"] == "MNIST":
        assert mnist_root is not None, f"{name} reads MNIST: pass the mnist_root fixture"
        config["data_loader"]["args"]["root"] = str(mnist_root)
    return config


def tiny_config(name: str, variant: str | None = None, *, mnist_root: Path | None = None, **trainer) -> dict:
    """The shipped config of `name` (an architecture or a config stem) shrunk by its SHRINKS row and `variant`;
    its trainer section updated with QUIET and then `trainer` (save_dir, epochs, len_epoch, ...)."""
    config = shrunk_config(*shrink_args(name, variant), mnist_root)
    config["trainer"].update({**QUIET, **{k: str(v) if isinstance(v, Path) else v for k, v in trainer.items()}})
    return config
