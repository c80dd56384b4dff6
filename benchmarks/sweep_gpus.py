"""Packed trials on one GPU: the same 8 MiniLM trials with 1, 2 and 4 trials per GPU, side by side.

A MiniLM or bert.small trial leaves most of a modern GPU idle (Python dispatch, not GPU work, bounds
its steps), so several trials sharing a GPU should finish more trials per hour. Each study is the same
seeded random design (same configurations, full snli-resplit, one epoch) on GPU 0 alone, run with
`--trials-per-gpu K` (and so K workers). Prints one JSON line per K and the ratios against K = 1:
trials per hour and the study's best dev accuracy.

    python benchmarks/sweep_gpus.py                      # 8 trials x K in 1, 2, 4 (goal: >= 2.5x at K = 4)
    python benchmarks/sweep_gpus.py --trials 4 --per-gpu 1 4 --limit-train 20000

Needs a CUDA GPU and a GPU host with mlflow and optuna; without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_study(a, per_gpu: int, out: Path) -> dict:
    import optuna

    from bertnli.sweep.storage import open_storage

    name = f"per-gpu-{per_gpu}"
    cmd = [sys.executable, "-m", "bertnli.cli", "sweep", "--study-name", name, "--trials", str(a.trials)]
    cmd += ["--sampler", "random", "--sampler-seed", "0", "--storage", str(out / "journal.log")]
    cmd += ["--tracking-uri", f"sqlite:///{out / 'mlflow.db'}", "--out", str(out / "sweeps"), "--no-eval-test"]
    cmd += ["--data", a.data, "--space", f"model={a.model}", "--space", "epochs=1", "--space", "lr=2e-5:2e-4:log"]
    cmd += ["--gpus", "0", "--trials-per-gpu", str(per_gpu), "--no-progress", "--experiment", name]
    if a.limit_train:
        cmd += ["--limit-train", str(a.limit_train)]
    t0 = time.time()
    with open(out / f"{name}.log", "w") as log:
        r = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - t0
    if r.returncode != 0:
        sys.exit(f"sweep_gpus: the sweep with {per_gpu} per GPU failed:\n{(out / f'{name}.log').read_text()[-3000:]}")
    study = optuna.load_study(study_name=name, storage=open_storage(str(out / "journal.log")))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {
        "per_gpu": per_gpu,
        "trials": len(done),
        "wall_s": round(wall, 1),
        "trials_per_hour": round(len(done) / wall * 3600, 2),
        "best_dev": max((t.value for t in done), default=None),
        "trial_s": sorted(round((t.datetime_complete - t.datetime_start).total_seconds(), 1) for t in done),
        "placement": placement(out, name),
        "configurations": sorted(json.dumps(t.params, sort_keys=True) for t in done),
    }


def placement(out: Path, experiment: str) -> dict:
    """What the trial runs recorded about their GPU, from the study's MLflow store: the evidence that each
    trial saw its slot, with the names NVML gave and per-trial GPU metrics."""
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = c.get_experiment_by_name(experiment)
    runs = [r for r in c.search_runs([exp.experiment_id]) if "bertnli.gpus" in r.data.tags]
    tag = lambda k: sorted({r.data.tags.get(k, "-") for r in runs})  # noqa: E731
    return {
        "runs": len(runs),
        "gpus": tag("bertnli.gpus"),
        "cuda_visible_devices": tag("bertnli.cuda_visible_devices"),
        "gpu_names": tag("bertnli.gpu_names"),
        "gpu_sharing": tag("bertnli.gpu_sharing"),
        "gpu_metrics": sorted({k for r in runs for k in r.data.metrics if "gpu" in k}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--per-gpu", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "snli-resplit"))
    ap.add_argument("--limit-train", type=int, default=None)
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("sweep_gpus: no CUDA GPU here; nothing measured (run it on a GPU host)")
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in a.per_gpu:  # each study's line as soon as it ends: a cut-short run keeps what it measured
            rows.append(run_study(a, k, Path(tmp)))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "configurations"}), flush=True)
    first = rows[0]
    same = all(r["configurations"] == first["configurations"] for r in rows)
    if any(r["best_dev"] is None for r in rows):
        print("sweep_gpus: a study completed no trial; see the sweep's output above")
        return
    for r in rows[1:]:
        ratio = r["trials_per_hour"] / first["trials_per_hour"]
        print(
            f"{r['per_gpu']} trials per GPU vs {first['per_gpu']}: {ratio:.2f}x "
            f"trials per hour; best dev {r['best_dev']:.4f} vs {first['best_dev']:.4f}"
            + ("" if same else " (the studies' configurations differ: compare with care)")
        )


if __name__ == "__main__":
    main()
