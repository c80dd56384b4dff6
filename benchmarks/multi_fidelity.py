"""Multi-fidelity vs full data (issue #14): the same configurations studied two ways, side by side.

Both studies draw their configurations from the same seeded space (`--sampler random`, one seed:
Optuna's RandomSampler seeded by trial number gives trial i the same configuration in both), run
one after the other on this machine with one worker each:
- multi-fidelity: `sweep --fidelity data` (successive halving over the training-set fraction);
- full data: every configuration on the whole train split (`--fidelity none`).

Compute is measured two ways: training examples seen (each trial's subset size x epochs trained)
and the sweep command's wall time. Selection is on dev; test is evaluated once per study, on its
winner's selected weights (the studies run with --no-eval-test). The rank audit compares each
rung's dev ranking with the full-data study's over the same configurations.

    python benchmarks/multi_fidelity.py --configs 9                # about an hour on the 2-core CPU
    python benchmarks/multi_fidelity.py --configs 9 --out-dir X    # rerun: finished studies are reused
    python benchmarks/multi_fidelity.py --configs 9 --rerun mf     # run the multi-fidelity study again from scratch

Prints a JSON summary and writes it to <out-dir>/summary.json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sweep(a, name: str, fidelity: str, out: Path) -> float:
    """Run (or resume) one study; its wall seconds (recorded once it finished, reused on a rerun)."""
    walls = out / "walls.json"
    done = json.loads(walls.read_text()) if walls.is_file() else {}
    if name in done:
        return done[name]
    cmd = [
        sys.executable,
        "-m",
        "bertnli.cli",
        "sweep",
        "--config",
        a.config,
        "--study-name",
        name,
        "--trials",
        str(a.configs),
        "--sampler",
        "random",
        "--sampler-seed",
        str(a.seed),
        "--fidelity",
        fidelity,
        "--storage",
        str(out / "journal.log"),
        "--tracking-uri",
        f"sqlite:///{out / 'mlflow.db'}",
        "--out",
        str(out / "sweeps"),
        "--no-eval-test",
        *a.extra,
    ]
    for option, value in (("--data", a.data), ("--eta", a.eta), ("--min-fraction", a.min_fraction)):
        if value is not None and (option == "--data" or fidelity == "data"):
            cmd += [option, str(value)]
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    done[name] = time.time() - t0
    walls.write_text(json.dumps(done))
    return done[name]


def cache_dir_of(extra: list[str], cfg) -> str:
    """The studies' encoding cache, for the test evaluation too: `--cache-dir` among the sweep options after --,
    else the config's."""
    only = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    only.add_argument("--cache-dir")
    return only.parse_known_args(extra)[0].cache_dir or cfg.base.cache_dir


def test_once(a, out: Path, name: str, trial_number: int, cfg) -> float:
    folder = out / "sweeps" / name / f"trial-{trial_number:03d}" / "best"
    cmd = [sys.executable, "-m", "bertnli.cli", "evaluate", str(folder), "--data", cfg.base.data, "--split", "test"]
    cmd += ["--cache-dir", cache_dir_of(a.extra, cfg)]
    if cfg.base.limit_eval:
        cmd += ["--limit", str(cfg.base.limit_eval)]
    r = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    return float(re.search(r"test: accuracy ([0-9.]+)", r.stdout).group(1))


def forget(out: Path, storage, name: str) -> None:
    """--rerun: the study, its MLflow runs, its checkpoints and its recorded wall time go; the next `sweep`
    starts it afresh (a left-over parent run would sit beside the new one in the study's experiment)."""
    import shutil

    import optuna
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        for run in c.search_runs([exp.experiment_id], max_results=10000):
            c.delete_run(run.info.run_id)

    walls = out / "walls.json"
    if walls.is_file():
        walls.write_text(json.dumps({k: v for k, v in json.loads(walls.read_text()).items() if k != name}))
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass
    shutil.rmtree(out / "sweeps" / name, ignore_errors=True)


