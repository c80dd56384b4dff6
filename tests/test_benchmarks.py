"""benchmarks/gpu.py's code paths run (tiny shapes, on the CPU), and without CUDA it says so and exits 0.

The figures themselves come from a GPU machine (benchmarks/README.md); this only keeps the script
from rotting between the sessions that have one."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, run_env
from mlflow import MlflowClient


@pytest.mark.slow
@pytest.mark.parametrize("script", ["gpu.py", "sweep_gpus.py"])
def test_gpu_benchmarks_without_cuda_say_so_and_exit_0(script):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = subprocess.run(
        [sys.executable, f"benchmarks/{script}"], cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "no CUDA GPU here" in r.stdout


@pytest.mark.slow
def test_gpu_benchmark_smoke_on_cpu(tiny_snli, tmp_path):
    out = tmp_path / "gpu.jsonl"
    r = subprocess.run(
        [
            sys.executable,
            "benchmarks/gpu.py",
            "--device",
            "cpu",
            "--smoke",
            "--data",
            str(tiny_snli),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    settings = [row for row in rows if "shape" in row]
    assert len(settings) == 3 and not any("error" in row for row in settings)
    for row in settings:
        assert row["train_seed"] > 0 and row["train_bertnli"] > 0 and row["eval_bertnli"] > 0
        assert row["train_ratio"] == pytest.approx(row["train_bertnli"] / row["train_seed"], rel=1e-3)


@pytest.mark.slow(210)  # seconds on the 2-core machine: conftest runs the longest files first
def test_multi_fidelity_benchmark_runs_both_studies_on_the_same_configurations(tiny_snli, tmp_path, new_store):
    out = tmp_path / "bench"
    new_store(out / "mlflow.db")  # the benchmark's store, ready (no schema migration)
    cmd = [
        sys.executable,
        "benchmarks/multi_fidelity.py",
        "--configs",
        "3",
        "--data",
        str(tiny_snli),
        "--eta",
        "3",
        "--min-fraction",
        "0.333",
        "--out-dir",
        str(out),
        "--",
        "--space",
        "model=tiny-d2l-random",
        "--space",
        "epochs=1",
        "--cache-dir",
        str(tmp_path / "enc"),
        "--max-len",
        "32",
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["same_configurations"] and s["rung_sizes"] == [3, 1]
    assert s["mf"]["trials"] == 4 and s["full"]["trials"] == 3
    assert 0 < s["examples_ratio"] < 1 and 0 <= s["mf"]["test_acc_of_winner"] <= 1
    assert s["audit"][0]["configurations"] == 3
    # A rerun that asks for one study again runs that one only: the other, finished, is reused (the full
    # study: 3 trials to the multi-fidelity study's 4).
    cmd.insert(cmd.index("--"), "--rerun")
    cmd.insert(cmd.index("--"), "full")
    r = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (
        "--study-name full-3-s0" in r.stdout and "--study-name mf-3-s0" not in r.stdout
    )  # only the one asked for ran again
    again = json.loads((out / "summary.json").read_text())
    assert again["full"]["trials"] == 3 and again["full"]["best_params"] == s["full"]["best_params"]
    c = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("full-3-s0").experiment_id], max_results=1000)
    assert (
        sum(r.data.tags.get("bertnli.role") == "sweep-parent" for r in runs) == 1 and len(runs) == 1 + 3
    )  # the first run's are gone


@pytest.mark.slow(60)  # three sweeps
def test_warm_start_benchmark_runs_cheap_cold_and_warm_studies(tiny_snli, tmp_path, new_store):
    out = tmp_path / "bench"
    new_store(out / "mlflow.db")
    cmd = [sys.executable, "benchmarks/warm_start.py", "--seeds", "0", "--cheap-trials", "2", "--cheap-pairs", "48"]
    cmd += ["--trials", "2", "--data", str(tiny_snli), "--out-dir", str(out), "--", "--model", "tiny-d2l-random"]
    cmd += ["--space", "lr=1e-3:5e-3:log", "--max-len", "32", "--cache-dir", str(tmp_path / "enc")]
    r = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    curves = s["best_dev_after_each_trial"]["0"]
    assert len(curves["cold"]) == len(curves["warm"]) == 2
    assert 0 < curves["cheap_best"] <= 1
    import optuna

    from bertnli.sweep.storage import open_storage
    from bertnli.sweep.warm_start import trained_here

    warm = optuna.load_study(study_name="warm-s0", storage=open_storage(str(out / "journal.log"))).get_trials()
    assert len(warm) - len(trained_here(warm)) == 2  # the cheap study's two trials, imported, not trained
