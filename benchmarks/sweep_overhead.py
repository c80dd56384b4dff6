"""Sweep overhead: per complete trial, the trial process's wall time minus its fit time.

Reads a finished study (Optuna storage + each trial's result.json under the sweep's --out folder):
what is outside `fit` (process start, imports, MLflow run creation and artifact upload) is the
overhead a sweep adds to a trial.

    python benchmarks/sweep_overhead.py --study sweep-cpu
"""

import argparse
import json
from pathlib import Path

import optuna

from bertnli.sweep.storage import open_storage


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="sweep-cpu")
    ap.add_argument("--storage", default=None, help="[default: mlruns/optuna-journal.log]")
    ap.add_argument("--out", default="outputs/sweeps")
    a = ap.parse_args()
    st = optuna.load_study(study_name=a.study, storage=open_storage(a.storage))
    rows = []
    for t in st.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        res = Path(a.out) / a.study / f"trial-{t.number:03d}" / "result.json"
        if res.is_file() and t.user_attrs.get("trial_wall_seconds"):
            fit = json.loads(res.read_text())["wall_seconds"]
            rows.append((t.number, t.user_attrs["trial_wall_seconds"], fit))
            print(
                json.dumps(
                    {
                        "trial": t.number,
                        "trial_wall_s": round(rows[-1][1], 1),
                        "fit_s": round(fit, 1),
                        "overhead_s": round(rows[-1][1] - fit, 1),
                    }
                )
            )
    if not rows:
        print("no complete trial with timings")
        return
    wall, fit = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(
        f"{len(rows)} complete trials: overhead {(wall - fit) / len(rows):.1f} s per trial, "
        f"{100 * (wall - fit) / wall:.1f} % of trial time"
    )


if __name__ == "__main__":
    main()
