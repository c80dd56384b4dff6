"""Races between sweep processes, and between their clocks, on real storages: a real Optuna journal,
a real SQLite MLflow store, real (stand-in) trial processes. No sweep is run: each test drives the
one piece of the sweep that decides the race."""

import contextlib
import dataclasses
import json
import os
import select
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import optuna
import pytest
from conftest import make_rows, write_jsonl_gz
from mlflow import MlflowClient
from mlflow.entities import ViewType

from bertnli.config import TrackingConfig
from bertnli.sweep.space import load_sweep_config
from bertnli.sweep.storage import open_storage

S = optuna.trial.TrialState


def split_files(tmp_path) -> str:
    """A data folder with train and dev splits (a sweep refuses one without them); these races train nothing."""
    folder = tmp_path / "snli"
    folder.mkdir(exist_ok=True)
    for split, seed in (("train", 1), ("dev", 2)):
        write_jsonl_gz(folder / f"snli_1.0_{split}.jsonl.gz", make_rows(8, seed))
    return str(folder)


def sweep_cfg(tmp_path, **sweep):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return load_sweep_config(
        None,
        {"data": split_files(tmp_path)},
        {"study_name": "s", "out_dir": str(tmp_path / "out"), **sweep},
        [],
        TrackingConfig(uri, None),
    )


def test_racing_elections_on_a_study_made_beforehand_leave_one_parent_that_every_process_uses(
    tmp_path, new_store, monkeypatch
):
    """Nobody's create_study wins on a study made beforehand (queued trials, `optuna create-study`), so
    every starter stands for the parent at once. Before (last write won): six starters wrote candidates
    one after another, and a seventh, arriving at the first write, adopted that candidate, which its writer deleted on
    losing to a later write: the seventh's children would sit under a deleted run."""
    from bertnli.sweep import election
    from bertnli.sweep.election import parent_run
    from bertnli.tracking.store import client, get_or_create_experiment

    monkeypatch.setattr(election, "WAIT_S", 0.0)  # every starter stands at once
    new_store(tmp_path / "mlflow.db")
    cfg = sweep_cfg(tmp_path)
    uri = cfg.tracking.tracking_uri
    get_or_create_experiment(client(uri), "s", uri)  # the store exists (its creation is not the race under test)
    journal = str(tmp_path / "journal.log")
    optuna.create_study(study_name="s", storage=open_storage(journal), direction="maximize")

    def starter(_=None) -> str:
        storage = open_storage(journal)  # a process's own handle
        return parent_run(optuna.load_study(study_name="s", storage=storage), storage, cfg, "journal", elector=False)

    def latecomer() -> str:
        """Starts the moment the study's attributes first change (the first write of the election)."""
        watch = optuna.load_study(study_name="s", storage=open_storage(journal))
        deadline = time.time() + 60
        while not watch.user_attrs and time.time() < deadline:
            time.sleep(0.02)
        return starter()

    with ThreadPoolExecutor(7) as pool:
        late = pool.submit(latecomer)
        chosen = list(pool.map(starter, range(6))) + [late.result()]
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("s").experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    live = [
        r.info.run_id
        for r in runs
        if r.data.tags.get("bertnli.role") == "sweep-parent" and r.info.lifecycle_stage == "active"
    ]
    assert len(live) == 1, f"{len(live)} parents survived"
    assert set(chosen) == set(live), f"starters use {len(set(chosen))} parents: {chosen}"  # every child goes under it


def cells_cfg(tmp_path):
    """A study with two model x truncation cells to queue, its MLflow experiment made."""
    from bertnli.tracking.store import client, get_or_create_experiment

    cfg = load_sweep_config(
        None,
        {"data": split_files(tmp_path), "model": "tiny-d2l-random"},
        {"study_name": "s", "out_dir": str(tmp_path / "out"), "storage": str(tmp_path / "journal.log"), "trials": 2},
        ["truncation=longest_first|ratio", "lr=1e-4:1e-3"],
        TrackingConfig(f"sqlite:///{tmp_path / 'mlflow.db'}", None),
    )
    get_or_create_experiment(client(cfg.tracking.tracking_uri), "s", cfg.tracking.tracking_uri)
    return cfg


def starters_at_once(cfg, n: int) -> set[str]:
    """The parent runs that n sweep starters (threads, each its own Sweep) joined, released together."""
    from bertnli.sweep.pool import Sweep

    gate = threading.Barrier(n)

    def starter(_) -> str:
        gate.wait()
        return Sweep(cfg, log=lambda *a: None, progress=False).join()

    with ThreadPoolExecutor(n) as pool:
        return set(pool.map(starter, range(n)))


def queued_cells(cfg):
    """The study, and the fixed params of its WAITING trials."""
    study = optuna.load_study(study_name="s", storage=open_storage(cfg.storage))
    return study, [t.system_attrs["fixed_params"] for t in study.get_trials() if t.state == S.WAITING]


