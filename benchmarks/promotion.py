"""Synchronous rungs against asynchronous promotions (ASHA) for `sweep --fidelity data`, side by side.

For each seed, the same seeded random configurations (`--sampler random --sampler-seed S`: trial i
draws the same configuration in both studies) are studied twice with `--workers 2`, once per
`--promotion`, in the order sync, async for even seeds and async, sync for odd ones, so that drift of
the machine falls on both. Per study: the sweep command's wall time, the winner's dev accuracy (at
the top rung), and the training examples seen (each trial's subset size x epochs trained).

    python benchmarks/promotion.py --seeds 0 1 --configs 9 --limit-train 6000 --limit-eval 1000

Goals (issue #22): async wall time <= 0.8x sync's, best dev within 1 pp. Prints one JSON line per
study and a summary line.
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


def study(a, seed: int, promotion: str, out: Path) -> dict:
    import optuna

    from bertnli.sweep.storage import open_storage

    name = f"{promotion}-s{seed}"
    cmd = [sys.executable, "-m", "bertnli.cli", "sweep", "--study-name", name, "--trials", str(a.configs)]
    cmd += ["--sampler", "random", "--sampler-seed", str(seed), "--fidelity", "data", "--eta", str(a.eta)]
    cmd += ["--min-fraction", str(a.min_fraction), "--promotion", promotion, "--workers", str(a.workers)]
    cmd += ["--storage", str(out / "journal.log"), "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}"]
    cmd += ["--out", str(out / "sweeps"), "--no-eval-test", "--no-progress", "--data", a.data]
    cmd += ["--space", f"model={a.model}", "--space", "epochs=1", "--space", "lr=1e-5:3e-4:log"]
    cmd += ["--limit-train", str(a.limit_train), "--limit-eval", str(a.limit_eval), "--max-len", str(a.max_len)]
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
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
        + ("; same rung-0 configurations" if same else "; rung-0 configurations differ")
    )


if __name__ == "__main__":
    main()
