"""Did the warm start help? A cheap study, then the same full-data study cold and warm-started from it (issue #24).

For each seed, on this machine, one study after the other with one worker each:
1. cheap: `--trials 10` on a 2,000-pair subset of the train split (`--limit-train 2000`);
2. cold: `--trials 6` on the whole train split;
3. warm: the same as cold (same sampler seed), with `--warm-start cheap@JOURNAL --warm-start-mode loose`
   (loose: the cheap study trained on other data, a subset, which a strict warm start refuses).
Prints the best dev accuracy after each trial the full-data studies trained (imported trials are not theirs),
both ways, per seed and averaged over the seeds, and writes them to <out-dir>/summary.json. Whatever it shows,
"no help" included, is the answer; nothing is tuned on test (the studies run with --no-eval-test).

    python benchmarks/warm_start.py --seeds 0 1 2 --data SNLI_FOLDER   # ~13 min a seed on 2 cores
    python benchmarks/warm_start.py --seeds 0 --data SNLI_FOLDER --out-dir X   # a rerun reuses finished studies

Sweep options after `--` replace the default space and model, e.g. `-- --space lr=1e-5:1e-3:log --model minilm-l6`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["--model", "minilm-l3", "--epochs", "1", "--batch-size", "32", "--max-len", "32", "--limit-eval", "1500"]
DEFAULT += ["--space", "lr=1e-5:1e-3:log", "--space", "warmup=0:0.3"]


def sweep(a, out: Path, name: str, trials: int, seed: int, *more: str) -> None:
    """Run (or finish) one study; a study that has its trials is left as it is."""
    cmd = [sys.executable, "-m", "bertnli.cli", "sweep", "--study-name", name, "--trials", str(trials)]
    cmd += ["--sampler-seed", str(seed), "--storage", str(out / "journal.log"), "--no-eval-test", "--no-progress"]
    cmd += ["--tracking-uri", f"sqlite:///{out / 'mlflow.db'}", "--out", str(out / "sweeps"), "--data", a.data]
    cmd += [*(a.extra or DEFAULT), *more]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def best_so_far(out: Path, name: str) -> list[float]:
    """The best dev accuracy after each trial the study trained itself, in trial order (a pruned trial counts: it
    cost its epochs, and its best report stands for it; a failed one is left out)."""
    import optuna

    from bertnli.sweep.storage import open_storage
    from bertnli.sweep.warm_start import trained_here

    study = optuna.load_study(study_name=name, storage=open_storage(str(out / "journal.log")))
    S, curve, best = optuna.trial.TrialState, [], float("-inf")
    for t in trained_here(study.get_trials(deepcopy=False)):
        if t.state == S.COMPLETE:
            best = max(best, t.value)
        elif t.state == S.PRUNED and t.intermediate_values:
            best = max(best, max(t.intermediate_values.values()))
        else:
            continue
        curve.append(round(best, 4))
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data", required=True, help="a folder of snli_1.0_{train,dev,test}.jsonl[.gz] (snli-resplit)")
    ap.add_argument("--cheap-trials", type=int, default=10)
    ap.add_argument("--cheap-pairs", type=int, default=2000)
    ap.add_argument("--cheap-epochs", type=int, default=1, help="epochs of each cheap trial [default: 1]")
    ap.add_argument("--trials", type=int, default=6, help="trials of each full-data study [default: 6]")
    ap.add_argument("--out-dir", default="outputs/bench-warm-start")
    ap.add_argument("extra", nargs="*", help="sweep options after --, instead of the default model and space")
    a = ap.parse_args()
    out = Path(a.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    per_seed = {}
    variant = f"-e{a.cheap_epochs}" if a.cheap_epochs != 1 else ""  # the cold study is the same for every variant
    for seed in a.seeds:
        cheap, warm = f"cheap{variant}-s{seed}", f"warm{variant}-s{seed}"
        sweep(a, out, cheap, a.cheap_trials, seed, "--limit-train", str(a.cheap_pairs), "--epochs", str(a.cheap_epochs))
        sweep(a, out, f"cold-s{seed}", a.trials, seed)
        source = f"{cheap}@{out / 'journal.log'}"
        sweep(a, out, warm, a.trials, seed, "--warm-start", source, "--warm-start-mode", "loose")
        per_seed[seed] = {"cold": best_so_far(out, f"cold-s{seed}"), "warm": best_so_far(out, warm)}
        per_seed[seed]["cheap_best"] = max(best_so_far(out, cheap), default=None)
        print(json.dumps({"seed": seed, **per_seed[seed]}), flush=True)
    n = min(len(s[kind]) for s in per_seed.values() for kind in ("cold", "warm"))
    mean = {
        kind: [round(sum(s[kind][i] for s in per_seed.values()) / len(per_seed), 4) for i in range(n)]
        for kind in ("cold", "warm")
    }
    summary = {
        "seeds": a.seeds,
        "cheap": {"trials": a.cheap_trials, "pairs": a.cheap_pairs, "epochs": a.cheap_epochs},
        "trials": a.trials,
        "sweep_options": a.extra or DEFAULT,
        "best_dev_after_each_trial": per_seed,
        "mean_over_seeds": mean,
        "warm_minus_cold_pp": [round(100 * (w - c), 2) for w, c in zip(mean["warm"], mean["cold"])],
    }
    (out / f"summary{variant}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
