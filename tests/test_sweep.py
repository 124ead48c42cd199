"""sweep.py: seeds, grids, parallel workers, Optuna search with pruning and constraints, shared storages,
resume after SIGKILL, TensorBoard layout and bad input. Tiny SVAE-GMM runs (about a second each)."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import sweep
from trainer.components import load_and_check
from trainer.sweep.liveness import original_number
from trainer.sweep.spec import SweepSpec, read_space
from tests.conftest import ROOT, one_line_error
from tests.test_tensorboard import hparams_experiment, hparams_session_groups

TINY = ["-c", "configs/svae_gmm.yaml", "--epochs", "3", "--set", "trainer.len_epoch=4",
        "--set", "arch.args.hidden_dims=[8]", "--set", "arch.args.num_components=6",
        "--set", "arch.args.max_iter=20", "--set", "data_loader.args.points_per_class=20",
        "--set", "data_loader.args.test_points_per_class=20", "--set", "trainer.visualize_every=0",
        "--set", "arch.args.eval_samples=2", "--iw-samples", "4"]


def tiny(tmp_path: Path, *args: str) -> list[str]:
    return [*TINY, "--set", f"trainer.save_dir={tmp_path / 'saved'}", *args]


def sweep_folders(tmp_path: Path) -> list[Path]:
    root = tmp_path / "saved" / "svae_gmm" / "sweeps"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def read_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "results.csv") as f:
        return list(csv.DictReader(f))


def run_config(folder: Path, run: str) -> dict:
    return yaml.safe_load((folder / run / "config.yaml").read_text())


@pytest.mark.integration
def test_seeds_give_one_row_per_run_and_a_summary_over_seeds(tmp_path, capsys):
    assert sweep.main(tiny(tmp_path, "--seeds", "0", "1", "2")) == 0
    [folder] = sweep_folders(tmp_path)
    assert len(folder.name) == len("1130-101500") and folder.name[4] == "-"
    rows = read_rows(folder)
    assert [row["seed"] for row in rows] == ["0", "1", "2"]
    assert [row["status"] for row in rows] == ["complete"] * 3
    for row in rows:  # every test metric of test.py, and the best monitored value (monitor: max elbo)
        assert {"elbo", "iw_nll", "ari", "nmi", "components_in_use", "best_elbo"} <= set(row)
        metrics = json.loads((folder / row["run_dir"] / "test_metrics.json").read_text())
        assert float(row["ari"]) == metrics["ari"] and row["checkpoint"] == "model_best.pt"
        assert run_config(folder, row["run_dir"])["seed"] == int(row["seed"])
    aris = [float(row["ari"]) for row in rows]
    summary = (folder / "summary.md").read_text()
    line = next(line for line in summary.splitlines() if line.startswith("| 3 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    header = [c.strip() for c in summary.splitlines()[2].strip("|").split("|")]
    ari_cell = cells[header.index("ari")]
    mean, sd = sum(aris) / 3, (sum((a - sum(aris) / 3) ** 2 for a in aris) / 2) ** 0.5
    assert ari_cell == f"{mean:.4g} ± {sd:.4g} ({min(aris):.4g} – {max(aris):.4g})"
    assert header[0] == "runs" and cells[0] == "3"
    assert "complete" in capsys.readouterr().out


@pytest.mark.integration
def test_set_short_flags_and_grid_apply_to_every_run(tmp_path):
    args = tiny(tmp_path, "--lr", "0.02", "--bs", "10", "--seeds", "3", "4",
                "--grid", "arch.args.rho=0.01,0.05", "--grid", "arch.args.hidden_dims=[8],[6, 6]")
    assert sweep.main(args) == 0
    [folder] = sweep_folders(tmp_path)
    rows = read_rows(folder)
    assert len(rows) == 2 * 2 * 2  # the Cartesian product, each point with every seed
    seen = set()
    for row in rows:
        config = run_config(folder, row["run_dir"])
        assert config["optimizer"]["args"]["lr"] == 0.02 and config["data_loader"]["args"]["batch_size"] == 10
        assert config["trainer"]["epochs"] == 3
        point = (config["arch"]["args"]["rho"], tuple(config["arch"]["args"]["hidden_dims"]), config["seed"])
        assert str(point[0]) == row["arch.args.rho"] and str(list(point[1])) == row["arch.args.hidden_dims"]
        seen.add(point)
    assert seen == {(r, h, s) for r in (0.01, 0.05) for h in ((8,), (6, 6)) for s in (3, 4)}
    assert rows[0]["run"] == "000-rho=0.01-hidden_dims=_8_-seed=3"


@pytest.mark.parametrize("args, message", [
    (["--grid", "arch.args.no_such_knob=1,2"], "no_such_knob"),
    (["--grid", "trainer.no_such_key=1,2"], "unknown config key 'trainer.no_such_key'"),
    (["--grid", "arch.args.rho="], "the grid is empty"),
    (["--grid", "arch.args.rho=0.1", "--objective", "max no_such_metric"], "do not produce 'no_such_metric'"),
    (["--grid", "arch.args.rho=-1"], "rho"),
])
def test_bad_grid_or_objective_is_one_line_and_starts_nothing(tmp_path, capsys, args, message):
    assert sweep.main(tiny(tmp_path, *args)) == 2
    err = one_line_error(capsys.readouterr().err)
    assert message in err
    assert not (tmp_path / "saved").exists()


def test_grid_rejects_unknown_keys_exactly_as_set_does(tmp_path, capsys):
    assert sweep.main(tiny(tmp_path, "--grid", "trainer.no_such_key=1")) == 2
    grid_error = capsys.readouterr().err
    assert sweep.main(tiny(tmp_path, "--set", "trainer.no_such_key=1")) == 2
    assert capsys.readouterr().err == grid_error


def write_space(tmp_path: Path, space: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


SPACE = {"optimizer.args.lr": {"type": "log", "low": 1e-4, "high": 3e-2},
         "arch.args.rho": {"type": "float", "low": 0.01, "high": 0.1},
         "arch.args.num_components": {"type": "int", "low": 4, "high": 8},
         "arch.args.activation": {"type": "categorical", "choices": ["tanh", "relu"]}}


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "search").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_search_spaces_fit_their_configs(path):
    """configs/search/<name>[.<variant>].yaml searches configs/<name>.yaml: every parameter at its ends builds."""
    config = load_and_check(ROOT / "configs" / f"{path.name.split('.')[0]}.yaml")
    spec = SweepSpec(config=config, seeds=[0], space=read_space(path))
    spec.check()
    assert len(spec.space) >= 2


@pytest.mark.parametrize("space, message", [
    ({"arch.args.no_such_knob": {"type": "float", "low": 0, "high": 1}}, "no_such_knob"),
    ({"trainer.no_such_key": {"type": "int", "low": 0, "high": 1}}, "unknown config key 'trainer.no_such_key'"),
    ({"arch.args.rho": {"type": "gaussian"}}, "type one of float, log, int, categorical"),
    ({"arch.args.rho": {"type": "log", "low": 0, "high": 1}}, "low > 0"),
    ({"arch.args.activation": {"type": "categorical", "choices": ["tanh", "no_such_activation"]}},
     "no_such_activation"),
])
def test_bad_search_space_is_one_line_and_starts_nothing(tmp_path, capsys, space, message):
    args = tiny(tmp_path, "--search", str(write_space(tmp_path, space)), "--objective", "max elbo")
    assert sweep.main(args) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "saved").exists()


@pytest.mark.parametrize("storage", ["sqlite:////no/such/folder/study.db", "journal:/no/such/folder/study.log",
                                     "postgresql://user@127.0.0.1:1/db"])
def test_unreachable_storage_is_one_line_and_starts_nothing(tmp_path, capsys, storage):
    if storage.startswith("postgresql"):
        pytest.importorskip("psycopg", reason="no PostgreSQL driver: pip install -r requirements-scale.txt")
    args = tiny(tmp_path, "--search", str(write_space(tmp_path, SPACE)), "--objective", "max elbo",
                "--storage", storage)
    assert sweep.main(args) == 2
    err = one_line_error(capsys.readouterr().err)
    assert f"--storage {storage}: cannot open the study storage" in err
    assert not (tmp_path / "saved").exists()


def test_a_missing_postgresql_driver_names_the_package_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg fails, as where it is not installed
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    storage = "postgresql://postgres@127.0.0.1:1/optuna"
    args = tiny(tmp_path, "--search", str(write_space(tmp_path, SPACE)), "--objective", "max elbo",
                "--storage", storage)
    assert sweep.main(args) == 2
    err = one_line_error(capsys.readouterr().err)
    assert err == (f"error: --storage {storage}: the PostgreSQL driver is not installed: pip install -r "
                   f"requirements-scale.txt (psycopg[binary])")
    assert not (tmp_path / "saved").exists()


@pytest.mark.parametrize("flags, message", [
    (["--storage", "journal:{tmp}/study.log", "--heartbeat-interval", "5"], "keeps no heartbeats"),
    (["--grace-period", "30"], "--grace-period longer than it, got 60 and 30"),
    (["--heartbeat-interval", "0"], "--heartbeat-interval must be >= 1 s"),
])
def test_bad_heartbeat_flags_are_one_line_and_start_nothing(tmp_path, capsys, flags, message):
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    args = tiny(tmp_path, "--search", str(write_space(tmp_path, SPACE)), "--objective", "max elbo", *flags)
    assert sweep.main(args) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "saved").exists()


def test_a_dead_workers_trial_is_failed_once_and_retried_in_its_run_folders(tmp_path):
    """liveness.fail_dead_trials on a study.db: a RUNNING trial claimed by this folder whose run lock is free
    becomes FAIL plus one WAITING retry with its parameters and reported epochs (the next ask takes it, and its
    runs go in t0000-*), and so does one of a sweep begun before claims (only its sweep_folder recorded); a trial
    whose lock is held, or claimed by another folder, is left to its worker and its heartbeats."""
    import optuna
    from optuna.trial import TrialState

    from trainer.sweep import liveness, search

    folder, elsewhere = tmp_path / "sweep", tmp_path / "other"
    folder.mkdir()
    storage = search.open_storage(None, folder)
    study = optuna.create_study(storage=storage)
    with liveness.asking_with_heartbeats():
        dead, alive, remote = (study.ask() for _ in range(3))
    for trial, claimed_in in ((dead, folder), (alive, folder), (remote, elsewhere)):
        trial.suggest_float("x", 0.0, 1.0)
        liveness.claim(trial, claimed_in)
    dead.report(0.5, 1)
    with liveness.asking_with_heartbeats():
        legacy = study.ask()  # a trial of a sweep begun before claims: only its folder recorded
    legacy.set_user_attr("sweep_folder", str(folder.resolve()))
    lock = liveness.run_lock(folder, "t0001")
    assert lock.acquire()  # alive's worker holds its run lock
    liveness.fail_dead_trials(study, storage, folder)
    liveness.fail_dead_trials(study, storage, folder)  # a second look retries nothing twice
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING, TrialState.FAIL,
                                         TrialState.WAITING, TrialState.WAITING]
    assert [liveness.original_number(t) for t in trials[4:]] == [0, 3]
    retry = trials[4]
    assert (retry.params, retry.intermediate_values) == (trials[0].params, {1: 0.5})
    assert liveness.is_retry(retry) and liveness.original_number(retry) == 0
    assert liveness.run_prefix(retry) == "t0000" and liveness.claimed_folder(retry) is None
    assert liveness.claimed_folder(trials[0]) == str(folder.resolve())
    with liveness.asking_with_heartbeats():
        asked = study.ask()
    assert asked.number == 4 and asked.suggest_float("x", 0.0, 1.0) == trials[0].params["x"]
    lock.release()


@pytest.mark.integration
def test_search_applies_suggested_values_and_records_every_trial(tmp_path):
    import optuna

    args = tiny(tmp_path, "--search", str(write_space(tmp_path, SPACE)), "--trials", "4", "--objective",
                "min iw_nll", "--constraint", "components_in_use<=100", "--sampler-seed", "3")
    assert sweep.main(args) == 0
    [folder] = sweep_folders(tmp_path)
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{folder / 'study.db'}")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    rows = read_rows(folder)
    for trial, row in zip(trials, rows):
        config = run_config(folder, row["run_dir"])
        assert config["optimizer"]["args"]["lr"] == trial.params["optimizer.args.lr"]
        assert config["arch"]["args"]["num_components"] == trial.params["arch.args.num_components"]
        assert config["arch"]["args"]["activation"] == trial.params["arch.args.activation"]
        assert float(row["trial_value"]) == trial.value == float(row["iw_nll"])
        assert row["feasible"] == "True" and trial.constraints == {"components_in_use<=100": pytest.approx(
            float(row["components_in_use"]) - 100)}
    assert min(t.value for t in trials) == study.best_value
    best_line = (folder / "summary.md").read_text().splitlines()[4]
    assert best_line.startswith(f"| {study.best_trial.number} |")  # best feasible trial first


@pytest.mark.integration
def test_constraint_violations_mark_trials_infeasible(tmp_path):
    import optuna

    args = tiny(tmp_path, "--search", str(write_space(tmp_path, SPACE)), "--trials", "2", "--objective",
                "max elbo", "--constraint", "ari>=2", "--seeds", "0", "1")
    assert sweep.main(args) == 0
    [folder] = sweep_folders(tmp_path)
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{folder / 'study.db'}")
    for trial in study.get_trials():
        aris = [run["metrics"]["ari"] for run in trial.user_attrs["runs"]]
        assert len(aris) == 2 and trial.constraints["ari>=2"] == pytest.approx(2 - min(aris))
        assert trial.value == pytest.approx(sum(r["metrics"]["elbo"] for r in trial.user_attrs["runs"]) / 2)
    assert {row["feasible"] for row in read_rows(folder)} == {"False"}
    summary = (folder / "summary.md").read_text().splitlines()
    feasible = summary[2].split("|").index(" feasible ")
    assert [line.split("|")[feasible].strip() for line in summary[4:]] == ["no", "no"]


@pytest.mark.integration
def test_pruned_trials_stop_early_and_are_recorded_as_pruned(tmp_path):
    """The median pruner watches train elbo after each epoch through the Trainer's after_epoch callback; learning
    rates a thousand times apart make the slow trials fall below the median."""
    import optuna

    space = {"optimizer.args.lr": {"type": "categorical", "choices": [1e-2, 1e-5]}}
    args = tiny(tmp_path, "--search", str(write_space(tmp_path, space)), "--trials", "12", "--objective",
                "max elbo", "--prune", "--sampler", "random", "--sampler-seed", "0", "--epochs", "4")
    assert sweep.main(args) == 0
    [folder] = sweep_folders(tmp_path)
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{folder / 'study.db'}")
    pruned = [t for t in study.get_trials() if t.state.name == "PRUNED"]
    assert pruned, [t.state.name for t in study.get_trials()]
    rows = {row["trial"]: row for row in read_rows(folder)}
    for trial in pruned:
        assert trial.params["optimizer.args.lr"] == 1e-5
        row = rows[str(trial.number)]
        assert row["status"] == "pruned" and int(row["epoch"]) < 4 and row["elbo"] == ""
        last_epoch = max(trial.intermediate_values)
        assert int(row["epoch"]) == last_epoch
        history = (folder / row["run_dir"] / "epochs.jsonl").read_text().splitlines()
        assert len(history) == last_epoch  # training stopped after the pruned epoch
        assert not (folder / row["run_dir"] / "test_metrics.json").exists()
        assert row["trial_value"] == ""  # not Optuna's stand-in, the last intermediate (training) value
    listed = [line.split("|")[1].strip() for line in (folder / "summary.md").read_text().splitlines()[4:]]
    assert set(listed[-len(pruned):]) == {str(t.number) for t in pruned}  # finished trials first


@pytest.mark.parametrize("objective", [pytest.param("min loss", marks=pytest.mark.integration), "max val_elbo"])
def test_an_epoch_logged_objective_is_read_at_the_evaluated_epoch(tmp_path, objective):
    """`max val_elbo` (monitored) and `min loss` (not monitored): the value in epochs.jsonl at the epoch of
    the checkpoint test.py evaluated; epochs.jsonl holds every epoch once."""
    space = {"arch.args.rho": {"type": "float", "low": 0.01, "high": 0.1}}
    args = tiny(tmp_path, "--search", str(write_space(tmp_path, space)), "--trials", "1", "--objective", objective,
                "--set", "trainer.monitor=max val_elbo",
                "--epochs", "4")
    assert sweep.main(args) == 0
    [folder] = sweep_folders(tmp_path)
    [row] = read_rows(folder)
    history = [json.loads(line) for line in (folder / row["run_dir"] / "epochs.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in history] == [1, 2, 3, 4]
    metric = objective.split()[1]
    evaluated = next(entry for entry in history if entry["epoch"] == int(row["epoch"]))
    assert float(row[metric]) == float(row["trial_value"]) == evaluated[metric]
    best = max(entry["val_elbo"] for entry in history)
    assert evaluated["val_elbo"] == best == pytest.approx(float(row["best_val_elbo"]))  # model_best.pt's epoch


@pytest.mark.integration
def test_two_workers_split_the_cores_and_run_every_run_once(tmp_path):
    assert sweep.main(tiny(tmp_path, "--seeds", "0", "1", "2", "--workers", "2", "--threads", "3")) == 0
    [folder] = sweep_folders(tmp_path)
    rows = read_rows(folder)
    assert [row["status"] for row in rows] == ["complete"] * 3
    for row in rows:
        record = json.loads((folder / row["run_dir"] / "result.json").read_text())
        assert record["threads"] == 3
        assert (folder / row["run_dir"] / "train.log").read_text().count("starting run") == 1


def test_default_threads_are_the_cores_over_the_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    started = []
    monkeypatch.setattr(sweep, "start_workers", lambda folder, spec, args, threads, study, storage:
                        started.append(threads))
    sweep.main(tiny(tmp_path, "--workers", "4"))
    assert started == [2]


@pytest.mark.integration
def test_two_commands_on_one_journal_study_share_its_trials(tmp_path):
    """Two sweep processes started at once on a journal file: every trial runs once, the study holds all."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = tmp_path / "study.log"
    args = tiny(tmp_path, "--search", str(write_space(tmp_path, SPACE)), "--trials", "6", "--objective",
                "max elbo", "--storage", f"journal:{journal}", "--study-name", "shared", "--threads", "1")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes = [subprocess.Popen([sys.executable, "sweep.py", *args], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=240) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=JournalStorage(JournalFileBackend(str(journal))))
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(6))
    assert {t.state.name for t in trials} == {"COMPLETE"}
    ran = [line.split()[1] for out, _ in outputs for line in out.splitlines() if line.startswith("[sweep]")]
    assert sorted(ran) == [f"t{i:04d}-seed=0:" for i in range(6)]  # each trial once, over both commands
    [folder] = sweep_folders(tmp_path)  # the same command finds the same sweep folder
    assert len(read_rows(folder)) == 6


