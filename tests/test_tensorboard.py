"""What a researcher sees: figures as files at the first, periodic and last epochs, one `test` run with test.py's
metrics and figures and no bookkeeping charts, schedules, and one HPARAMS table across architectures read back
with TensorBoard's own hparams backend."""
from __future__ import annotations

import matplotlib.image
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from data_loader import DATA_LOADERS
from model import ARCHITECTURES
from tests.conftest import ROOT
from tests.test_svae_regression import SHRINKS
from logger.tensorboard import curve_tag
from trainer import jobs
from trainer.components import load_and_check
from trainer.jobs import train
from utils.config import read_config_file

MIN_SIDE = 480


def readable_png(path) -> tuple[int, int]:
    """(height, width) of a PNG that matplotlib can read."""
    image = matplotlib.image.imread(path)
    return image.shape[:2]


def probe_config(regression_config: dict, *overrides: str) -> dict:
    config = dict(regression_config, arch={"type": "HookProbe", "args": {"tau": 1.0}})
    return load_and_check(base=config, overrides=list(overrides))


def figure_files(run_dir) -> list[str]:
    return sorted(path.name for path in (run_dir / "figures").glob("*.png"))


def test_figures_are_files_at_the_first_periodic_and_last_epochs(regression_config):
    run = train(probe_config(regression_config, "trainer.epochs=5", "trainer.visualize_every=2",
                             "trainer.tensorboard=true"))
    assert figure_files(run.run_dir) == [f"val_probe_epoch{e}.png" for e in (1, 2, 4, 5)]
    assert all(min(readable_png(run.run_dir / "figures" / name)) >= MIN_SIDE for name in figure_files(run.run_dir))
    val = EventAccumulator(str(run.run_dir / "val")).Reload()
    assert val.Tags()["images"] == ["val/probe"] and len(val.Images("val/probe")) == 4
    assert EventAccumulator(str(run.run_dir / "train")).Reload().Tags()["images"] == []


def test_early_stopping_still_draws_the_last_epoch(regression_config):
    """lr 0: no improvement after epoch 1, so early_stop=2 ends the run at epoch 3, off the period."""
    run = train(probe_config(regression_config, "trainer.epochs=20", "trainer.visualize_every=10",
                             "trainer.early_stop=2", "optimizer.args.lr=0.0"))
    assert figure_files(run.run_dir) == ["val_probe_epoch1.png", "val_probe_epoch3.png"]


@pytest.fixture(scope="module")
def svae_gmm_run(tmp_path_factory):
    """The shrunk SVAE-GMM config (KL warm-up over 2 epochs) trained for 3 epochs and evaluated by test.py."""
    arch_args, data_args, len_epoch, _ = SHRINKS["svae_gmm"]
    config = read_config_file(ROOT / "configs" / "svae_gmm.yaml")
    config["arch"]["args"].update(arch_args, kl_warmup_epochs=2)
    config["data_loader"]["args"].update(data_args)
    config["trainer"].update(epochs=3, len_epoch=len_epoch, save_dir=str(tmp_path_factory.mktemp("saved")),
                             verbosity=0, tensorboard=True, visualize_every=5)
    run_dir = train(load_and_check(base=config)).run_dir
    results = jobs.evaluate(run_dir / "checkpoints" / "last.pt", iw_samples=3, progress=False)
    return run_dir, results


