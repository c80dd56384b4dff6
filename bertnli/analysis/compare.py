"""Paired comparisons between recorded runs or cells, from their per-example predictions.

Two sides (one run each, or a cell's runs across seeds) are compared on the same examples,
joined by SNLI pairID; runs that saw different data (split digests differ) are refused.
The statistics are `bertnli.analysis.stats`; this module only finds runs and lines their predictions up.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd

from bertnli import BadInput, BertnliError
from bertnli.analysis.stats import (
    MCNEMAR,
    compare_correct,
    evp_with_replacement,
    evp_without_replacement,
    holm,
    mean_ci,
    overtaking,
    p_floor_note,
    p_phrase,
)
from bertnli.tracking.predictions import load_predictions
from bertnli.tracking.query import finished_runs
from bertnli.tracking.store import client

COMPARED_SPLITS = ("dev", "test")  # train has no per-example predictions


# ---------------------------------------------------------------- choosing the runs of a side


def parse_cell(spec: str) -> dict[str, str]:
    """`model=minilm-l6,truncation=ratio` -> {"model": "minilm-l6", "truncation": "ratio"}."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" not in part:
            raise BadInput(
                f"--cell {spec!r}: {part!r} is not key=value; write e.g. --cell model=minilm-l6,truncation=ratio"
            )
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    if not out:
        raise BadInput("--cell is empty; write e.g. --cell model=minilm-l6,truncation=ratio")
    return out


def _same_value(recorded, wanted: str) -> bool:
    """Params are stored as text: 1e-4 and 0.0001 are the same learning rate."""
    if pd.isna(recorded):
        return False
    try:
        return float(recorded) == float(wanted)
    except (TypeError, ValueError):
        return str(recorded) == wanted


def cell_runs(runs: pd.DataFrame, cell: dict[str, str]) -> list[str]:
    """Finished runs whose params match every key of `cell` (one per seed, typically)."""
    missing = [k for k in cell if k not in runs.columns]
    if missing:
        raise BadInput(
            f"--cell key(s) {', '.join(missing)} are not run params; use e.g. "
            f"{', '.join(c for c in ('model', 'truncation', 'lr', 'max_len') if c in runs.columns)}"
        )
    f = finished_runs(runs)
    for k, v in cell.items():
        f = f[f[k].map(lambda x, v=v: _same_value(x, v))]
    if f.empty:
        desc = ",".join(f"{k}={v}" for k, v in cell.items())
        raise BadInput(
            f"no finished run matches --cell {desc}; check the values (bertnli-exp report lists runs) or --experiment"
        )
    return list(f.sort_values("seed")["run_id"]) if "seed" in f else list(f["run_id"])


# ---------------------------------------------------------------- predictions of a side, lined up


def split_digest(run, split: str) -> str | None:
    return run.data.tags.get(f"data.{split}.sha256")


def check_digests(runs_a: list, runs_b: list, split: str) -> None:
    """Refuse, in one line, to pair predictions made on different data."""
    seen: dict[str, str] = {}
    for r in [*runs_a, *runs_b]:
        d = split_digest(r, split)
        if d is not None:
            seen.setdefault(d, r.info.run_id)
    if len(seen) > 1:
        (d1, r1), (d2, r2) = list(seen.items())[:2]
        raise BadInput(
            f"runs {r1} and {r2} were evaluated on different {split} data (sha256 {d1[:12]} vs {d2[:12]}); "
            "compare runs trained on the same --data"
        )