class StandIn:
    """A trial process that trains nothing: it lives until killed, as a trial mid-epoch does."""

    def __init__(self, run):
        report_r, self.report_w = os.pipe()
        self.decide_r, decide_w = os.pipe()
        run.proc = subprocess.Popen(["sleep", "120"])
        run.reports, run.decide = os.fdopen(report_r, "r"), os.fdopen(decide_w, "w", buffering=1)

    def report(self, epoch: int, dev_acc: float) -> None:
        os.write(self.report_w, (json.dumps({"epoch": epoch, "dev_acc": dev_acc}) + "\n").encode())

    def told(self) -> bytes:
        """What the worker answered on the decide pipe (nothing, for a trial it has lost)."""
        ready, _, _ = select.select([self.decide_r], [], [], 0)
        return os.read(self.decide_r, 100) if ready else b""


@pytest.mark.slow  # a stand-in trial process
def test_a_trial_failed_by_another_process_is_lost_at_its_next_epoch_report_not_a_crashed_worker(tmp_path, new_store):
    """An outage longer than `grace` lets another worker fail a live trial. Before: the owner's next
    `trial.report` raised UpdateFinishedTrialError, which ended the worker thread (a crashed sweep)."""
    from bertnli.sweep.space import pruning_ticks as schedule_ticks
    from bertnli.sweep.supervisor import TrialRun

    new_store(tmp_path / "mlflow.db")
    cfg = sweep_cfg(tmp_path, pruner_warmup_epochs=0)
    journal = str(tmp_path / "journal.log")
    storage = open_storage(journal)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    other = optuna.load_study(study_name="s", storage=open_storage(journal))  # the worker that failed it

    # The report itself: no exception, the trial is lost, and nothing is told to it.
    asked = study.ask()
    run = TrialRun(cfg, study, storage, asked, tmp_path / "spec.json", "parent", schedule_ticks(cfg))
    other.tell(asked.number, state=S.FAIL)
    assert run.decide_epoch({"epoch": 1, "dev_acc": 0.5}) == "lost"

    # In the worker's loop: the trial process is ended, the loop returns "lost" instead of raising.
    asked = study.ask()
    run = TrialRun(cfg, study, storage, asked, tmp_path / "spec.json", "parent", schedule_ticks(cfg))
    stand_in = StandIn(run)
    ended: dict = {}

    def supervise():
        try:
            ended["why"] = run.supervise(time.time())
        except BaseException as e:  # noqa: BLE001 - what used to end the worker thread
            ended["raised"] = e

    worker = threading.Thread(target=supervise)
    worker.start()
    deadline = time.time() + 30  # the first heartbeat found the trial RUNNING; the next is HEARTBEAT_S away
    while "heartbeat" not in other.get_trials()[asked.number].user_attrs and time.time() < deadline:
        time.sleep(0.05)
    other.tell(asked.number, state=S.FAIL)
    stand_in.report(1, 0.5)
    worker.join(timeout=60)
    try:
        assert not worker.is_alive() and "raised" not in ended, ended.get("raised")
        assert ended["why"] == "lost"
        assert run.proc.poll() is not None  # the trial process was stopped
        assert stand_in.told() == b""
        outcome = run.finish(ended["why"], 1.0, interrupted=False, log=lambda *_: None)
        assert outcome.state == "LOST"
        frozen = other.get_trials()[asked.number]
        assert frozen.state == S.FAIL and frozen.intermediate_values == {}  # not told again, nothing reported into it
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
        run.close()


