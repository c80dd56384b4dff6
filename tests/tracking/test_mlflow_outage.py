"""A real `mlflow server` that goes away mid-run: the epochs' metrics are kept and sent when it answers again;
when it stays away past the patience, one line says where the run stands and `--resume` records the rest."""

import os
import signal
import subprocess
import sys
import time

import pytest
import requests
from conftest import run_env
from mlflow import MlflowClient
from tiny_runs import Quiet, free_port, tiny_cfg

from bertnli.config import TrackingConfig
from bertnli.tracking.run import MLflowUnreachable, train_run

pytestmark = pytest.mark.slow


class Server:
    """`mlflow server` on 127.0.0.1 over one SQLite store and artifact folder, stopped and started at will."""

    def __init__(self, root):
        self.root, self.port = root, free_port()
        self.url, self.proc = f"http://127.0.0.1:{self.port}", None

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        self.proc = subprocess.Popen(
            cmd, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if requests.get(f"{self.url}/health", timeout=5).ok:
                    return
            except requests.RequestException:
                time.sleep(0.5)
        raise AssertionError("mlflow server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # an outage, not a clean shutdown
            self.proc.wait()
            self.proc = None


@pytest.fixture
def server(tmp_path, monkeypatch, new_store):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the client's own retries would take minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    s = Server(tmp_path / "server")
    new_store(s.root / "mlflow.db")  # migrated already: the server starts sooner
    s.start()
    yield s
    s.stop()


class Outage(Quiet):
    """Stops the server after one epoch's metrics were sent, and (optionally) brings it back after another."""

    def __init__(self, server, down_after: int, up_after: int | None):
        self.server, self.down_after, self.up_after = server, down_after, up_after

    def on_epoch_end(self, m):
        if m.epoch == self.down_after:
            self.server.stop()
        if m.epoch == self.up_after:
            self.server.start()


def _steps(url, run_id):
    return [m.step for m in MlflowClient(url).get_metric_history(run_id, "dev_acc")]


def test_an_outage_during_training_loses_no_epoch_and_logs_none_twice(tiny_snli, tmp_path, server, capsys):
    tracking = TrackingConfig(server.url, "outage", system_metrics=False, patience_s=120)
    cfg = tiny_cfg(tiny_snli, tmp_path, epochs=3, limit_train=80)
    _, run_id = train_run(cfg, tmp_path / "run", tracking, callbacks=[Outage(server, 1, 2)], progress=False)
    run = MlflowClient(server.url).get_run(run_id)
    assert run.info.status == "FINISHED" and sorted(_steps(server.url, run_id)) == [1, 2, 3]
    assert "test_acc" in run.data.metrics
    assert "is unreachable; epoch 2's metrics are kept" in capsys.readouterr().err


def test_an_outage_past_the_patience_is_one_line_and_resume_records_the_rest(tiny_snli, tmp_path, server):
    """Seen: a 5-minute outage killed training (FAILED, or RUNNING while the server was down)."""
    tracking = TrackingConfig(server.url, "outage", system_metrics=False, patience_s=3)
    cfg = tiny_cfg(tiny_snli, tmp_path, epochs=2, limit_train=80)
    with pytest.raises(MLflowUnreachable, match=r"did not answer for 3 s; run \w+ stays RUNNING .*--resume"):
        train_run(cfg, tmp_path / "run", tracking, callbacks=[Outage(server, 1, None)], progress=False)
    server.start()
    _, run_id = train_run(cfg, tmp_path / "run", tracking, resume=True, progress=False)
    run = MlflowClient(server.url).get_run(run_id)
    assert run.info.status == "FINISHED" and _steps(server.url, run_id) == [1, 2] and "test_acc" in run.data.metrics