@pytest.mark.integration
def test_two_machines_share_a_study_on_a_postgresql_server(tmp_path, postgresql_url):
    """Two sweep.py commands with their own sweep folders (two machines), 2 and 1 workers, sharing only a
    PostgreSQL study with --trials 6: every trial runs exactly once over the three workers, no trial beyond the
    6 starts, each command's results.csv lists the trials it ran, and its summary every trial of the study."""
    import optuna

    commands = []
    for machine, workers in (("a", "2"), ("b", "1")):
        args = [*TINY, "--set", f"trainer.save_dir={tmp_path / machine / 'saved'}", "--search",
                str(write_space(tmp_path, SPACE)), "--trials", "6", "--objective", "max elbo", "--storage",
                postgresql_url, "--study-name", "two-machines", "--workers", workers, "--threads", "1"]
        commands.append(subprocess.Popen([sys.executable, "sweep.py", *args], cwd=ROOT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True))
    outputs = [command.communicate(timeout=300) for command in commands]
    assert [command.returncode for command in commands] == [0, 0], outputs
    trials = optuna.load_study(study_name="two-machines", storage=postgresql_url).get_trials()
    assert sorted(t.number for t in trials) == list(range(6))  # none beyond --trials
    assert {t.state.name for t in trials} == {"COMPLETE"}
    ran = [[line.split()[1][:-1] for line in out.splitlines() if line.startswith("[sweep]")]
           for out, _ in outputs]
    assert sorted(ran[0] + ran[1]) == [f"t{i:04d}-seed=0" for i in range(6)]  # each trial once, over both
    for machine, runs in zip("ab", ran):
        [folder] = sweep_folders(tmp_path / machine)
        assert sorted(row["run"] for row in read_rows(folder)) == sorted(runs)  # the trials it ran
        summary = (folder / "summary.md").read_text().splitlines()
        listed = sorted(int(line.split("|")[1]) for line in summary if line[:3].strip("| ").isdigit())
        assert listed == list(range(6))  # the summary: every trial of the study


def wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.integration
def test_sweep_killed_mid_run_resumes_to_the_same_results(tmp_path):
    """SIGKILL of a 2-worker sweep while its third run is between checkpoints: the workers die with it; the
    same command again skips the finished runs, resumes the interrupted ones from their last.pt and ends
    with the results.csv of an uninterrupted sweep."""
    args = [*TINY, "--seeds", "0", "1", "2", "--epochs", "6", "--set", "trainer.len_epoch=15", "--threads", "1"]
    killed = tmp_path / "killed"
    command = [sys.executable, "sweep.py", *args, "--workers", "2", "--set", f"trainer.save_dir={killed / 'saved'}"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    third = None

    def third_run_has_a_checkpoint() -> bool:
        nonlocal third
        found = sorted(killed.glob("saved/svae_gmm/sweeps/*/002-seed=2/checkpoints/last.pt"))
        third = found[0].parent.parent if found else None
        return third is not None

    wait_for(third_run_has_a_checkpoint)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (third / "result.json").exists(), "the run finished before the kill: make the runs longer"
    folder = third.parent
    wait_for(lambda: subprocess.run(["pgrep", "-f", str(folder)], capture_output=True).returncode == 1, 10)
    finished = {path.parent.name: path.stat().st_mtime_ns for path in folder.glob("*/result.json")}
    # the worker that took the third run had finished its first one; which worker got there first varies
    assert finished.keys() & {"000-seed=0", "001-seed=1"}

    assert subprocess.run(command, cwd=ROOT, capture_output=True).returncode == 0
    assert finished == {run: (folder / run / "result.json").stat().st_mtime_ns for run in finished}  # skipped
    log = (third / "train.log").read_text()
    assert log.count("starting run") == 1 and "resuming run" in log
    assert sweep.main([*args, "--set", f"trainer.save_dir={tmp_path / 'whole' / 'saved'}"]) == 0
    [whole] = sweep_folders(tmp_path / "whole")
    assert (folder / "results.csv").read_text() == (whole / "results.csv").read_text()


@pytest.mark.integration
def test_search_trial_of_a_killed_worker_is_retried_from_its_last_checkpoint(tmp_path):
    """A trial left RUNNING by a dead worker (its run lock free) is failed by the next worker of the same sweep
    folder at once and retried in its run folder, from its last.pt; the study ends with 2 trials started and
    their retry, none RUNNING (SQLite, the default storage)."""
    import optuna

    args = [*TINY, "--search", str(write_space(tmp_path, SPACE)), "--trials", "2", "--objective", "max elbo",
            "--epochs", "10", "--set", "trainer.len_epoch=15", "--threads", "1",
            "--set", f"trainer.save_dir={tmp_path / 'saved'}"]
    process = subprocess.Popen([sys.executable, "sweep.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for(lambda: bool(list(tmp_path.glob("saved/svae_gmm/sweeps/*/t0000-seed=0/checkpoints/last.pt"))))
    process.send_signal(signal.SIGKILL)
    process.wait()
    [folder] = sweep_folders(tmp_path)
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{folder / 'study.db'}")
    assert [t.state.name for t in study.get_trials()] == ["RUNNING"]

    again = subprocess.run([sys.executable, "sweep.py", *args, "--grace-period", "3600"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)  # no wait for a stale heartbeat
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "Warning" not in again.stderr, again.stderr  # Optuna's heartbeat warnings are quieted
    trials = study.get_trials()
    assert [(t.number, t.state.name, original_number(t)) for t in trials] == [
        (0, "FAIL", 0), (1, "COMPLETE", 0), (2, "COMPLETE", 2)]  # trial 1 retries trial 0
    assert trials[1].params == trials[0].params
    log = (folder / "t0000-seed=0" / "train.log").read_text()
    assert log.count("starting run") == 1 and "resuming run" in log
    rows = {row["trial"]: row for row in read_rows(folder)}
    assert (rows["0"]["trial_state"], rows["1"]["retry_of"], rows["1"]["run"]) == ("fail", "0", "t0000-seed=0")
    assert all(math.isfinite(t.value) for t in trials[1:])


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_killed_machines_trial_is_failed_after_the_grace_period_and_retried_elsewhere(tmp_path, request, backend):
    """Machine a (a sweep folder of its own) is SIGKILLed in the middle of its trial; machine b, sharing only the
    storage, fails that trial once its heartbeat is older than the grace period and retries it, restarted (b's
    folder has no last.pt of it). The study ends with 2 trials started, the killed one FAIL and retried, every
    other COMPLETE, none RUNNING."""
    import optuna

    storage = request.getfixturevalue("postgresql_url") if backend == "postgresql" else \
        f"sqlite:///{tmp_path / 'shared.db'}"
    study_name = f"kill-{backend}"

    def machine(name: str) -> subprocess.Popen:
        args = [*TINY, "--search", str(write_space(tmp_path, SPACE)), "--trials", "2", "--objective", "max elbo",
                "--epochs", "10", "--set", "trainer.len_epoch=15", "--threads", "1", "--storage", storage,
                "--study-name", study_name, "--heartbeat-interval", "1", "--grace-period", "3",
                "--set", f"trainer.save_dir={tmp_path / name / 'saved'}"]
        return subprocess.Popen([sys.executable, "sweep.py", *args], cwd=ROOT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)

    a = machine("a")
    try:
        wait_for(lambda: bool(list(tmp_path.glob("a/saved/svae_gmm/sweeps/*/t0000-seed=0/checkpoints/last.pt"))))
        b = machine("b")
        a.send_signal(signal.SIGKILL)
        a.communicate()
        try:
            out, _ = b.communicate(timeout=120)
        finally:
            b.kill()
    finally:
        a.kill()
    assert b.returncode == 0, out
    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials()
    states = {(t.state.name, original_number(t) if t.number != original_number(t) else None) for t in trials}
    assert len(trials) == 3 and states == {("FAIL", None), ("COMPLETE", None), ("COMPLETE", 0)}, states
    [killed] = [t for t in trials if t.state.name == "FAIL"]
    [folder_a], [folder_b] = sweep_folders(tmp_path / "a"), sweep_folders(tmp_path / "b")
    assert killed.number == 0 and killed.user_attrs["claim"]["folder"] == str(folder_a.resolve())
    log = (folder_b / "t0000-seed=0" / "train.log").read_text()
    assert log.count("starting run") == 1 and "resuming run" not in log  # a's last.pt is not in b's folder
    runs = {row["run"]: row["retry_of"] for row in read_rows(folder_b)}  # b ran both, and says which retries
    assert len(runs) == 2 and runs["t0000-seed=0"] == "0", runs


@pytest.mark.integration
def test_runs_live_under_the_sweep_folder_with_their_hyperparameters(tmp_path):
    args = tiny(tmp_path, "--grid", "arch.args.rho=0.01,0.05", "--grid", "data_loader.args.data_seed=0,1",
                "--set", "trainer.tensorboard=true")
    assert sweep.main(args) == 0
    [folder] = sweep_folders(tmp_path)
    assert sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) == [
        "000-rho=0.01-data_seed=0-seed=0", "001-rho=0.01-data_seed=1-seed=0",
        "002-rho=0.05-data_seed=0-seed=0", "003-rho=0.05-data_seed=1-seed=0"]
    experiment = hparams_experiment(folder)
    names = [info.name for info in experiment.hparam_infos]
    assert names[:3] == ["data_loader.args.data_seed", "model.rho", "architecture"], names  # the swept keys lead
    assert names.count("model.rho") == 1  # shown once, under the name hparams_entry gives it
    metrics = [(info.name.group, info.name.tag) for info in experiment.metric_infos]
    assert metrics[0] == ("test", "epoch/elbo_per_point") and ("test", "epoch/ari") in metrics, metrics
    rows = {group.name.rsplit("/", 1)[-1]: group.hparams for group in hparams_session_groups(folder, experiment)}
    assert rows["001-rho=0.01-data_seed=1-seed=0"]["model.rho"].number_value == 0.01
    assert rows["001-rho=0.01-data_seed=1-seed=0"]["data_loader.args.data_seed"].string_value == "1"


@pytest.mark.integration
def test_running_the_finished_command_again_changes_nothing(tmp_path, capsys):
    args = tiny(tmp_path, "--seeds", "0", "1")
    assert sweep.main(args) == 0
    [folder] = sweep_folders(tmp_path)
    before = (folder / "results.csv").read_text()
    capsys.readouterr()
    assert sweep.main(args) == 0
    assert "continuing sweep" in capsys.readouterr().out and sweep_folders(tmp_path) == [folder]
    assert (folder / "results.csv").read_text() == before
    assert sweep.main([*args, "--fresh"]) == 0
    assert len(sweep_folders(tmp_path)) == 2


@pytest.mark.integration
def test_a_failed_run_is_recorded_and_the_sweep_exits_1(tmp_path, capsys):
    args = tiny(tmp_path, "--grid", "optimizer.args.lr=1e-2,1e30", "--set", "trainer.nan_policy=stop")
    assert sweep.main(args) == 1
    [folder] = sweep_folders(tmp_path)
    rows = read_rows(folder)
    assert [row["status"] for row in rows] == ["complete", "failed"]
    assert "non-finite loss" in rows[1]["error"]
    assert "1 run(s) failed: 001-lr=1e+30-seed=0" in capsys.readouterr().err
