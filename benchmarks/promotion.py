"""Synchronous rungs against asynchronous promotions (ASHA) for `sweep --fidelity data`, side by side.

For each seed, the same configurations (learning rates drawn log-uniformly from the seed, queued
into both studies before they start) are studied twice with `--workers 2`, once per `--promotion`,
in the order sync, async for even seeds and async, sync for odd ones, so that drift of the machine
falls on both. Each trial process gets `--threads` cores' worth of torch threads (default 1: a
worker is one device, as a GPU slot would be; with 2 threads a lone trial at a rung barrier uses the
idle worker's core, which hides what the barrier costs). Per study: the sweep command's wall time,
the winner's dev accuracy (at the top rung), and the training examples seen (each trial's subset
size x epochs trained).

    python benchmarks/promotion.py --seeds 0 1 --configs 9 --limit-train 6000 --limit-eval 1000

Goals (issue #22): async wall time <= 0.8x sync's, best dev within 1 pp. Prints one JSON line per
study and a summary line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def queue_configurations(a, seed: int, promotion: str, name: str, out: Path) -> None:
    """The study made ahead of the sweep, with its fidelity settings and the seed's configurations queued at rung 0:
    both studies of a seed train the same ones (a sampler seeded by trial number would not: async interleaves
    promotions with draws)."""
    from types import SimpleNamespace

    import optuna

    from bertnli.sweep.halving import SETTINGS_ATTR, settings
    from bertnli.sweep.storage import open_storage

    made = SimpleNamespace(
        fidelity="data", eta=a.eta, min_fraction=a.min_fraction, trials=a.configs, promotion=promotion
    )
    study = optuna.create_study(study_name=name, storage=open_storage(str(out / "journal.log")), direction="maximize")
    study.set_user_attr(SETTINGS_ATTR, settings(made))
    rng = random.Random(seed)
    low, high = math.log(a.lr_low), math.log(a.lr_high)
    for _ in range(a.configs):
        study.enqueue_trial({"lr": math.exp(rng.uniform(low, high)), "model": a.model, "epochs": 1, "rung": 0})


def study(a, seed: int, promotion: str, out: Path) -> dict:
    import optuna

    from bertnli.sweep.storage import open_storage

    name = f"{promotion}-s{seed}"
    queue_configurations(a, seed, promotion, name, out)
    cmd = [sys.executable, "-m", "bertnli.cli", "sweep", "--study-name", name, "--trials", str(a.configs)]
    cmd += ["--sampler", "random", "--sampler-seed", str(seed), "--fidelity", "data", "--eta", str(a.eta)]
    cmd += ["--min-fraction", str(a.min_fraction), "--promotion", promotion, "--workers", str(a.workers)]
    cmd += ["--storage", str(out / "journal.log"), "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}"]
    cmd += ["--out", str(out / "sweeps"), "--no-eval-test", "--no-progress", "--data", a.data]
    cmd += ["--space", f"model={a.model}", "--space", "epochs=1", "--space", f"lr={a.lr_low}:{a.lr_high}:log"]
    cmd += ["--limit-train", str(a.limit_train), "--limit-eval", str(a.limit_eval), "--max-len", str(a.max_len)]
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.time() - t0
    trials = optuna.load_study(study_name=name, storage=open_storage(str(out / "journal.log"))).trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    top = max(int(t.params.get("rung", 0)) for t in done)
    best = max((t for t in done if int(t.params.get("rung", 0)) == top), key=lambda t: t.value)
    rung0 = sorted(
        json.dumps({k: v for k, v in t.params.items() if k != "rung"}, sort_keys=True)
        for t in done
        if int(t.params.get("rung", 0)) == 0
    )
    return {
        "promotion": promotion,
        "seed": seed,
        "wall_s": round(wall, 1),
        "best_dev": round(best.value, 4),
        "best_rung": top,
        "examples_seen": sum(int(t.user_attrs.get("examples_seen", 0)) for t in done),
        "trials": len(done),
        "rung0": rung0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--configs", type=int, default=9)
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--min-fraction", type=float, default=1 / 9)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per trial process")
    ap.add_argument("--lr-low", type=float, default=5e-5)
    ap.add_argument("--lr-high", type=float, default=5e-4)
    ap.add_argument("--model", default="minilm-l3")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "snli-resplit"))
    ap.add_argument("--limit-train", type=int, default=6000)
    ap.add_argument("--limit-eval", type=int, default=1000)
    ap.add_argument("--max-len", type=int, default=32, help="as experiments/sweep_cpu_mf.toml (fast on the CPU)")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:
            order = ["sync", "async"] if seed % 2 == 0 else ["async", "sync"]
            for promotion in order:
                row = study(a, seed, promotion, Path(tmp))
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "rung0"}), flush=True)
    by = {(r["promotion"], r["seed"]): r for r in rows}
    same = all(by["sync", s]["rung0"] == by["async", s]["rung0"] for s in a.seeds)
    wall = {p: sum(by[p, s]["wall_s"] for s in a.seeds) for p in ("sync", "async")}
    dev = [by["async", s]["best_dev"] - by["sync", s]["best_dev"] for s in a.seeds]
    seen = {p: sum(by[p, s]["examples_seen"] for s in a.seeds) for p in ("sync", "async")}
    print(
        f"async / sync over {len(a.seeds)} seed(s): wall {wall['async'] / wall['sync']:.2f}x, "
        f"examples seen {seen['async'] / seen['sync']:.2f}x, best dev async - sync "
        + ", ".join(f"{d * 100:+.1f} pp" for d in dev)
        + ("; same rung-0 configurations" if same else "; rung-0 configurations DIFFER")
    )


if __name__ == "__main__":
    main()
