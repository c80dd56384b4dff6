"""Trial processes, forked from the forkserver or exec'ed: what each one receives, and how it ends."""

import os
import signal
import time
from pathlib import Path

import pytest

from bertnli.sweep import launcher
from bertnli.sweep.launcher import ForkedTrial, start_trial


@pytest.fixture(autouse=True)
def forkable(monkeypatch):
    """pytest's console script is a main module a forked child would import again: such a sweep execs.
    These tests are about the forked path itself."""
    monkeypatch.setattr(launcher, "forkable", lambda: True)


def _wait(predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _start(how, tmp_path, spec: Path):
    report_r, report_w = os.pipe()
    decide_r, decide_w = os.pipe()
    args = ["--spec", str(spec), "--number", "7", "--params", "{}", "--out", str(tmp_path / "t"), "--parent-run", "x"]
    proc = start_trial(how, args, dict(os.environ), tmp_path / "trial.log", False, (report_w, decide_r))
    assert isinstance(proc, ForkedTrial) == (how == "fork")
    return proc, (report_r, decide_w)


def _comm(pid) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


@pytest.mark.parametrize("how", ["fork", "exec"])
def test_a_trial_process_is_named_runs_in_the_workers_folder_and_ends_killed(how, tmp_path, monkeypatch):
    """A trial blocked reading its spec (a FIFO): named bertnli-trial, in the worker's cwd (the
    forkserver was started in another one); SIGKILL reads as -9, as with Popen."""
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.fifo"
    os.mkfifo(spec)
    proc, ends = _start(how, tmp_path, spec)
    try:
        assert _wait(lambda: _comm(proc.pid) == "bertnli-trial"), _comm(proc.pid)
        assert os.readlink(f"/proc/{proc.pid}/cwd") == str(tmp_path)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert (b"-m\0bertnli.sweep\0trial" in cmdline) == (how == "exec"), cmdline  # fork: the forkserver's
        assert proc.poll() is None
    finally:
        proc.kill()
        assert proc.wait() == -signal.SIGKILL
        assert proc.returncode == -signal.SIGKILL
        for fd in ends:
            os.close(fd)


@pytest.mark.parametrize("how", ["fork", "exec"])
def test_a_trial_that_fails_exits_1_with_its_error_in_its_log(how, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text("{not json")
    proc, ends = _start(how, tmp_path, spec)
    assert proc.wait() == 1
    assert "JSONDecodeError" in (tmp_path / "trial.log").read_text()
    for fd in ends:
        os.close(fd)


def test_a_forkserver_that_imported_another_checkout_execs_this_one(tmp_path, monkeypatch):
    """The worker's bertnli is not the one the forkserver imported (a worktree, a checkout on
    PYTHONPATH): the forked child execs `python -m bertnli.sweep trial` instead of running stale code."""
    monkeypatch.setattr(launcher, "ROOT", tmp_path / "another-checkout")
    spec = tmp_path / "spec.fifo"
    os.mkfifo(spec)
    proc, ends = _start("fork", tmp_path, spec)
    try:
        assert _wait(lambda: b"-m\0bertnli.sweep\0trial" in Path(f"/proc/{proc.pid}/cmdline").read_bytes())
        assert _wait(lambda: _comm(proc.pid) == "bertnli-trial")
    finally:
        proc.kill()
        proc.wait()
        for fd in ends:
            os.close(fd)


SWEEP_STAND_IN = """
import os, sys, time
from pathlib import Path
from bertnli.sweep.launcher import start_trial
report_r, report_w = os.pipe()
decide_r, decide_w = os.pipe()
args = ["--spec", sys.argv[2], "--number", "0", "--params", "{}", "--out", sys.argv[3], "--parent-run", "x"]
proc = start_trial(sys.argv[1], args, dict(os.environ), Path(sys.argv[3] + ".log"), False, (report_w, decide_r))
print(proc.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.slow  # starts a stand-in sweep process
@pytest.mark.parametrize("how", ["fork", "exec"])
def test_a_trial_ends_when_its_sweep_process_is_killed(how, tmp_path):
    """Before: a forked trial outlived a sweep killed with SIGKILL (every forkserver child holds the
    forkserver's lifeline open, so the forkserver, its parent, stayed, and PDEATHSIG never fired); it
    trained on until its next epoch end. Here the trial waits on its spec (a FIFO) and never gets there."""
    import subprocess
    import sys

    from conftest import run_env

    spec = tmp_path / "spec.fifo"
    os.mkfifo(spec)
    sweep = subprocess.Popen(
        [sys.executable, "-c", SWEEP_STAND_IN, how, str(spec), str(tmp_path / "t")],
        env=run_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    trial = int(sweep.stdout.readline())
    try:
        assert _wait(lambda: _comm(trial) == "bertnli-trial")
    finally:
        sweep.kill()
        sweep.wait()
    try:
        assert _wait(lambda: _gone(trial), timeout=15), "the trial outlived its sweep"
    finally:
        if not _gone(trial):
            os.kill(trial, signal.SIGKILL)


def _gone(pid) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.slow
def test_a_sweep_starts_its_forkserver_before_its_parent_run_and_not_when_the_study_is_done(
    tmp_path, tiny_snli, new_store, monkeypatch
):
    """The forkserver's imports overlap the parent run's making instead of holding up the first trial; a
    rerun of a finished study has no trial to fork and starts nothing."""
    from mlflow import MlflowClient
    from tiny_sweeps import run_sweep, write_toml

    from bertnli.sweep import pool

    new_store(tmp_path / "mlflow.db")
    toml = write_toml(tmp_path, tiny_snli, trials=1, space="lr = [2e-3]\nepochs = [1]")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    calls = []

    def spy(how):
        calls.append((how, client.get_experiment_by_name("s") is None))  # True: no parent run yet
        launcher.warm_up_for(how)

    monkeypatch.setattr(pool, "warm_up_for", spy)
    run_sweep(tmp_path, toml)
    assert calls == [("fork", True)]
    run_sweep(tmp_path, toml)  # the study is done
    assert calls == [("fork", True)]