def test_the_test_run_holds_test_metrics_and_figures_and_no_bookkeeping(svae_gmm_run):
    run_dir, results = svae_gmm_run
    test_events = EventAccumulator(str(run_dir / "test")).Reload()
    metrics = {"elbo", "elbo_median", "elbo_worst", "iw_nll", "ari", "nmi", "components_in_use"}
    assert set(test_events.Tags()["scalars"]) == {curve_tag(name, "point") for name in metrics}  # the curves' tags
    train_events = EventAccumulator(str(run_dir / "train")).Reload()
    [tested] = test_events.Scalars("epoch/elbo_per_point")  # on the training curve, at the evaluated checkpoint's step
    assert tested.step == train_events.Scalars("epoch/elbo_per_point")[-1].step and tested.value == pytest.approx(results["elbo"])
    assert {"epoch", "num_examples", "iw_samples"} <= results.keys()  # bookkeeping: in the JSON and the text tab
    images = test_events.Tags()["images"]
    assert images and all(tag.startswith("test/clusters") for tag in images)
    assert any(tag.startswith("test_metrics") for tag in test_events.Tags()["tensors"])
    for split in ("train", "val"):
        other = EventAccumulator(str(run_dir / split)).Reload().Tags()["images"]
        assert not any(tag.startswith("test/") for tag in other)
    for tag in images:  # every figure also as figures/test_<name>.png
        assert min(readable_png(run_dir / "figures" / f"{tag.replace('/', '_')}.png")) >= MIN_SIDE


def test_schedules_are_logged_once_per_epoch(svae_gmm_run):
    run_dir, _ = svae_gmm_run
    train_events = EventAccumulator(str(run_dir / "train")).Reload()
    run_events = EventAccumulator(str(run_dir)).Reload()  # schedules and learning rates: run-level data
    assert [e.value for e in run_events.Scalars("schedule/kl_weight")] == [0.0, 0.5, 1.0]
    assert len(run_events.Scalars("lr/all")) == 1  # constant: written once, no flat line
    # a diagnostic is written when its value changes: no two equal points in a row
    retries = [e.value for e in train_events.Scalars("epoch/jitter_retries")]
    assert retries and all(a != b for a, b in zip(retries, retries[1:])), retries
    assert not any(tag.startswith(("hparam/", "epoch/tau", "epoch/kl_weight", "schedule/", "lr/"))
                   for tag in train_events.Tags()["scalars"])


def _hparams_backend(logdir):
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    backend = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), multiplexer=multiplexer,
                                                            data_provider=provider))
    return backend, context.RequestContext()


def hparams_experiment(logdir):
    """The HPARAMS table's experiment (columns and metrics) as TensorBoard's hparams backend serves it to the
    dashboard (which asks for up to 1000 columns)."""
    backend, request = _hparams_backend(logdir)
    return backend.experiment_from_metadata(request, "", True, backend.hparams_metadata(request, ""),
                                            backend.hparams_from_data_provider(request, "", None), 1000)


def test_hparams_lead_with_architecture_data_and_the_training_settings(svae_gmm_run):
    """The definition the run writes, as TensorBoard's backend serves it: five columns ticked by default
    (architecture, data, lr, batch_size, epochs), integers as text (TensorBoard shows numbers as "3.0000"),
    test.py's metrics first and the best monitored value last, each named once."""
    from tensorboard.plugins.hparams import api_pb2

    run_dir, _ = svae_gmm_run
    experiment = hparams_experiment(run_dir.parent)
    names = [info.name for info in experiment.hparam_infos]
    assert names[:5] == ["architecture", "data", "lr", "batch_size", "epochs"], names
    assert [info.differs for info in experiment.hparam_infos[:4]] == [True, True, True, False]  # what TB ticks first
    assert names[-1] == "seed" and all(name.startswith("model.") for name in names[5:-1]), names
    types = {info.name: info.type for info in experiment.hparam_infos}
    assert types["lr"] == api_pb2.DATA_TYPE_FLOAT64 and types["architecture"] == api_pb2.DATA_TYPE_STRING
    assert types["epochs"] == types["seed"] == types["batch_size"] == api_pb2.DATA_TYPE_STRING
    domain = {info.name: set(info.domain_discrete) for info in experiment.hparam_infos}
    assert domain["architecture"] == set(ARCHITECTURES.names()) and domain["data"] == set(DATA_LOADERS.names())
    assert not domain["epochs"]  # a partial list would hide rows whose value it lacks
    metrics = [(info.name.group, info.name.tag, info.display_name) for info in experiment.metric_infos]
    assert metrics == [("test", "epoch/elbo_per_point", "test elbo_per_point"),
                       ("test", "epoch/iw_nll_per_point", "test iw_nll_per_point"), ("test", "epoch/ari", "test ari"),
                       ("test", "epoch/nmi", "test nmi"), ("test", "epoch/components_in_use", "test components_in_use"),
                       ("", "best/elbo", "best elbo")], metrics  # the fixture monitors max elbo
    [group] = hparams_session_groups(run_dir.parent, experiment)
    assert group.hparams["epochs"].string_value == "3" and group.hparams["lr"].number_value == pytest.approx(0.01)
    values = {value.name.tag: value.value for value in group.metric_values}
    assert values["epoch/elbo_per_point"] == pytest.approx(svae_gmm_run[1]["elbo"]) and "best/elbo" in values


