"""Trial start: forked from a pre-imported server (`--trial-start fork`) against a fresh interpreter per
trial (`--trial-start exec`, what bertnli did before), side by side on the same study.

Each round runs the same seeded random study (same configurations, one worker) once per method, in
the order fork, exec, exec, fork, so that drift of the machine falls on both. Per method it sums:
- CPU seconds of the whole machine while the sweep ran (from /proc/stat: the trial processes of a
  forkserver are not children the sweep waits for, so its own rusage would miss them); run it alone;
- the sweep's wall seconds;
- per complete trial, the trial process's wall time minus its fit (the overhead a sweep adds).

    python benchmarks/trial_start.py                   # 6 trials x 4 studies on real SNLI, MiniLM-L3
    python benchmarks/trial_start.py --trials 4 --limit-train 200

Prints one JSON line per study and a summary line with the ratios exec / fork.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from bertnli.sweep.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    """user + nice + system seconds of every CPU since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:4]
    return sum(map(int, fields)) / 100.0


def run_study(a, how: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "bertnli.cli", "sweep", "--config", a.config, "--study-name", how]
    cmd += ["--trials", str(a.trials), "--sampler", "random", "--storage", str(out / "journal.log")]
    cmd += ["--tracking-uri", f"sqlite:///{out / 'mlflow.db'}", "--out", str(out / "sweeps"), "--no-eval-test"]
    cmd += ["--limit-train", str(a.limit_train), "--limit-eval", str(a.limit_eval), "--space", "model=minilm-l3"]
    cmd += ["--space", "epochs=1", "--trial-start", how, "--no-progress"]
    cpu0, t0 = cpu_seconds(), time.time()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    cpu, wall = cpu_seconds() - cpu0, time.time() - t0
    study = optuna.load_study(study_name=how, storage=open_storage(str(out / "journal.log")))
    overhead = []
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        result = out / "sweeps" / how / f"trial-{t.number:03d}" / "result.json"
        if result.is_file() and t.user_attrs.get("trial_wall_seconds"):
            overhead.append(t.user_attrs["trial_wall_seconds"] - json.loads(result.read_text())["wall_seconds"])
    return {"how": how, "trials": len(study.trials), "cpu_s": cpu, "wall_s": wall, "overhead_s": overhead}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="experiments/sweep_cpu.toml")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--limit-train", type=int, default=500)
    ap.add_argument("--limit-eval", type=int, default=300)
    a = ap.parse_args()
    totals = {how: {"cpu_s": 0.0, "wall_s": 0.0, "overhead_s": [], "trials": 0} for how in ("fork", "exec")}
    for how in ("fork", "exec", "exec", "fork"):
        with tempfile.TemporaryDirectory(prefix=f"trial-start-{how}-") as out:
            r = run_study(a, how, Path(out))
        print(json.dumps({**r, "overhead_s": [round(x, 2) for x in r["overhead_s"]]}), flush=True)
        for key in ("cpu_s", "wall_s", "trials"):
            totals[how][key] += r[key]
        totals[how]["overhead_s"] += r["overhead_s"]
    per = {
        how: {
            "cpu_s_per_trial": t["cpu_s"] / t["trials"],
            "wall_s_per_trial": t["wall_s"] / t["trials"],
            "overhead_s_per_trial": sum(t["overhead_s"]) / max(1, len(t["overhead_s"])),
        }
        for how, t in totals.items()
    }
    ratios = {k: per["exec"][k] / per["fork"][k] for k in per["fork"]}
    print(json.dumps({"per_trial": per, "exec_over_fork": ratios}, indent=1))


if __name__ == "__main__":
    main()
