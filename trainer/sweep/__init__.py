"""Sweeps (sweep.py): one config trained once per seed, per grid point or per Optuna trial, each run
evaluated as test.py does, and the results tabulated.

    spec.py     what a sweep is: grid, search space, objective, constraints (parsed and checked)
    folder.py   the sweep folder, found again by the same command, and the per-run locks
    run.py      one run: train (or resume) it, evaluate it, record the result
    grid.py     seeds x grid points, claimed by workers through file locks
    search.py   the Optuna study: sampler, pruner, storages, asking for trials up to --trials
    liveness.py heartbeats, and the retry of a trial whose worker died
    report.py   results.csv and summary.md
"""
