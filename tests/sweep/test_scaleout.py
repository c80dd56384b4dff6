"""Scale-out with real servers: PostgreSQL as Optuna storage and as the backend of a real `mlflow server`,
two sweep processes sharing one study through them. Skips where PostgreSQL's binaries are absent
(.ci/run installs Debian's postgresql)."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import requests
from conftest import ROOT, make_rows, run_env, write_jsonl_gz
from mlflow import MlflowClient
from tiny_sweeps import S, ran, retry_of, write_toml

PG_BIN = next(
    (p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True) if (p / "initdb").is_file()), None
)
pytestmark = [
    pytest.mark.skipif(
        PG_BIN is None or shutil.which("runuser") is None, reason="PostgreSQL server binaries not installed"
    ),
    pytest.mark.slow,
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(*cmd, **kw):
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *map(str, cmd)], check=True, capture_output=True, text=True, **kw)


class Postgres:
    """A real PostgreSQL server on 127.0.0.1 that a test can stop and start again (an outage)."""

    def __init__(self, root: Path):
        self.root, self.data, self.sock, self.port = root, root / "data", root / "sock", free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}"

    def start(self):
        as_postgres(
            PG_BIN / "pg_ctl",
            "-D",
            self.data,
            "-l",
            self.root / "log",
            "-w",
            "-o",
            f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1",
            "start",
        )

    def stop(self, mode="fast"):
        as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="bertnli-pg-"))  # pytest's own tmp is root-only; postgres must reach this
    server = Postgres(root)
    server.sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(server.sock, "postgres")
    as_postgres(PG_BIN / "initdb", "-D", server.data, "-U", "postgres", "--auth=trust")
    server.start()
    for db in ("optuna", "mlflow", "optuna_outage", "optuna_hosts", "optuna_election"):
        as_postgres(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", server.port, "-U", "postgres", db)
    yield server
    server.stop("immediate")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres(pg):
    return pg.url


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    art = tmp_path_factory.mktemp("mlartifacts")
    log = tmp_path_factory.mktemp("mlflow-server") / "stderr.log"  # not a pipe nobody reads (a full one blocks)
    port = free_port()
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"{postgres}/mlflow",
                "--artifacts-destination",
                str(art),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "2",
            ],
            # MLflow 3's job runner (GenAI jobs: a runner and seven huey consumers) is no part of tracking: off, it
            # leaves the 2-core machine to the sweeps and the server starts faster.
            env=run_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # its own process group: the server and its workers end together
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not up yet, or slow to answer on a loaded machine
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start: " + log.read_text()[-2000:])
        yield url
    finally:  # also when the wait itself fails: a server left behind holds its huey job consumers too
        stop_group(proc)


def stop_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """SIGTERM to the server's process group, then SIGKILL to what is left of it after `grace` s: after a
    database outage its workers took half a minute to stop on SIGTERM. Nothing of the server outlives the test."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):  # the group is gone once its last member is
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_two_sweep_processes_share_a_study_through_postgres_and_mlflow_server(
    tmp_path, tiny_snli, postgres, mlflow_server
):
    toml = write_toml(tmp_path, tiny_snli, trials=2)
    storage = f"{postgres}/optuna"
    cmd = [
        sys.executable,
        "-m",
        "bertnli.cli",
        "sweep",
        "--config",
        str(toml),
        "--storage",
        storage,
        "--tracking-uri",
        mlflow_server,
        "--out",
        str(tmp_path / "out"),
    ]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    st = optuna.load_study(study_name="s", storage=storage)
    trials = ran(st.get_trials())
    assert sum(t.state in (S.COMPLETE, S.PRUNED) for t in trials) == 2
    assert not [t for t in trials if t.state in (S.RUNNING, S.FAIL, S.WAITING)]  # no cell queued twice
    c = MlflowClient(mlflow_server)
    runs = c.search_runs([c.get_experiment_by_name("s").experiment_id])
    parents = [r for r in runs if r.data.tags.get("bertnli.role") == "sweep-parent"]
    children = [r for r in runs if r.data.tags.get("bertnli.role") == "sweep-trial"]
    assert len(parents) == 1 and len(children) == len(trials)
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [t.number for t in trials]
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children)
    best = st.best_trial
    assert [
        a.path for a in c.list_artifacts(best.user_attrs["mlflow_run_id"], "checkpoint")
    ]  # artifacts went through the server