def correctness(frames: list[pd.DataFrame], order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(example ids, seeds x examples correctness), every run reindexed to the same id order."""
    ids = np.asarray(frames[0]["id"].astype(str)) if order is None else order
    rows = []
    for f in frames:
        f = f.set_index(f["id"].astype(str))
        if not f.index.is_unique:
            twice = f.index[f.index.duplicated()][0]
            raise BertnliError(
                f"the runs' predictions repeat example ids (e.g. {twice!r}): their data's pairIDs are "
                "not unique (reading it warned); paired comparisons need unique pairIDs"
            )
        if len(f) != len(ids) or not f.index.isin(ids).all():
            raise BertnliError(
                "the runs' predictions cover different examples (another --limit-eval?); "
                "compare runs evaluated on the same examples"
            )
        f = f.loc[ids]
        rows.append((f["pred"].to_numpy() == f["gold"].to_numpy()))
    return ids, np.stack(rows)


def compare_runs(
    run_ids_a: list[str],
    run_ids_b: list[str],
    tracking_uri: str | None = None,
    n_boot: int = 10_000,
    seed: int = 0,
    cache: dict | None = None,
) -> pd.DataFrame:
    """One row per split both sides have predictions for: accuracies, delta A-B, 95 % CI, p and its test.

    `cache` ((run id, split) -> frame) lets a pairwise table download each run's predictions once.
    """
    cache = {} if cache is None else cache

    def load(run_id: str, split: str):
        if (run_id, split) not in cache:
            cache[(run_id, split)] = load_predictions(run_id, split, tracking_uri)
        return cache[(run_id, split)]

    c = client(tracking_uri)
    runs = {}
    for rid in [*run_ids_a, *run_ids_b]:
        try:
            runs[rid] = c.get_run(rid)
        except Exception:  # noqa: BLE001
            raise BadInput(f"no MLflow run {rid}; check the id or --tracking-uri") from None
    for split in COMPARED_SPLITS:  # before any download: refusing costs nothing
        check_digests([runs[r] for r in run_ids_a], [runs[r] for r in run_ids_b], split)
    rows = []
    for split in COMPARED_SPLITS:
        frames_a = [load(r, split) for r in run_ids_a]
        frames_b = [load(r, split) for r in run_ids_b]
        if any(f is None for f in frames_a + frames_b):
            if split == "dev":
                lacking = [r for r, f in zip(run_ids_a + run_ids_b, frames_a + frames_b) if f is None]
                raise BadInput(
                    f"run {lacking[0]} has no predictions_dev.parquet (recorded before per-example predictions); rerun "
                    "it"
                )
            continue
        ids, a = correctness(frames_a)
        _, b = correctness(frames_b, ids)
        comparison = compare_correct(a, b, n_boot=n_boot, seed=seed)
        rows.append({"split": split, **asdict(comparison)})
    return pd.DataFrame(rows)


def verdict(row: pd.Series, name_a: str = "A", name_b: str = "B") -> str:
    """The interval's answer and the test's, in words; where they disagree, the sentence says so.

    Both answer the same question (one run a side: these two runs; several: these two cells of runs),
    so a disagreement means the difference sits at the edge of what the data can show."""
    test = row.get("test", MCNEMAR)
    excludes = row["ci_low"] > 0 or row["ci_high"] < 0
    significant = row["p_value"] < 0.05
    better = name_a if row["delta"] > 0 else name_b
    if excludes and significant:
        return f"{better} is better: the interval excludes 0 and the {test} p < 0.05"
    if not excludes and not significant:
        return f"no detectable difference: the interval includes 0 and the {test} p >= 0.05"
    settle = (
        "more examples or seeds would settle it"
        if test == MCNEMAR
        else "the bootstrap interval is narrow with few runs a side; more runs per cell would settle it"
    )
    return (
        f"undecided: the interval {'excludes' if excludes else 'includes'} 0 but the {test} "
        f"{p_phrase(row['p_value'])} is {'not ' if excludes else ''}below 0.05; the difference is at the edge of "
        f"what these runs show ({settle})"
    )


def describe(row: pd.Series, name_a: str = "A", name_b: str = "B") -> str:
    """One plain sentence per split: what the numbers say, and what they do not."""
    ci = f"95 % CI [{100 * row['ci_low']:+.2f}, {100 * row['ci_high']:+.2f}] pp"
    test = row.get("test", MCNEMAR)
    evidence = f" ({int(row['a_only'])} vs {int(row['b_only'])} discordant)" if test == MCNEMAR else ""
    return (
        f"{row['split']}: {name_a} {row['acc_a']:.4f} ({int(row['seeds_a'])} run(s)) vs {name_b} {row['acc_b']:.4f} "
        f"({int(row['seeds_b'])} run(s)) on {int(row['n_examples'])} examples; delta {100 * row['delta']:+.2f} pp, "
        f"{ci}; {test} {p_phrase(row['p_value'])}{evidence}; {verdict(row, name_a, name_b)}"
    )


# ---------------------------------------------------------------- cells: tables for the report


def cell_label(row, keys: list[str]) -> str:
    return ",".join(f"{k}={row[k]}" for k in keys)


def with_cells(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Finished runs with a `cell` column: the runs that share `keys` (typically differing by seed only)."""
    missing = [k for k in keys if k not in runs.columns]
    if missing:
        raise BadInput(
            f"--cell-by {','.join(missing)}: not a run column; use params such as model,truncation,lr,max_len"
        )
    f = finished_runs(runs).copy()
    f["cell"] = [cell_label(r, keys) for _, r in f.iterrows()]
    return f


def cell_table(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per cell: runs, seeds, and mean with a Student-t 95 % CI over its runs, for dev and test."""
    rows = []
    for cell, g in with_cells(runs, keys).groupby("cell", sort=False):
        row = {"cell": cell, "runs": len(g), "seeds": g["seed"].nunique()}
        for metric, name in (("best_dev_acc", "dev"), ("test_acc", "test")):
            values = g[metric].dropna()
            m, lo, hi = mean_ci(values) if len(values) else (np.nan, np.nan, np.nan)
            row |= {f"{name}_mean": m, f"{name}_ci_low": lo, f"{name}_ci_high": hi}
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values("dev_mean", ascending=False).reset_index(drop=True) if len(out) else out


def pairwise_table(
    runs: pd.DataFrame, keys: list[str], tracking_uri: str | None = None, n_boot: int = 2000
) -> pd.DataFrame:
    """Every pair of cells (better dev mean first): delta, CI, p (and its test) and Holm-adjusted p per split.

    Holm runs over all pairs of one split: with k cells there are k(k-1)/2 tests, and the smallest
    raw p among many is small by chance alone.
    """
    cells = with_cells(runs, keys)
    order = list(cell_table(runs, keys)["cell"]) if len(cells) else []
    members = {c: list(cells[cells["cell"] == c]["run_id"]) for c in order}
    rows, cache = [], {}
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            try:
                table = compare_runs(members[a], members[b], tracking_uri, n_boot=n_boot, cache=cache)
            except BertnliError as e:  # e.g. cells trained on different data: say so, compare the rest
                rows.append({"cell_a": a, "cell_b": b, "split": "dev", "note": str(e)})
                continue
            for _, r in table.iterrows():
                rows.append(
                    {
                        "cell_a": a,
                        "cell_b": b,
                        "split": r["split"],
                        "runs_a": r["seeds_a"],
                        "runs_b": r["seeds_b"],
                        "acc_a": r["acc_a"],
                        "acc_b": r["acc_b"],
                        "delta": r["delta"],
                        "ci_low": r["ci_low"],
                        "ci_high": r["ci_high"],
                        "p_value": r["p_value"],
                        "test": r["test"],
                        "note": p_floor_note(int(r["seeds_a"]), int(r["seeds_b"]), r["test"]),
                    }
                )
    out = pd.DataFrame(
        rows,
        columns=[
            "cell_a",
            "cell_b",
            "split",
            "runs_a",
            "runs_b",
            "acc_a",
            "acc_b",
            "delta",
            "ci_low",
            "ci_high",
            "p_value",
            "p_holm",
            "test",
            "note",
        ],
    )
    for split in COMPARED_SPLITS:
        mask = (out["split"] == split) & out["p_value"].notna()
        out.loc[mask, "p_holm"] = holm(out.loc[mask, "p_value"].astype(float))
    return out


def evp_table(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Expected best dev accuracy of n trials per cell (n = 1..N), both estimators, and the budget in seconds.

    The seconds axis is n times the cell's mean wall time per run (Dodge et al.: budgets differ
    when one setting's runs cost more).
    """
    frames = []
    for cell, g in with_cells(runs, keys).groupby("cell", sort=False):
        scores = g["best_dev_acc"].to_numpy(float)
        n = np.arange(1, len(scores) + 1)
        cost = float(g["wall_seconds"].mean()) if g["wall_seconds"].notna().any() else np.nan
        frames.append(
            pd.DataFrame(
                {
                    "cell": cell,
                    "n": n,
                    "evp_unbiased": evp_without_replacement(scores),
                    "evp_dodge": evp_with_replacement(scores),
                    "budget_seconds": n * cost,
                }
            )
        )
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["cell", "n", "evp_unbiased", "evp_dodge", "budget_seconds"])
    )


