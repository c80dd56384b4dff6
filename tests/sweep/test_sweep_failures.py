"""Each failure mode of issue #11, reproduced with real sweep processes, a real journal storage and a
real MLflow store: a crashed worker, a kill after the result, a NaN trial, a hung trial, SIGTERM."""

import json
import os
import signal
import subprocess
import time

import optuna
import pytest
from conftest import ROOT, run_env
from mlflow import MlflowClient
from tiny_sweeps import S, assert_consistent, ran, retry_of, run_sweep, state, sweep_cmd, sweep_in_process, write_toml

TIMEOUT = 20  # the hung-trial test's --trial-timeout (s); it counts the forkserver's first imports too


def wait_for(predicate, timeout=300, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def children_of(pid: int) -> list[int]:
    """The trial processes a sweep process started (forked from its forkserver, or exec'ed), not, say,
    its `git rev-parse`."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,stat=,comm="], capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines()]
    parent = {int(r[0]): int(r[1]) for r in rows}

    def descends(p: int) -> bool:
        while p > 1:
            p = parent.get(p, 0)
            if p == pid:
                return True
        return False

    return [int(r[0]) for r in rows if r[3:] == ["bertnli-trial"] and "Z" not in r[2] and descends(int(r[0]))]


@pytest.mark.slow
def test_a_crashed_worker_ends_its_trial_and_the_sweep_exits_non_zero(tmp_path, tiny_snli, monkeypatch, new_store):
    """Before: the worker thread died silently, its trial process died with it (PDEATHSIG), and
    `bertnli-exp sweep` exited 0."""
    from bertnli.sweep.supervisor import TrialRun

    new_store(tmp_path / "mlflow.db")

    def injected(self, msg):
        raise RuntimeError("injected worker fault")

    monkeypatch.setattr(TrialRun, "decide_epoch", injected)
    toml = write_toml(tmp_path, tiny_snli, trials=2, space="lr = [2e-3]\nepochs = [2]")
    r = sweep_in_process(tmp_path, toml)
    assert r.exit_code == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("bertnli-exp: error: sweep worker crashed: RuntimeError: injected worker fault"), r.stderr[
        -2000:
    ]
    st, parents, children = state(tmp_path)
    trial = st.get_trials()[0]
    assert trial.state == S.FAIL and "injected worker fault" in trial.user_attrs["error"]
    assert parents[0].info.status == "FAILED"
    run = [c for c in children if c.data.tags["optuna.trial"] == "0"][0]
    assert run.info.status == "FAILED" and "injected worker fault" in run.data.tags["bertnli.error"]
    assert not [t for t in st.get_trials() if t.state == S.RUNNING]


@pytest.mark.slow
@pytest.mark.parametrize("left", ["summary", "finished-run-only"])
def test_a_kill_after_the_result_was_recorded_adopts_it_on_rerun(tmp_path, tiny_snli, left, new_store):
    """kill -9 after the trial's MLflow run ended FINISHED but before the sweep told Optuna. Before:
    the rerun failed the trial and trained its configuration again (two FINISHED runs, one trial).
    `finished-run-only`: the kill also came before the trial wrote its summary (`trial.json`), so
    only the FINISHED MLflow run holds the result."""
    new_store(tmp_path / "mlflow.db")
    toml = write_toml(
        tmp_path, tiny_snli, trials=1, space="lr = {low = 1e-3, high = 3e-3}\nepochs = [1]", extra="grace_s = 3600"
    )
    proc = subprocess.Popen(
        sweep_cmd(tmp_path, toml), cwd=ROOT, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    t0 = tmp_path / "out" / "s" / "trial-000"
    wait_for(lambda: (t0 / "mlflow_run.json").is_file(), what="trial 0 to start")
    os.kill(proc.pid, signal.SIGSTOP)  # the sweep can no longer tell Optuna anything; trial 0 trains on
    try:
        wait_for(lambda: (t0 / "trial.json").is_file(), what="trial 0 to finish")
        run_id = json.loads((t0 / "mlflow_run.json").read_text())["run_id"]
        c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        wait_for(lambda: not children_of(proc.pid), what="trial 0's process to exit")
        assert c.get_run(run_id).info.status == "FINISHED"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    st, _, _ = state(tmp_path)
    assert [t.state for t in st.get_trials()] == [S.RUNNING]  # the kill really came between the result and the tell
    if left == "finished-run-only":
        (t0 / "trial.json").unlink()
    run_sweep(tmp_path, toml)
    st, parents, children = state(tmp_path)
    assert_consistent(st, parents, children, 1)
    (one,) = st.get_trials()  # adopted: no retry, no further trial
    assert one.state == S.COMPLETE and one.user_attrs["adopted"] is True
    assert one.user_attrs["mlflow_run_id"] == run_id
    assert one.value == c.get_run(run_id).data.metrics["best_dev_acc"]
    assert [t for t in st.get_trials() if retry_of(t) == 0] == []  # trained once
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert len(finished) == sum(t.state == S.COMPLETE for t in st.get_trials())  # MLflow and Optuna agree


@pytest.mark.slow
def test_a_diverging_trial_is_told_to_the_sampler_and_not_retried(tmp_path, tiny_snli, new_store):
    """Before: a NaN trial was FAIL (which TPE ignores) and retried max_retries times, diverging each time."""
    new_store(tmp_path / "mlflow.db")
    toml = write_toml(tmp_path, tiny_snli, trials=1, space="lr = [1e30, 2e-3]\nepochs = [2]", extra="max_retries = 2")
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    queued = optuna.create_study(
        study_name="s", storage=JournalStorage(JournalFileBackend(str(tmp_path / "journal.log"))), direction="maximize"
    )
    queued.enqueue_trial({"lr": 1e30, "epochs": 2})
    run_sweep(tmp_path, toml)
    st, parents, children = state(tmp_path)
    diverged = st.get_trials()[0]
    assert diverged.state == S.PRUNED and diverged.user_attrs["diverged"] is True  # TPE reads PRUNED trials, not FAIL
    assert [t for t in st.get_trials() if retry_of(t) == 0] == [] and len(st.get_trials()) == 1  # PRUNED is done
    run = [c for c in children if c.data.tags["optuna.trial"] == "0"][0]
    assert run.data.tags["bertnli.diverged"] == "true" and "loss became" in run.data.tags["bertnli.end"]
    assert_consistent(st, parents, children, 1)


@pytest.mark.slow(45)
def test_a_hung_trial_times_out_and_the_study_goes_on(tmp_path, tiny_snli, new_store):
    """A stopped trial process stands for a deadlock: the worker's heartbeat kept it looking alive forever.
    The timeout must let a normal trial (process start to exit: seconds) finish on a loaded machine too."""
    new_store(tmp_path / "mlflow.db")
    toml = write_toml(tmp_path, tiny_snli, trials=1, space="lr = [2e-3]\nepochs = [1]", extra="max_retries = 0")
    proc = subprocess.Popen(
        sweep_cmd(tmp_path, toml, "--trial-timeout", str(TIMEOUT)),
        cwd=ROOT,
        env=run_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: children_of(proc.pid), what="trial 0's process")
    os.kill(children_of(proc.pid)[0], signal.SIGSTOP)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    st, parents, children = state(tmp_path)
    hung = st.get_trials()[0]
    assert hung.state == S.FAIL and hung.user_attrs["error"] == f"timed out after {TIMEOUT} s (--trial-timeout)"
    assert_consistent(st, parents, children, 1)
    assert [r.info.status for r in children if r.data.tags["optuna.trial"] == "0"] in ([], ["FAILED"])


@pytest.mark.slow
def test_sigterm_marks_the_sweep_killed_and_the_rerun_resumes_the_trial_from_its_checkpoint(
    tmp_path, tiny_snli, new_store
):
    """Before: SIGTERM killed the sweep with its parent and trial runs left RUNNING. Also: a retried
    trial resumes from the failed attempt's last checkpoint instead of from zero."""
    new_store(tmp_path / "mlflow.db")
    toml = write_toml(tmp_path, tiny_snli, trials=1, space="lr = [2e-3]\nepochs = [3]\nbatch_size = [4]")
    proc = subprocess.Popen(
        sweep_cmd(tmp_path, toml), cwd=ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    t0 = tmp_path / "out" / "s" / "trial-000"
    wait_for(lambda: (t0 / "last.pt").is_file(), what="trial 0's first checkpoint")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "terminated" in err.strip().splitlines()[-1], err[-2000:]
    st, parents, children = state(tmp_path)
    assert parents[0].info.status == "KILLED" and [r.info.status for r in children] == ["KILLED"]
    first = st.get_trials()[0]
    assert first.state == S.FAIL and first.user_attrs["interrupted"] is True
    run_sweep(tmp_path, toml)
    st, parents, children = state(tmp_path)
    assert_consistent(st, parents, children, 1)
    retry = [t for t in st.get_trials() if retry_of(t) == 0][0]
    assert retry.state in (S.COMPLETE, S.PRUNED)
    log = (tmp_path / "out" / "s" / f"trial-{retry.number:03d}.log").read_text()
    assert "resuming from" in log and "epoch 2" in log  # it went on from the checkpoint, not from zero
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = [r for r in children if r.data.tags["optuna.trial"] == str(retry.number)][0]
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "dev_acc")]
    assert sorted(steps) == sorted(set(steps)) and 1 in steps  # the epoch trained before the kill is in the new run too
    assert len(ran(st.get_trials())) == 2  # the interrupted attempt and its retry
