"""TensorBoard as a researcher opens it over `saved/`, read with TensorBoard's own data provider (the backend its
dashboards query): short runs of SVAE-GMM, SVAE-SLDS, GraphVAE and RecurrentGraphVAE, each evaluated by test.py,
and a 2-seed sweep. The runs: no empty one, short names ending in their split; the tags: no per-step charts by
default, test values on the training curves' tags; the HPARAMS columns and metrics in the order asked for."""
from __future__ import annotations

from pathlib import Path

import pytest

import sweep
from tests.conftest import ROOT, make_mnist
from tests.shrinks import tiny_config
from tests.test_sweep import TINY
from tests.test_tensorboard import hparams_experiment, hparams_session_groups
from trainer import jobs
from trainer.components import load_and_check
from utils.config import read_config_file

ARCHITECTURES = ("SVAE-GMM", "SVAE-SLDS", "GraphVAE", "RecurrentGraphVAE")
SPLITS = ("train", "val", "test")
UNITS = {"svae_gmm": "point", "svae_slds": "frame", "graph_vae": "image", "rgvae": "frame"}
MAX_RUN_NAME = 30  # characters of a plain run's name <name>/<MMDD-HHMMSS>/<split> (TensorBoard's legend)
MAX_CONFIG_NAME = MAX_RUN_NAME - len("/1207-103452/train")


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dashboard")
    saved, mnist = root / "saved", make_mnist(root / "mnist")
    for architecture in ARCHITECTURES:
        config = tiny_config(architecture, mnist_root=mnist, save_dir=saved, epochs=1, len_epoch=2, tensorboard=True,
                             visualize_every=1, compile=False)
        run_dir = jobs.train(load_and_check(base=config)).run_dir
        jobs.evaluate(run_dir / "checkpoints" / "last.pt", iw_samples=2, progress=False)
    assert sweep.main([*TINY, "--seeds", "0", "1", "--set", f"trainer.save_dir={saved}",
                       "--set", "trainer.tensorboard=true"]) == 0
    return saved


@pytest.fixture(scope="module")
def provider(logdir):
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    return data_provider.MultiplexerDataProvider(multiplexer, str(logdir)), context.RequestContext()


def listed(provider, kind: str, plugin: str) -> dict[str, dict]:
    data, ctx = provider
    return getattr(data, f"list_{kind}")(ctx, experiment_id="", plugin_name=plugin)


def test_every_run_holds_data_and_plain_runs_have_short_names_ending_in_their_split(provider):
    data, ctx = provider
    runs = [run.run_name for run in data.list_runs(ctx, experiment_id="")]
    holding = set(listed(provider, "scalars", "scalars")) | set(listed(provider, "blob_sequences", "images")) | \
        set(listed(provider, "tensors", "text"))
    assert runs and set(runs) <= holding, set(runs) - holding  # no run holds only HPARAMS data
    plain = [run for run in runs if "/sweeps/" not in run]
    assert {run.split("/")[0] for run in plain} == {"svae_gmm", "svae_slds", "graph_vae", "rgvae"}
    for run in plain:
        name, run_id, *split = run.split("/")
        assert len(run_id) == len("1207-103452") and split in ([], ["train"], ["val"], ["test"]), run
        assert len(run) <= MAX_RUN_NAME, run
    assert "tensorboard" not in " ".join(runs)
    sweep_runs = [run for run in runs if "/sweeps/" in run]
    assert {run.rsplit("/", 1)[-1] for run in sweep_runs if run.count("/") == 4} <= set(SPLITS)


SHIPPED_CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.*") if p.parent.name not in ("bench", "search"))


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_configs_have_names_that_keep_run_names_short(path):
    """A shipped config's runs are named <name>/<MMDD-HHMMSS>/<split>: at most 30 characters."""
    assert len(read_config_file(path)["name"]) <= MAX_CONFIG_NAME, path


def test_no_per_step_charts_and_run_level_data_outside_the_splits(provider):
    scalars = listed(provider, "scalars", "scalars")
    tags = {tag for run_tags in scalars.values() for tag in run_tags}
    assert not any(tag.startswith("step/") for tag in tags)
    for run, run_tags in scalars.items():  # lr and schedules: run-level data (the run folder), not in a split
        if run.rsplit("/", 1)[-1] in SPLITS:
            assert not any(tag.startswith(("lr/", "schedule/", "best/")) for tag in run_tags), run


def test_test_values_land_on_the_training_curves_at_the_evaluated_step(provider):
    data, ctx = provider
    scalars = listed(provider, "scalars", "scalars")
    tested = [run for run in scalars if run.endswith("/test") and "/sweeps/" not in run]
    assert len(tested) == len(ARCHITECTURES)
    for run in tested:
        train = run[:-len("test")] + "train"
        assert all(tag.startswith("epoch/") for tag in scalars[run]), run
        shared = sorted(set(scalars[run]) & set(scalars[train]))
        tag = f"epoch/elbo_per_{UNITS[run.split('/')[0]]}"  # the unit in the tag: like compared with like
        assert tag in shared, (run, shared)
        points = data.read_scalars(ctx, experiment_id="", plugin_name="scalars", downsample=100,
                                   run_tag_filter=_filter([run, train], [tag]))
        [test_point] = points[run][tag]
        assert test_point.step == points[train][tag][-1].step  # last.pt was evaluated


def test_hparams_columns_lead_with_what_matters_and_metrics_with_the_test_split(logdir):
    """Whichever run's definition TensorBoard reads over the whole logdir: the five columns it ticks are the
    sweep's varied key or architecture, data and the learning rate(s) before batch size and epochs; integers are
    text; the metrics are test.py's, then the best monitored value, each named once. Over the sweep folder alone,
    seed (what it varies) leads."""
    from tensorboard.plugins.hparams import api_pb2

    experiment = hparams_experiment(logdir)
    names = [info.name for info in experiment.hparam_infos]
    assert names[:2] in (["architecture", "data"], ["seed", "architecture"]), names
    types = {info.name: info.type for info in experiment.hparam_infos}
    assert types["epochs"] == types["seed"] == types["batch_size"] == api_pb2.DATA_TYPE_STRING
    metrics = [(info.name.group, info.name.tag.split("/")[0]) for info in experiment.metric_infos]
    assert metrics[-1] == ("", "best") and set(metrics[:-1]) == {("test", "epoch")}, metrics
    titles = [info.display_name for info in experiment.metric_infos]
    assert len(set(titles)) == len(titles) and all(title.split()[0] in ("test", "best") for title in titles), titles
    [sweep_folder] = [path for path in (logdir / "svae_gmm" / "sweeps").iterdir() if path.is_dir()]
    names = [info.name for info in hparams_experiment(sweep_folder).hparam_infos]
    assert names[:5] == ["seed", "architecture", "batch_size", "data", "epochs"], names
    rows = hparams_session_groups(logdir, experiment)
    assert len(rows) == len(ARCHITECTURES) + 2  # every training is a row, whichever definition is read


def test_figures_land_in_the_val_and_test_runs_and_files(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [run_dir] = (logdir / "svae_gmm").glob("[0-9]*")
    val = EventAccumulator(str(run_dir / "val"), size_guidance={"images": 0}).Reload()
    assert val.Tags()["images"], "SVAE-GMM draws its clusters"
    pngs = sorted(path.name for path in (run_dir / "figures").glob("*.png"))
    assert any(name.endswith("_epoch1.png") for name in pngs) and any(name.startswith("test_") for name in pngs)


def _filter(runs: list[str], tags: list[str]):
    from tensorboard.data import provider as data_provider

    return data_provider.RunTagFilter(runs=runs, tags=tags)
