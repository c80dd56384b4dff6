"""The sweep against a real Optuna journal storage and a real MLflow store, with real processes."""

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, run_env
from mlflow import MlflowClient
from tiny_sweeps import (
    S,
    all_runs,
    assert_consistent,
    ran,
    retry_of,
    run_sweep,
    state,
    sweep_cmd,
    wait_until_no_trial_runs,
    write_toml,
)

from bertnli.config import TrackingConfig
from bertnli.sweep.params import parse_param
from bertnli.sweep.space import cells, load_sweep_config


def test_space_parsing_and_cells(tiny_snli):
    p = parse_param("lr", "1e-5:1e-3:log")
    assert (p.kind, p.low, p.high, p.log) == ("float", 1e-5, 1e-3, True)
    assert parse_param("epochs", "1:3").kind == "int"
    assert parse_param("model", "minilm-l6|minilm-l3").choices == ("minilm-l6", "minilm-l3")
    from bertnli import BertnliError

    for bad in [("lr", "3:1"), ("lr", "0:1:log"), ("colour", "1:2"), ("lr", "abc")]:
        with pytest.raises(BertnliError, match="bad sweep space"):
            parse_param(*bad)
    cfg = load_sweep_config(
        None, {"data": str(tiny_snli)}, {}, ["model=a|b", "truncation=longest_first|ratio"], TrackingConfig()
    )
    assert len(cells(cfg)) == 4 and cfg.base.data == str(tiny_snli)


@pytest.mark.slow(70)
def test_sweep_records_parent_children_and_pruned_truthfully(tmp_path, tiny_snli, new_store):
    # one lr that learns this toy data within an epoch and one that cannot, queued in that order
    # (as a user may queue configurations): the median pruner must stop the second at epoch 1;
    # then the two truncation cells: 4 trials
    new_store(tmp_path / "mlflow.db")
    toml = write_toml(
        tmp_path,
        tiny_snli,
        trials=4,
        space='lr = [2e-3, 1e-6]\nbatch_size = [4]\nepochs = [3]\ntruncation = ["longest_first", "ratio"]',
    )
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    queued = optuna.create_study(
        study_name="s", storage=JournalStorage(JournalFileBackend(str(tmp_path / "journal.log"))), direction="maximize"
    )
    for lr in (2e-3, 1e-6):
        queued.enqueue_trial({"lr": lr, "batch_size": 4, "epochs": 3, "truncation": "ratio"})
    r = run_sweep(tmp_path, toml, fresh=True)  # a process of its own: the parent's Source is its command line
    assert "best trial" in r.stdout and "optuna-dashboard" in r.stdout
    st, parents, children = state(tmp_path)
    assert_consistent(st, parents, children, 4)
    assert st.get_trials()[1].state == S.PRUNED and st.get_trials()[1].params["lr"] == 1e-6
    first = [t.params["truncation"] for t in st.get_trials()[2:4]]
    assert sorted(first) == ["longest_first", "ratio"]  # then every cell
    assert any(t.state == S.PRUNED for t in st.get_trials())  # the median pruner acted
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    files = [a.path for a in c.list_artifacts(parents[0].info.run_id)] + [
        a.path for a in c.list_artifacts(parents[0].info.run_id, "plots")
    ]
    assert "trials.csv" in files and "plots/optimization_history.png" in files
    assert {f"plots/{p}.png" for p in ("param_importances", "slice", "parallel_coordinate")} <= set(files)
    assert not [k for k in parents[0].data.tags if k.startswith("bertnli.plot_skipped")]  # laid out without error
    best = st.best_trial
    assert parents[0].data.metrics["best_dev_acc"] == pytest.approx(best.value)
    assert parents[0].data.tags["mlflow.source.name"] == "bertnli-exp sweep"  # the runs table's Source column
    assert parents[0].data.metrics["system/cpu_utilization_percentage"] >= 0  # the parent's own system metrics
    assert parents[0].data.metrics["system/system_memory_usage_megabytes"] > 0
    assert [
        a.path for a in c.list_artifacts(best.user_attrs["mlflow_run_id"], "checkpoint")
    ]  # best keeps its checkpoint
    kept = [p for p in (tmp_path / "out" / "s").glob("trial-*/best")]
    assert len(kept) == 1  # and only the best