@pytest.mark.parametrize("skew", [-90.0, 90.0])
def test_a_live_trial_on_a_host_whose_clock_differs_by_90_s_is_not_reaped(tmp_path, new_store, skew):
    """Another host's heartbeat is written on that host's clock, here `skew` seconds off ours; the reaper
    runs on its own clock, untouched. A reaper that compared the heartbeat with its own clock (as it once
    did) fails the live trial of a host 90 s behind (grace 1 s) and it runs twice; one that judges by
    sightings on its own monotonic clock does not. A dead worker's trial must still be reaped."""
    from bertnli.sweep import reaping

    grace = 1.0
    new_store(tmp_path / "mlflow.db")
    cfg = sweep_cfg(tmp_path, grace_s=grace)
    storage = open_storage(str(tmp_path / "journal.log"))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    other_clock = lambda: time.time() + skew  # noqa: E731 - the other host's
    live, dead, young = study.ask(), study.ask(), study.ask()
    for t in (live, dead):
        t.set_user_attr("worker", {"host": "another-host", "pid": 12345})
        t.set_user_attr("heartbeat", other_clock())
    # `young` was just asked: its worker has not written itself down yet.
    seen = reaping.Sightings()
    time.sleep(grace + 0.1)  # the reaper judges staleness only after `grace` of working storage
    for t in (live,):
        t.set_user_attr("heartbeat", other_clock())  # beats on

    state = lambda t: study.get_trials()[t.number].state  # noqa: E731
    reaping.reap(study, storage, cfg, seen, log=lambda *_: None)
    assert state(live) == S.RUNNING, f"a fresh heartbeat from a clock {skew:+.0f} s off judged stale"
    assert state(young) == S.RUNNING, "a trial asked a moment ago failed as an orphan"
    young.set_user_attr("worker", {"host": "another-host", "pid": 12345})  # its worker writes itself down
    young.set_user_attr("heartbeat", other_clock())
    deadline = time.time() + 4 * grace
    while time.time() < deadline:
        for t in (live, young):
            t.set_user_attr("heartbeat", other_clock())  # their workers beat on
        reaping.reap(study, storage, cfg, seen, log=lambda *_: None)
        time.sleep(0.2)
    assert state(live) == S.RUNNING and state(young) == S.RUNNING
    assert state(dead) == S.FAIL  # a heartbeat that stopped changing for `grace` (our clock) is stale


@pytest.mark.parametrize("round_", range(3))
def test_starters_racing_on_a_new_study_queue_each_cell_once(tmp_path, new_store, round_):
    """Every starter of a sweep used to check "cells queued?" and then queue them; two starters that both
    checked before either queued put every model x truncation cell in the queue twice (a CI run of two
    sweep processes on PostgreSQL ended with 2 trials run and 2 duplicates left WAITING). Now only the
    process that makes the parent run queues them, before anyone can adopt it."""
    from bertnli.sweep.space import cells

    new_store(tmp_path / "mlflow.db")
    cfg = cells_cfg(tmp_path)
    parents = starters_at_once(cfg, 8)
    study, queued = queued_cells(cfg)
    assert len(parents) == 1
    assert sorted(map(str, queued)) == sorted(map(str, cells(cfg))), queued


def test_a_process_that_stops_early_leaves_the_parent_running_for_the_process_still_at_work(tmp_path, new_store):
    """Before: the first process to end (a --timeout, SIGTERM) set the parent run KILLED while another process
    still ran a trial, and MLflow's monitor in that process stopped sampling the parent. Now the parent stays
    RUNNING until the last process at work ends it, and the other process's system metrics go on."""
    from bertnli.sweep.parent import finish_parent, start_parent_metrics
    from bertnli.tracking.store import client, get_or_create_experiment
    from bertnli.tracking.system_metrics import stop_system_metrics

    new_store(tmp_path / "mlflow.db")
    cfg = sweep_cfg(tmp_path)
    cfg = dataclasses.replace(
        cfg, tracking=dataclasses.replace(cfg.tracking, system_metrics=True, system_metrics_interval=0.5)
    )
    uri = cfg.tracking.tracking_uri
    c = client(uri)
    parent = c.create_run(get_or_create_experiment(c, "s", uri), tags={"bertnli.role": "sweep-parent"}).info.run_id
    study = optuna.create_study(study_name="s", storage=open_storage(str(tmp_path / "journal.log")))
    theirs = study.ask()
    theirs.set_user_attr("worker", {"host": "host-b", "pid": 4242})  # another process's live trial
    monitor = start_parent_metrics(cfg, parent)  # that process samples the parent

    def samples() -> int:
        return len(c.get_metric_history(parent, "system/cpu_utilization_percentage"))

    finish_parent(study, cfg, parent, "KILLED", 0)  # this process stops early
    assert c.get_run(parent).info.status == "RUNNING"
    seen = samples()
    time.sleep(3)
    assert samples() > seen, "the other process's system metrics stopped with the first process's end"
    study.tell(theirs, 0.5)  # the other process's trial ends, and then that process
    stop_system_metrics(monitor)
    finish_parent(study, cfg, parent, "FINISHED", 1)
    assert c.get_run(parent).info.status == "FINISHED"


