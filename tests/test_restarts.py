"""trainer.restarts: short starts from different initial states, the best by a label-free score continues."""
from __future__ import annotations

import copy

import pytest
import torch

import trainer.jobs
import trainer.trainer
from tests.shrinks import tiny_config
from trainer.components import build_data, build_model, load_and_check
from trainer.jobs import train
from trainer.restarts import RestartsMixin, start_seed
from utils.checkpoint import load_checkpoint
from utils.errors import ConfigError
from utils.seeding import seed_everything


def _config(tmp_path, starts: int = 3, start_epochs: int = 2, epochs: int = 3, **data) -> dict:
    config = tiny_config("SVAE-GMM", save_dir=tmp_path / "saved", epochs=epochs, save_period=1, len_epoch=4)
    config["data_loader"]["args"].update(data)
    config["trainer"]["restarts"] = {"starts": starts, "epochs": start_epochs}
    return load_and_check(base=config)


def _last(run) -> dict:
    return load_checkpoint(run.run_dir / "checkpoints" / "last.pt")


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def scripted_scores(monkeypatch):
    """Replace the starts' scores by given values and keep each start's weights at the moment it is scored."""
    seen: list[dict] = []

    def script(scores: list[float]) -> list[dict]:
        def score(self) -> float:
            seen.append(copy.deepcopy(self.model_core.state_dict()))
            return scores[len(seen) - 1]
        monkeypatch.setattr(RestartsMixin, "_start_score", score)
        return seen
    return script


def test_the_best_scored_start_continues_from_where_it_ended(tmp_path, scripted_scores):
    seen = scripted_scores([-3.0, -1.0, -2.0])
    run = train(_config(tmp_path, epochs=2))  # training ends with the starts: the state is the chosen one's
    state = _last(run)
    assert state["restarts"]["scores"] == [-3.0, -1.0, -2.0] and state["restarts"]["best_start"] == 1
    assert _same_weights(state["model"], seen[1]) and not _same_weights(state["model"], seen[0])
    assert (state["epoch"], state["global_step"]) == (2, 2 * 4), "2 epochs of len_epoch 4"
    assert state["restarts"]["best"] is None, "the chosen state is loaded, not carried in every checkpoint"


def test_min_selects_the_smallest_score(tmp_path, scripted_scores):
    scripted_scores([2.0, 1.0, 1.0])
    config = _config(tmp_path, epochs=2)
    config["trainer"]["restarts"]["select"] = "min loss"
    assert _last(train(config))["restarts"]["best_start"] == 1, "a tie keeps the earlier start"


def test_when_the_first_start_wins_the_run_is_the_plain_run(tmp_path, scripted_scores):
    """Start 0 is the run as built; other starts and the choice leave no trace in it (weights, optimizer,
    RNG streams: the continuation is bit for bit the run without restarts)."""
    scripted_scores([0.0, -1.0, -2.0])
    with_restarts = _last(train(_config(tmp_path, epochs=4)))
    plain = _last(train(_config(tmp_path, starts=1, epochs=4)))
    assert _same_weights(with_restarts["model"], plain["model"])
    assert (with_restarts["epoch"], with_restarts["global_step"]) == (plain["epoch"], plain["global_step"])


def test_start_i_begins_from_the_model_built_under_its_seed(tmp_path, monkeypatch):
    reset, begun = RestartsMixin._reset_to_start, {}

    def recorded(self, start):
        reset(self, start)
        begun[start] = copy.deepcopy(self.model_core.state_dict())
    monkeypatch.setattr(RestartsMixin, "_reset_to_start", recorded)
    config = _config(tmp_path, epochs=2)
    train(config)
    assert sorted(begun) == [1, 2], "start 0 is the run as built"
    for start, state in begun.items():
        seed_everything(start_seed(config["seed"], start))
        assert _same_weights(state, build_model(config, build_data(config)).state_dict())
    assert not _same_weights(begun[1], begun[2])


def test_the_score_is_the_validation_elbo_and_the_best_is_chosen(tmp_path):
    run = train(_config(tmp_path, epochs=2))
    progress = _last(run)["restarts"]
    assert len(set(progress["scores"])) == 3
    assert progress["best_start"] == max(range(3), key=progress["scores"].__getitem__)
    for start, score in enumerate(progress["scores"]):  # the validation ELBO of each start's last epoch
        assert score == pytest.approx(progress["logs"][start][-1]["log"]["val_elbo"], rel=1e-6)