def audit(mf_trials, full_by_config: dict, rungs) -> list[dict]:
    """Each rung's dev ranking against the full-data study's, over the configurations both trained."""
    from bertnli.analysis.stats import rank_agreement
    from bertnli.sweep.halving import config_key, rung_of

    rows = []
    for k in range(rungs.top + 1):
        at = {
            config_key(t.params): t.value
            for t in mf_trials
            if rung_of(t) == k and config_key(t.params) in full_by_config
        }
        keys = sorted(at)
        ra = rank_agreement([at[c] for c in keys], [full_by_config[c] for c in keys])
        rows.append(
            {
                "rung": k,
                "against": "full-data study",
                "configurations": ra.n,
                "kendall_tau": ra.tau,
                "tau_ci": [ra.tau_low, ra.tau_high],
                "spearman_rho": ra.rho,
                "rho_ci": [ra.rho_low, ra.rho_high],
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="experiments/sweep_cpu_mf.toml")
    ap.add_argument("--configs", type=int, default=9, help="configurations per study [default: 9]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default="outputs/bench-multi-fidelity")
    ap.add_argument("--data", default=None, help="[default: the config's]")
    ap.add_argument("--eta", type=int, default=None, help="[default: the config's]")
    ap.add_argument("--min-fraction", type=float, default=None, help="[default: the config's]")
    ap.add_argument(
        "--rerun",
        choices=["mf", "full"],
        default=None,
        help="delete that study (storage, checkpoints, recorded wall time) and run it again; the other is reused",
    )
    ap.add_argument("extra", nargs="*", help="more sweep options after --, e.g. -- --space model=minilm-l3")
    a = ap.parse_args()

    import optuna

    from bertnli.config import TrackingConfig
    from bertnli.sweep.halving import best_trial, config_key, rung_of, rungs_of
    from bertnli.sweep.space import load_sweep_config
    from bertnli.sweep.storage import open_storage

    out = Path(a.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    mf_name, full_name = f"mf-{a.configs}-s{a.seed}", f"full-{a.configs}-s{a.seed}"
    storage = open_storage(str(out / "journal.log"))
    if a.rerun:
        forget(out, storage, mf_name if a.rerun == "mf" else full_name)
    walls = {"mf": sweep(a, mf_name, "data", out), "full": sweep(a, full_name, "none", out)}
    given = {"trials": a.configs, "fidelity": "data", "eta": a.eta, "min_fraction": a.min_fraction}
    cfg = load_sweep_config(a.config, {"data": a.data} if a.data else {}, given, [], TrackingConfig())
    rungs = rungs_of(cfg)
    S = optuna.trial.TrialState
    result = {
        "configs": a.configs,
        "seed": a.seed,
        "config": a.config,
        "eta": cfg.eta,
        "rungs": list(rungs.fractions),
        "rung_sizes": list(rungs.sizes),
    }
    trials = {}
    for kind, name in (("mf", mf_name), ("full", full_name)):
        ts = [t for t in optuna.load_study(study_name=name, storage=storage).get_trials() if t.state == S.COMPLETE]
        trials[kind] = ts
        best = best_trial(ts, rungs if kind == "mf" else None)
        result[kind] = {
            "trials": len(ts),
            "examples_seen": sum(t.user_attrs.get("examples_seen", 0) for t in ts),
            "wall_seconds": round(walls[kind], 1),
            "best_dev_acc": best.value,
            "best_trial": best.number,
            "best_params": {k: v for k, v in best.params.items() if k != "rung"},
            "test_acc_of_winner": test_once(a, out, name, best.number, cfg),
        }
    mf, full = result["mf"], result["full"]
    result["examples_ratio"] = mf["examples_seen"] / full["examples_seen"]
    result["wall_ratio"] = mf["wall_seconds"] / full["wall_seconds"]
    result["dev_gap_pp"] = 100 * (full["best_dev_acc"] - mf["best_dev_acc"])
    result["goal_met"] = result["dev_gap_pp"] <= 1.0 and result["examples_ratio"] <= 0.4 and result["wall_ratio"] <= 0.4
    full_by_config = {config_key(t.params): t.value for t in trials["full"]}
    rung0 = {config_key(t.params) for t in trials["mf"] if rung_of(t) == 0}
    result["same_configurations"] = rung0 == set(full_by_config)
    result["audit"] = audit(trials["mf"], full_by_config, rungs)
    text = json.dumps(result, indent=1, default=float)
    (out / "summary.json").write_text(text)
    print(text)
    print(
        f"multi-fidelity vs full data, {a.configs} configurations: best dev {mf['best_dev_acc']:.4f} vs "
        f"{full['best_dev_acc']:.4f} "
        f"(gap {result['dev_gap_pp']:.2f} pp), examples seen {result['examples_ratio']:.1%}, wall time "
        f"{result['wall_ratio']:.1%} "
        f"of full data; test of the winners {mf['test_acc_of_winner']:.4f} vs {full['test_acc_of_winner']:.4f}"
    )


if __name__ == "__main__":
    main()