def test_runs_of_one_config_define_one_table_and_other_architectures_keep_their_rows(svae_gmm_run, regression_config):
    """TensorBoard reads one definition per logdir. Runs of one config write the same one, so the choice does
    not matter; a run of another architecture in the same logdir keeps its row, with the shared columns."""
    run_dir, _ = svae_gmm_run
    logdir = run_dir.parent.parent / "mixed"
    regression_config["trainer"].update(save_dir=str(logdir), tensorboard=True, epochs=1)
    first = train(load_and_check(base=regression_config)).run_dir
    second = train(load_and_check(base=regression_config, overrides=["seed=1"])).run_dir
    assert definition_of(first) == definition_of(second)
    train(probe_config(regression_config, "data_loader.args.validation_split=0.25"))
    experiment = hparams_experiment(logdir)
    groups = hparams_session_groups(logdir, experiment)
    assert len(groups) == 3 and {g.hparams["architecture"].string_value for g in groups} == {"LinearTest", "HookProbe"}
    assert all({"data", "batch_size", "epochs", "seed"} <= set(g.hparams) for g in groups)


def definition_of(run_dir):
    """The HPARAMS definition a run folder holds, without its time stamp."""
    from tensorboard.plugins.hparams import metadata

    events = EventAccumulator(str(run_dir)).Reload()
    [content] = [events.SummaryMetadata(tag).plugin_data.content for tag in events.Tags()["tensors"]
                 if tag == metadata.EXPERIMENT_TAG]
    experiment = metadata.parse_experiment_plugin_data(content)
    experiment.ClearField("time_created_secs")
    return experiment


def hparams_session_groups(logdir, experiment):
    """The HPARAMS table's rows, as TensorBoard's hparams backend lists them."""
    from tensorboard.plugins.hparams import api_pb2, list_session_groups

    backend, request = _hparams_backend(logdir)
    columns = [api_pb2.ColParams(hparam=info.name) for info in experiment.hparam_infos] + \
        [api_pb2.ColParams(metric=info.name) for info in experiment.metric_infos]
    query = api_pb2.ListSessionGroupsRequest(col_params=columns, start_index=0, slice_size=100,
                                             allowed_statuses=[api_pb2.STATUS_SUCCESS, api_pb2.STATUS_UNKNOWN])
    return list(list_session_groups.Handler(request, backend, "", query).run().session_groups)


@pytest.mark.parametrize("title", ["Latent means", None])
def test_every_figure_is_titled_with_its_split_and_epoch(tmp_path, title):
    """FigureWriter appends "(val, epoch 3)" to a figure's title, in the title's own font (the caption alone
    titles an untitled figure), in TensorBoard and in the PNG alike."""
    from matplotlib.figure import Figure

    from logger.figures import FigureWriter

    class Recorder:
        def add_image(self, tag, pixels, step, dataformats):
            self.shape = pixels.shape

    fig = Figure(figsize=(4, 3))
    fig.subplots()
    if title:
        fig.suptitle(title, fontsize=17)
    recorder = Recorder()
    FigureWriter(recorder, tmp_path, lambda tag: "f.png", caption="val, epoch 3").add_figure("val/f", fig, 30)
    assert fig.get_suptitle() == (f"{title} (val, epoch 3)" if title else "val, epoch 3")
    assert fig._suptitle.get_fontsize() == (17 if title else 12.0)
    assert readable_png(tmp_path / "f.png") == recorder.shape[:2]