@pytest.mark.parametrize("val_points", [2, 0], ids=["validation split", "training split"])
def test_labels_never_choose(tmp_path, monkeypatch, val_points):
    """Scrambled labels in every split give the same scores and the same choice: labels are never read."""
    def scores(scramble: bool) -> list[float]:
        def data_with_scrambled_labels(config):
            data = build_data(config)
            for split in (data.train_set, data.val_set):
                if split is not None:
                    labels = split.tensors["y"]
                    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
                    split.tensors["y"] = labels[order] * 7 + 3
            return data
        monkeypatch.setattr(trainer.jobs, "build_data", data_with_scrambled_labels if scramble else build_data)
        return _last(train(_config(tmp_path, epochs=2, val_points_per_class=val_points)))["restarts"]["scores"]

    assert scores(False) == scores(True)


class _Killed(Exception):
    pass


def test_a_run_killed_inside_a_start_resumes_as_if_uninterrupted(tmp_path, monkeypatch):
    uninterrupted = _last(train(_config(tmp_path, epochs=3)))

    config = _config(tmp_path / "killed", epochs=3)
    run_epoch = trainer.trainer.Trainer._run_epoch
    calls = []

    def killed_in_the_second_start(self, epoch):
        calls.append(epoch)
        if len(calls) == 4:  # start 2, epoch 2: the checkpoint of start 2, epoch 1 is on disk
            raise _Killed
        return run_epoch(self, epoch)

    monkeypatch.setattr(trainer.trainer.Trainer, "_run_epoch", killed_in_the_second_start)
    with pytest.raises(_Killed):
        train(config)
    monkeypatch.setattr(trainer.trainer.Trainer, "_run_epoch", run_epoch)
    [last] = (tmp_path / "killed" / "saved").glob("*/*/checkpoints/last.pt")
    checkpoint = load_checkpoint(last)
    assert checkpoint["restarts"]["start"] == 1 and checkpoint["epoch"] == 1
    resumed = _last(train(load_and_check(base=checkpoint["config"]), checkpoint, last))
    assert _same_weights(resumed["model"], uninterrupted["model"])
    assert resumed["restarts"]["scores"] == uninterrupted["restarts"]["scores"]
    assert (resumed["epoch"], resumed["global_step"]) == (uninterrupted["epoch"], uninterrupted["global_step"])


def test_only_the_chosen_start_draws_curves(tmp_path, scripted_scores):
    scripted_scores([-2.0, -1.0])
    config = _config(tmp_path, starts=2, epochs=3)
    config["trainer"]["tensorboard"] = True
    run = train(config)
    steps = [event.step for event in _scalars(run.run_dir / "train", "epoch/elbo_per_point")]
    assert steps == sorted(steps) and len(steps) == 3, "epochs 1-2 of the chosen start, then epoch 3"
    assert [(e.step, e.value) for e in _scalars(run.run_dir, "restarts/elbo")] == [(1, -2.0), (2, -1.0)]


def _scalars(folder, tag: str) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    return EventAccumulator(str(folder)).Reload().Scalars(tag)


@pytest.mark.parametrize("override, message", [
    ("trainer.restarts.starts=0", "'trainer.restarts.starts' must be >= 1"),
    ("trainer.restarts.epochs=9", "'trainer.restarts.epochs' must be between 1 and trainer.epochs"),
    ("trainer.restarts.select=elbo", "'trainer.restarts.select' must be 'min <metric>' or 'max <metric>'"),
])
def test_bad_restart_settings_name_the_key(tmp_path, override, message):
    config = tiny_config("SVAE-GMM", save_dir=tmp_path, epochs=3)
    config["trainer"]["restarts"] = {"starts": 2, "epochs": 2}
    with pytest.raises(ConfigError, match=message):
        load_and_check(base=config, overrides=[override])


def test_a_select_metric_the_model_does_not_output_is_named(tmp_path):
    config = _config(tmp_path, epochs=2)
    config["trainer"]["restarts"]["select"] = "max state_ari"
    with pytest.raises(ConfigError, match="'trainer.restarts.select' names 'state_ari'"):
        train(config)
    assert not (tmp_path / "saved").exists(), "stopped before any run folder"