@pytest.mark.slow(130)  # seconds on the 2-core machine for this file, 30 of them the outage: conftest runs it first
def test_starters_racing_for_the_parent_on_postgres_agree_on_one(tmp_path, postgres, new_store, monkeypatch):
    """The election's order on an RDB is the lock Optuna takes on the study row while it numbers a
    trial: eight starters with their own connections stand at once and all use the first candidate."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from mlflow.entities import ViewType

    from bertnli.config import TrackingConfig
    from bertnli.sweep import election
    from bertnli.sweep.space import load_sweep_config
    from bertnli.sweep.storage import open_storage
    from bertnli.tracking.store import client, get_or_create_experiment

    monkeypatch.setattr(election, "WAIT_S", 0.0)  # nobody waits for anybody: all stand
    uri = new_store(tmp_path / "mlflow.db")
    cfg = load_sweep_config(None, {"data": str(tmp_path)}, {"study_name": "e"}, [], TrackingConfig(uri, None))
    get_or_create_experiment(client(uri), "e", uri)
    url = f"{postgres}/optuna_election"
    optuna.create_study(study_name="e", storage=open_storage(url), direction="maximize")
    gate = Barrier(8)

    def starter(_) -> str:
        storage = open_storage(url)
        study = optuna.load_study(study_name="e", storage=storage)
        gate.wait()
        return election.parent_run(study, storage, cfg, url, elector=False)

    with ThreadPoolExecutor(8) as pool:
        chosen = list(pool.map(starter, range(8)))
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("e").experiment_id], run_view_type=ViewType.ALL)
    live = [r.info.run_id for r in runs if r.info.lifecycle_stage == "active"]
    assert len(runs) >= 2, "the starters did not race"
    assert len(live) == 1 and set(chosen) == set(live), (chosen, live)


def test_four_workers_ride_out_a_database_outage_longer_than_grace(tmp_path, tiny_snli, pg, mlflow_server):
    """Two sweep processes x --workers 2 on one study; PostgreSQL (Optuna storage and MLflow's backend)
    is stopped for 30 s while trials run, longer than `grace` (20 s; 4 heartbeats). Before: the first worker
    back failed the live trials (their heartbeats were 30 s old) and retried them, so trials ran twice.
    Now nothing is lost, left RUNNING or FAILED, and no configuration runs twice: exactly N trials."""
    n = 5
    toml = write_toml(
        tmp_path,
        tiny_snli,
        trials=n,
        space="lr = {low = 1e-3, high = 3e-3}\nepochs = [3]\nbatch_size = [4]",
        extra="grace_s = 20",
    )
    toml.write_text(toml.read_text().replace('study_name = "s"', 'study_name = "outage"'))
    storage = f"{pg.url}/optuna_outage"
    cmd = [
        sys.executable,
        "-m",
        "bertnli.cli",
        "sweep",
        "--config",
        str(toml),
        "--storage",
        storage,
        "--workers",
        "2",
        "--tracking-uri",
        mlflow_server,
        "--out",
        str(tmp_path / "out"),
    ]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    # One storage object for every poll: a fresh `load_study(storage=URL)` per poll opens a new engine and
    # connection pool each time; on a slow machine they piled up until PostgreSQL refused connections, the
    # polls all failed and the outage never hit a running trial (CI: `assert running_before > 0`).
    poll = None
    deadline, trials, last_error = time.time() + 600, [], None
    while time.time() < deadline and all(p.poll() is None for p in procs):
        try:
            poll = poll or optuna.storages.RDBStorage(storage)  # made once the sweeps have created the schema
            trials = optuna.load_study(study_name="outage", storage=poll).get_trials()
        except Exception as e:  # noqa: BLE001 - the study is not created yet
            last_error = e
        # In full flight: a trial has finished an epoch and has epochs to go (seconds of training left).
        if any(t.state == S.RUNNING and 0 < len(t.intermediate_values) < 3 for t in trials):
            break
        time.sleep(0.5)
    else:
        for p in procs:
            p.kill()
        pytest.fail(f"never saw a trial mid-training before the outage (last poll error: {last_error!r})")
    running_before = sum(t.state == S.RUNNING for t in trials)  # as seen when the loop decided
    pg.stop("fast")  # drops every connection
    time.sleep(30)
    pg.start()
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=900)
        errs.append(err)
        assert p.returncode == 0, err[-3000:]
    assert running_before > 0  # the outage really hit running trials
    assert any("Optuna storage unreachable" in e for e in errs)  # and the sweep really saw it
    trials = optuna.load_study(study_name="outage", storage=storage).get_trials()
    assert sum(t.state in (S.COMPLETE, S.PRUNED) for t in ran(trials)) == n
    assert not [t for t in ran(trials) if t.state != S.COMPLETE and t.state != S.PRUNED]  # no FAIL from the outage
    assert not [t for t in trials if t.state in (S.RUNNING, S.WAITING)]
    assert not [t for t in trials if retry_of(t) is not None]  # nothing was run twice
    c = MlflowClient(mlflow_server)
    runs = c.search_runs([c.get_experiment_by_name("outage").experiment_id])
    parents = [r for r in runs if r.data.tags.get("bertnli.role") == "sweep-parent"]
    children = [r for r in runs if r.data.tags.get("bertnli.role") == "sweep-trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [t.number for t in ran(trials)]
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children)


@pytest.mark.slow(50)
def test_a_trial_retried_on_another_host_resumes_from_the_checkpoint_store(tmp_path, pg, mlflow_server):
    """Two "hosts" (their own --out and host name) on one PostgreSQL study and one `mlflow server`. Host A is
    killed (SIGKILL) after its trial finished epoch 1 of 3; host B retries the trial. Before: B's --out held no
    checkpoint, so the retry trained from epoch 1. Now it resumes at epoch 2 from the checkpoint A put in the
    store (the trial run's artifacts on the server): each epoch is logged once and no epoch is trained twice."""
    data = tmp_path / "snli"
    data.mkdir()
    for split, n in (("train", 3000), ("dev", 80), ("test", 80)):  # epochs long enough to kill A inside epoch 2
        write_jsonl_gz(data / f"snli_1.0_{split}.jsonl.gz", make_rows(n, len(split)))
    toml = write_toml(tmp_path, data, trials=1, space="lr = [2e-3]\nepochs = [3]", extra="grace_s = 10")
    toml.write_text(toml.read_text().replace('study_name = "s"', 'study_name = "hosts"'))
    storage = f"{pg.url}/optuna_hosts"

    def host(name: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "bertnli.cli", "sweep", "--config", str(toml), "--storage", storage]
        cmd += ["--tracking-uri", mlflow_server, "--out", str(tmp_path / name), "--no-progress"]
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=run_env(BERTNLI_HOST=name),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its trial process in its group: one kill ends the host
        )

    c = MlflowClient(mlflow_server)
    a, marker = host("host-a"), tmp_path / "host-a" / "hosts" / "trial-000" / "mlflow_run.json"
    deadline, first = time.time() + 300, None
    while time.time() < deadline and a.poll() is None:
        if first is None and marker.is_file():
            first = json.loads(marker.read_text())["run_id"]
        if first and any(f.path.endswith("done.json") for f in c.list_artifacts(first, "resume/epoch-001")):
            break
        time.sleep(0.05)
    else:
        pytest.fail("host A's trial never stored epoch 1: " + (a.communicate()[0] or "")[-2000:])
    os.killpg(a.pid, signal.SIGSTOP)  # at once: epoch 2 has just begun
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    b = host("host-b")
    out, _ = b.communicate(timeout=600)
    assert b.returncode == 0, out[-3000:]
    st = optuna.load_study(study_name="hosts", storage=storage)
    done = [t for t in st.get_trials() if t.state == S.COMPLETE]
    assert len(done) == 1 and retry_of(done[0]) == 0, [(t.number, t.state) for t in st.get_trials()]
    retry_run = c.get_run(done[0].user_attrs["mlflow_run_id"])
    assert [m.step for m in c.get_metric_history(first, "dev_acc")] == [1]  # A finished epoch 1 only
    assert sorted(m.step for m in c.get_metric_history(retry_run.info.run_id, "dev_acc")) == [1, 2, 3]
    assert retry_run.data.tags["bertnli.start_epoch"] == "2"  # B trained epochs 2 and 3: 3 epochs of steps in all
    assert "resuming from epoch 1 of the checkpoint store" in out
    # Only the winner's weights stay in the store; the killed attempt's checkpoint is gone.
    assert not c.list_artifacts(first, "resume")
    kept = [f.path.rsplit("/", 1)[-1] for f in c.list_artifacts(retry_run.info.run_id, "resume")]
    assert len(kept) == 1 and kept[0].startswith("best-"), kept  # its best weights, no last.pt
    assert c.list_artifacts(retry_run.info.run_id, "checkpoint")  # the winner's weights were logged
