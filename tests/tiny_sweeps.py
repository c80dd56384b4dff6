"""Helpers of the sweep tests: a tiny study's TOML, the `bertnli-exp sweep` command, the study and runs it
left, consistency checks."""

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, run_env
from mlflow import MlflowClient
from tiny_runs import in_process, invoke

S = optuna.trial.TrialState


def write_toml(tmp_path, data, trials=4, space=None, extra=""):
    space = space or (
        "lr = {low = 1e-4, high = 5e-3, log = true}\nepochs = {low = 1, high = 2}\n"
        'truncation = ["longest_first", "ratio"]'
    )
    p = tmp_path / "sweep.toml"
    p.write_text(
        f'[train]\nmodel = "tiny-d2l-random"\ndata = "{data}"\nmax_len = 32\nbatch_size = 16\noptimizer = "adam"\n'
        f'schedule = "constant"\ncache_dir = "{tmp_path / "enc"}"\ndropout = 0.0\n\n'
        f'[sweep]\ntrials = {trials}\nstudy_name = "s"\npruner_startup_trials = 1\n{extra}\n\n[sweep.space]\n{space}\n'
    )
    return p


def sweep_cmd(tmp_path, toml, *extra):
    return [sys.executable, "-m", "bertnli.cli", *sweep_args(tmp_path, toml, *extra)]


def sweep_args(tmp_path, toml, *extra):
    return [
        "sweep",
        "--config",
        str(toml),
        "--storage",
        str(tmp_path / "journal.log"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--out",
        str(tmp_path / "out"),
        *extra,
    ]


def run_sweep(tmp_path, toml, *extra, timeout=600, fresh=False):
    """A whole sweep, which must succeed: in this process (its trials forked from this pytest worker's forkserver,
    which later sweeps reuse, where the main module allows forking), or as a process of its own where `fresh`."""
    if fresh:
        r = subprocess.run(
            sweep_cmd(tmp_path, toml, *extra), cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=timeout
        )
    else:
        r = invoke(sweep_args(tmp_path, toml, *extra))
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def sweep_in_process(tmp_path, toml, *extra):
    """`bertnli-exp sweep` in this process, as click's Result (exit_code, output): for what ends before any trial
    process starts, and for tests that patch the sweep's own code."""
    return in_process(sweep_args(tmp_path, toml, *extra))


def state(tmp_path, study="s"):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    st = optuna.load_study(study_name=study, storage=JournalStorage(JournalFileBackend(str(tmp_path / "journal.log"))))
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name(study).experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("bertnli.role") == "sweep-parent"]
    children = [r for r in runs if r.data.tags.get("bertnli.role") == "sweep-trial"]
    return st, parents, children


def all_runs(tmp_path, study="s"):
    """Every run of the study's experiment, deleted ones too (a parent that lost the election is deleted)."""
    from mlflow.entities import ViewType

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return c.search_runs([c.get_experiment_by_name(study).experiment_id], run_view_type=ViewType.ALL, max_results=1000)


def retry_of(t):
    from bertnli.sweep.reaping import retry_history

    history = retry_history(t)
    return history[0] if history else None


def ran(trials):
    """Trials that ran: all but those a worker withdrew right after asking (it saw N already live), and
    orphans (created by a write whose acknowledgement an outage lost; never owned, never run)."""
    return [t for t in trials if not t.user_attrs.get("stepped_aside") and not t.user_attrs.get("orphan")]


def assert_consistent(st, parents, children, n):
    trials = ran(st.get_trials())
    assert sum(t.state in (S.COMPLETE, S.PRUNED) for t in trials) == n
    assert not [t for t in trials if t.state == S.RUNNING]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert not [r for r in children if r.info.status == "RUNNING"]
    by_trial = {}
    for r in children:
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert r.data.tags["optuna.trial"] not in by_trial  # one child per trial, never two
        by_trial[r.data.tags["optuna.trial"]] = r
    for t in trials:
        r = by_trial.get(str(t.number))
        if t.state == S.COMPLETE:
            assert r.info.status == "FINISHED" and r.data.metrics["best_dev_acc"] == pytest.approx(t.value)
        elif t.state == S.PRUNED:
            assert r.info.status == "KILLED" and r.data.tags["optuna.state"] == "PRUNED"
        elif t.state == S.FAIL and r is not None:  # an interrupted trial's run is KILLED (and the trial is resumed)
            assert r.info.status == ("KILLED" if t.user_attrs.get("interrupted") else "FAILED")


def trial_processes(folder: Path) -> list[int]:
    """Live processes named bertnli-trial whose output goes to a log under `folder` (this test's trials,
    whoever their parent is now)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or (proc / "comm").read_text().strip() != "bertnli-trial":
                continue
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if os.readlink(proc / "fd" / "1").startswith(str(folder)):
                found.append(int(proc.name))
        except OSError:  # it ended meanwhile
            continue
    return found


def wait_until_no_trial_runs(folder: Path, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while trial_processes(folder) and time.time() < deadline:
        time.sleep(0.2)
    assert not trial_processes(folder), "a trial process outlived its sweep"
