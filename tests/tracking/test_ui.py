"""The link `train`, `sweep` and `reproduce` print lands a user on the runs table with their run, in a real
MLflow UI rendered by headless Chromium (MLflow 3 opens experiments on its GenAI overview otherwise)."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import requests
from conftest import run_env
from tiny_runs import free_port, tiny_cfg

from bertnli.config import TrackingConfig
from bertnli.tracking.run import train_run
from bertnli.tracking.store import how_to_see

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=10).ok
    except requests.RequestException:
        return False


def _rendered(url: str, profile) -> str:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=30000",
        "--dump-dom",
        url,
    ]
    return subprocess.run([CHROMIUM, *flags], capture_output=True, text=True, timeout=180).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_printed_link_opens_the_runs_table_holding_the_run(tiny_snli, tmp_path, new_store):
    uri = new_store(tmp_path / "mlflow.db")
    tracking = TrackingConfig(uri, "ui-check", run_name="a-run-the-table-shows")
    _, run_id = train_run(
        tiny_cfg(tiny_snli, tmp_path, epochs=1, limit_train=64),
        tmp_path / "run",
        tracking,
        progress=False,
        keep_checkpoint=False,
    )
    start, url = how_to_see(uri, run_id).split(", then open ")
    assert start.startswith("mlflow ui --backend-store-uri ") and "workflowType=machine_learning" in url
    port = free_port()
    args = start.split()[2:]  # as printed, on a port of our own
    args[args.index("--port") + 1] = str(port)
    ui = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", *args],
        env=run_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not _answers(f"http://127.0.0.1:{port}/health"):
            time.sleep(0.5)
        dom = _rendered(url.replace(":5000/", f":{port}/"), tmp_path / "profile")
    finally:
        os.killpg(ui.pid, signal.SIGKILL)  # the UI's server and its workers
        ui.wait()
    assert "a-run-the-table-shows" in dom  # the run's row in the experiment's runs table
    assert "Detect Issues in Your Traces" not in dom