@pytest.mark.slow
def test_sigkill_mid_trial_then_rerun_ends_with_exactly_n(tmp_path, tiny_snli, new_store):
    new_store(tmp_path / "mlflow.db")
    toml = write_toml(tmp_path, tiny_snli, trials=2, extra="grace_s = 3600")
    proc = subprocess.Popen(
        sweep_cmd(tmp_path, toml), cwd=ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until trial 1 is running, then kill -9 the sweep
        logs = list((tmp_path / "out" / "s").glob("trial-001.log")) if (tmp_path / "out" / "s").is_dir() else []
        if logs and (tmp_path / "out" / "s" / "trial-001" / "mlflow_run.json").is_file():
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_until_no_trial_runs(tmp_path)  # a trial ends with its sweep process (it watches its worker's pipe)
    st, _, children = state(tmp_path)
    assert any(t.state == S.RUNNING for t in st.get_trials())  # the kill really left a trial behind
    run_sweep(tmp_path, toml)
    st, parents, children = state(tmp_path)
    assert_consistent(st, parents, children, 2)
    failed = [t for t in ran(st.get_trials()) if t.state == S.FAIL]
    assert len(failed) == 1
    retried = [t for t in st.get_trials() if retry_of(t) == failed[0].number]
    assert retried and retried[0].params == failed[0].params  # the lost configuration ran again
    logged = Path(parents[0].info.artifact_uri.removeprefix("file://"))
    summary = {p: p.stat().st_mtime_ns for p in logged.rglob("*") if p.is_file()}
    assert any(p.name == "trials.csv" for p in summary) and any(p.suffix == ".png" for p in summary)
    run_sweep(tmp_path, toml)  # a third invocation adds nothing and reuses the parent
    st2, parents2, _ = state(tmp_path)
    assert len(st2.get_trials()) == len(st.get_trials()) and len(parents2) == 1
    assert parents2[0].info.status == "FINISHED"
    assert {p: p.stat().st_mtime_ns for p in logged.rglob("*") if p.is_file()} == summary  # nothing to log again


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 4])
def test_worker_processes_share_one_study_and_end_with_exactly_n(tmp_path, tiny_snli, processes):
    # A fresh MLflow store (no new_store): the processes race its schema migration too. More workers than
    # slots at the end: 2 processes for an odd N, 4 processes for 3 trials.
    n = {2: 5, 4: 3}[processes]
    toml = write_toml(tmp_path, tiny_snli, trials=n)
    procs = [
        subprocess.Popen(
            sweep_cmd(tmp_path, toml),
            cwd=ROOT,
            env=run_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-2000:]
    st, parents, children = state(tmp_path)
    trials = ran(st.get_trials())
    assert sum(t.state in (S.COMPLETE, S.PRUNED) for t in trials) == n  # exactly N, however the workers raced
    unfinished = {t.number: (t.state.name, t.user_attrs) for t in trials if t.state in (S.RUNNING, S.FAIL)}
    assert not unfinished, unfinished
    assert not [t for t in st.get_trials() if t.state in (S.RUNNING, S.WAITING)]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [
        t.number for t in trials
    ]  # one run per trial that ran
    # the election: of every parent ever made (deleted losers too), one survives, and every child is under it
    every = all_runs(tmp_path)
    survivors = [
        r for r in every if r.data.tags.get("bertnli.role") == "sweep-parent" and r.info.lifecycle_stage == "active"
    ]
    assert [r.info.run_id for r in survivors] == [parents[0].info.run_id]
    kids = [r for r in every if r.data.tags.get("bertnli.role") == "sweep-trial"]
    assert len(kids) == len(children) and {r.data.tags["mlflow.parentRunId"] for r in kids} == {parents[0].info.run_id}
    fresh = [t for t in trials if retry_of(t) is None]
    assert len({tuple(sorted(t.params.items())) for t in fresh}) == len(
        fresh
    )  # each process draws its own configurations
    cells = {(t.params["truncation"],) for t in trials}
    assert cells == {("longest_first",), ("ratio",)}  # queued cells survive a withdrawal


@pytest.mark.slow
def test_failing_trials_are_failed_and_the_sweep_goes_on(tmp_path, tiny_snli, new_store):
    new_store(tmp_path / "mlflow.db")
    broken = tmp_path / "not-a-bert"  # passes the sweep's checks (a folder, a config) but cannot load (no weights)
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    toml = write_toml(
        tmp_path,
        tiny_snli,
        trials=2,
        space=f'model = ["hf:{broken}", "tiny-d2l-random"]\nlr = {{low = 1e-3, high = 3e-3}}',
        extra="max_retries = 1\nfail_limit = 20",
    )  # half the space is broken: not a broken setup; its cell is queued first (it fails, is retried, fails)
    run_sweep(tmp_path, toml, "--trial-start", "exec")  # trial processes as fresh interpreters (fork elsewhere)
    st, parents, children = state(tmp_path)
    failed = [t for t in ran(st.get_trials()) if t.state == S.FAIL]
    assert len(failed) >= 2 and all(t.params["model"] == f"hf:{broken}" for t in failed)
    assert [retry_of(t) for t in failed[:2]] == [None, failed[0].number]  # tried, retried once
    assert all("has no model.safetensors" in t.user_attrs["error"] for t in failed)
    assert_consistent(st, parents, children, 2)


@pytest.mark.slow
def test_a_sweep_whose_every_trial_fails_stops_with_one_line(tmp_path, tiny_snli, new_store):
    new_store(tmp_path / "mlflow.db")
    broken = tmp_path / "not-a-bert"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    toml = write_toml(
        tmp_path,
        tiny_snli,
        trials=20,
        space=f'model = ["hf:{broken}"]\nlr = {{low = 1e-3, high = 3e-3}}',
        extra="max_retries = 0\nfail_limit = 2",
    )
    r = subprocess.run(
        sweep_cmd(tmp_path, toml, "--no-system-metrics"),
        cwd=ROOT,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()[-1]
    assert (
        err.startswith("bertnli-exp: error: stopped: the last 2 trials all failed")
        and "has no model.safetensors" in err
    ), r.stderr[-2000:]
    st, parents, children = state(tmp_path)
    assert [t.state for t in st.get_trials()] == [S.FAIL] * 2  # stopped, not looping forever
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert not [k for k in parents[0].data.metrics if k.startswith("system/")]  # --no-system-metrics: the parent too
    assert all(r.info.status == "FAILED" for r in children)
