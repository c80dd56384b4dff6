"""optuna-dashboard (the `dashboard` extra) over a finished bertnli study's default journal, on 127.0.0.1."""

import subprocess
import sys
import time
from importlib.metadata import entry_points

import pytest
import requests
from conftest import run_env
from tiny_runs import cli, free_port
from tiny_sweeps import write_toml


def _dashboard_cmd() -> list[str]:
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard not installed (pip install -e .[dashboard])")
    (ep,) = entry_points(group="console_scripts", name="optuna-dashboard")
    module, func = ep.value.split(":")
    return [
        sys.executable,
        "-c",
        f"import sys; sys.argv[0] = 'optuna-dashboard'; from {module} import {func}; {func}()",
    ]


@pytest.mark.slow
def test_dashboard_serves_the_trials_of_a_finished_sweep(tmp_path, tiny_snli, new_store):
    cmd = _dashboard_cmd()
    new_store(tmp_path / "mlruns" / "mlflow.db")  # the default tracking URI in the sweep's cwd
    toml = write_toml(tmp_path, tiny_snli, trials=1, space="lr = {low = 1e-4, high = 5e-3, log = true}")
    sweep = cli("sweep", "--config", toml, "--limit-train", "48", "--epochs", "1", cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    journal = tmp_path / "mlruns" / "optuna-journal.log"  # the default storage, which the sweep prints
    assert f"optuna-dashboard {journal}" in sweep.stdout
    port = free_port()
    proc = subprocess.Popen(
        [*cmd, str(journal), "--host", "127.0.0.1", "--port", str(port), "--server", "wsgiref", "--quiet"],
        env=run_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, studies = time.time() + 60, None
        while time.time() < deadline and studies is None:
            if proc.poll() is not None:
                pytest.fail(f"optuna-dashboard exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
            try:
                studies = requests.get(f"{url}/api/studies", timeout=2).json()["study_summaries"]
            except requests.ConnectionError:
                time.sleep(0.5)
        assert studies is not None, "optuna-dashboard did not answer within 60 s"
        (study,) = [s for s in studies if s["study_name"] == "s"]
        trials = requests.get(f"{url}/api/studies/{study['study_id']}", params={"after": 0}, timeout=10).json()[
            "trials"
        ]
        done = [t for t in trials if t["state"] == "Complete"]
        assert len(done) == 1 and all(t["values"][0] > 0 for t in done)
        assert {p["name"] for p in done[0]["params"]} >= {"lr"}
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode is not None