@pytest.mark.parametrize("late", ["waited past elector_wait_s", "clock 120 s ahead"])
def test_a_starter_that_gives_up_on_a_slow_elector_adopts_its_parent(tmp_path, new_store, monkeypatch, late):
    """The study's creator is slow to make its parent run (a fresh store, an outage, here slow to queue the
    cells). Before: a starter that had waited past `elector_wait_s`, or whose clock ran ahead of the
    creator's announced time, held a fallback election of its own while the creator was still at work:
    both queued the cells, and each could publish its own parent. Now the parent is the first one stood
    for in the storage (one write, no read-then-write), timed on nobody's clock but the watcher's own."""
    from bertnli.sweep import election, pool
    from bertnli.sweep.pool import Sweep

    new_store(tmp_path / "mlflow.db")
    cfg = cells_cfg(tmp_path)
    monkeypatch.setattr(election, "BEAT_S", 0.2)
    monkeypatch.setattr(election, "WAIT_S", 1.0)
    monkeypatch.setattr(election, "ELECTOR_WAIT_S", 1.5 if late.startswith("waited") else 60.0)
    seeded, queue = [], pool.Sweep.seed_study

    def slow_seed(self):
        seeded.append(threading.current_thread().name)
        time.sleep(4.0)  # longer than the late starter's patience
        queue(self)

    monkeypatch.setattr(pool.Sweep, "seed_study", slow_seed)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + (120 if threading.current_thread().name == "late" else 0))
    creator = Sweep(cfg, log=lambda *a: None, progress=False)  # creates the study: the elector
    assert creator.elector
    chosen = {}

    def join(name, sweep_factory):
        chosen[name] = sweep_factory().join()

    first = threading.Thread(target=join, args=("creator", lambda: creator), name="creator")
    second = threading.Thread(
        target=join, args=("late", lambda: Sweep(cfg, log=lambda *a: None, progress=False)), name="late"
    )
    first.start()
    deadline = time.time() + 60
    while not seeded and time.time() < deadline:  # the creator has won and is queueing the cells
        time.sleep(0.05)
    second.start()
    first.join(120)
    second.join(120)
    assert not first.is_alive() and not second.is_alive() and set(chosen) == {"creator", "late"}, chosen
    c = MlflowClient(cfg.tracking.tracking_uri)
    runs = c.search_runs([c.get_experiment_by_name("s").experiment_id], run_view_type=ViewType.ALL)
    live = [r.info.run_id for r in runs if r.data.tags.get("bertnli.role") == "sweep-parent"]
    live = [r for r in live if c.get_run(r).info.lifecycle_stage == "active"]
    assert len(live) == 1 and set(chosen.values()) == set(live), (chosen, live)
    assert seeded == ["creator"], seeded  # the cells are queued once, by the process whose parent it is


def test_a_deleted_parent_is_replaced_once_and_a_silent_store_elects_nobody(tmp_path, new_store, monkeypatch):
    """A parent deleted in MLflow gets one successor, which every later starter uses. A tracking server
    that does not answer is an error, not a reason to elect a second parent while others keep the first."""
    from bertnli import BertnliError
    from bertnli.sweep import election
    from bertnli.tracking.store import client, get_or_create_experiment

    monkeypatch.setattr(election, "WAIT_S", 0.0)
    new_store(tmp_path / "mlflow.db")
    cfg = sweep_cfg(tmp_path)
    uri = cfg.tracking.tracking_uri
    get_or_create_experiment(client(uri), "s", uri)
    storage = open_storage(str(tmp_path / "journal.log"))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    first = election.parent_run(study, storage, cfg, "journal", elector=True)
    client(uri).delete_run(first)
    second = election.parent_run(study, storage, cfg, "journal", elector=False)
    third = election.parent_run(optuna.load_study(study_name="s", storage=storage), storage, cfg, "j", elector=False)
    assert second != first and third == second and study.user_attrs[election.PARENT_ATTR] == second

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket_closed_port() as port:
        silent = dataclasses.replace(cfg, tracking=TrackingConfig(f"http://127.0.0.1:{port}", None))
        with pytest.raises(BertnliError, match="could not say whether the study's parent run"):
            election.parent_run(study, storage, silent, "journal", elector=False)
    assert study.user_attrs[election.PARENT_ATTR] == second


@contextlib.contextmanager
def socket_closed_port():
    """A port on 127.0.0.1 that nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def test_a_winner_killed_before_publishing_is_taken_over_once_and_its_cells_are_queued(
    tmp_path, new_store, monkeypatch
):
    """The first candidate stood, then its process died before it queued the cells and published the
    parent (here: a candidate written by hand, nobody beating). Before: the next starters published it
    without the cells, so they were never queued. Now one of them, elected in turn, queues and publishes."""
    from bertnli.sweep import election
    from bertnli.sweep.space import cells

    monkeypatch.setattr(election, "WAIT_S", 0.5)
    new_store(tmp_path / "mlflow.db")
    cfg = cells_cfg(tmp_path)
    storage = open_storage(cfg.storage)
    optuna.create_study(study_name="s", storage=storage, direction="maximize")
    dead = election._create_parent(cfg, "journal")
    election._stand(storage, election._ballot(storage, "s", None), dead)
    parents = starters_at_once(cfg, 4)
    study, queued = queued_cells(cfg)
    assert parents == {dead} and study.user_attrs[election.PARENT_ATTR] == dead
    assert sorted(map(str, queued)) == sorted(map(str, cells(cfg))), queued  # queued, and once