def _on_budget_grid(ga: pd.DataFrame, gb: pd.DataFrame, col: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both curves on the budgets (seconds) where either gains a trial and both are defined, linearly
    interpolated between their own budgets, as plotted: as step functions, two cells whose runs cost
    nearly the same would "overtake" each other for the second between their trials' ends."""
    xa, xb = ga["budget_seconds"].to_numpy(float), gb["budget_seconds"].to_numpy(float)
    grid = np.union1d(xa, xb)
    grid = grid[(grid >= max(xa.min(), xb.min())) & (grid <= min(xa.max(), xb.max()))]
    return grid, np.interp(grid, xa, ga[col].to_numpy(float)), np.interp(grid, xb, gb[col].to_numpy(float))


def overtaking_table(evp: pd.DataFrame) -> pd.DataFrame:
    """Where the cell that is behind at the smallest budget gets ahead, per estimator, on the trials
    axis and on the seconds axis (a cheaper cell can lead per second and trail per trial)."""
    rows = []
    cells = list(dict.fromkeys(evp["cell"]))
    for i, a in enumerate(cells):
        for b in cells[i + 1 :]:
            ga, gb = evp[evp["cell"] == a], evp[evp["cell"] == b]
            for est in ("evp_unbiased", "evp_dodge"):
                axes = [("trials", ga["n"].to_numpy()[: min(len(ga), len(gb))], ga[est].to_numpy(), gb[est].to_numpy())]
                if ga["budget_seconds"].notna().all() and gb["budget_seconds"].notna().all():
                    axes.append(("seconds", *_on_budget_grid(ga, gb, est)))
                for axis, x, ca, cb in axes:
                    k = overtaking(ca, cb)
                    if k is not None:
                        behind, ahead = (b, a) if ca[0] > cb[0] else (a, b)
                        rows.append(
                            {
                                "overtaker": behind,
                                "overtaken": ahead,
                                "estimator": est.removeprefix("evp_"),
                                "axis": axis,
                                "at": float(x[k]),
                            }
                        )
    return pd.DataFrame(rows, columns=["overtaker", "overtaken", "estimator", "axis", "at"])


def sweep_verdict(
    runs: pd.DataFrame, keys: list[str], tracking_uri: str | None = None, n_boot: int = 2000
) -> dict[str, str]:
    """Tags for a sweep's parent run: the best cell (by mean dev accuracy) and its paired comparison
    with the runner-up on dev, where selection happens."""
    cells = cell_table(runs, keys)
    if len(cells) == 0:
        return {"bertnli.verdict": "no finished trial: nothing to compare"}
    best = cells["cell"][0]
    if len(cells) < 2:
        return {"bertnli.verdict.best_cell": best, "bertnli.verdict": "one cell only: nothing to compare it with"}
    second = cells["cell"][1]
    members = with_cells(runs, keys)
    table = compare_runs(
        list(members[members["cell"] == best]["run_id"]),
        list(members[members["cell"] == second]["run_id"]),
        tracking_uri,
        n_boot=n_boot,
    )
    dev = table[table["split"] == "dev"].iloc[0]
    return {
        "bertnli.verdict.best_cell": best,
        "bertnli.verdict.runner_up": second,
        "bertnli.verdict.delta_dev": f"{dev['delta']:.4f}",
        "bertnli.verdict.ci_dev": f"[{dev['ci_low']:.4f}, {dev['ci_high']:.4f}]",
        "bertnli.verdict.p_dev": f"{dev['p_value']:.4g}",
        "bertnli.verdict.test_dev": dev["test"],
        "bertnli.verdict": describe(dev, best, second),
    }
