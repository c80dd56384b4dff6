"""Paired comparisons between recorded runs or cells, from their per-example predictions.

Two sides (one run each, or a cell's runs across seeds) are compared on the same examples,
joined by SNLI pairID; runs that saw different data (split digests differ) are refused.
The statistics are `bertnli.stats`; this module only finds runs and lines their predictions up.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd

from bertnli import BadInput, BertnliError
from bertnli.stats import compare_correct

SPLITS = ("dev", "test")


# ---------------------------------------------------------------- choosing the runs of a side


def parse_cell(spec: str) -> dict[str, str]:
    """`model=minilm-l6,truncation=ratio` -> {"model": "minilm-l6", "truncation": "ratio"}."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" not in part:
            raise BadInput(f"--cell {spec!r}: {part!r} is not key=value; write e.g. --cell model=minilm-l6,truncation=ratio")
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
        raise BadInput(f"--cell key(s) {', '.join(missing)} are not run params; use e.g. {', '.join(c for c in ('model', 'truncation', 'lr', 'max_len') if c in runs.columns)}")
    f = runs[(runs["status"] == "FINISHED")]
    for k, v in cell.items():
        f = f[f[k].map(lambda x, v=v: _same_value(x, v))]
    if f.empty:
        desc = ",".join(f"{k}={v}" for k, v in cell.items())
        raise BadInput(f"no finished run matches --cell {desc}; check the values (bertnli-exp report lists runs) or --experiment")
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
        raise BadInput(f"runs {r1} and {r2} were evaluated on different {split} data (sha256 {d1[:12]} vs {d2[:12]}); "
                       "compare runs trained on the same --data")


def correctness(frames: list[pd.DataFrame], order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(example ids, seeds x examples correctness), every run reindexed to the same id order."""
    ids = np.asarray(frames[0]["id"].astype(str)) if order is None else order
    rows = []
    for f in frames:
        f = f.set_index(f["id"].astype(str))
        if len(f) != len(ids) or not f.index.is_unique or not f.index.isin(ids).all():
            raise BertnliError("the runs' predictions cover different examples (another --limit-eval?); "
                               "compare runs evaluated on the same examples")
        f = f.loc[ids]
        rows.append((f["pred"].to_numpy() == f["gold"].to_numpy()))
    return ids, np.stack(rows)


def compare_runs(run_ids_a: list[str], run_ids_b: list[str], tracking_uri: str | None = None,
                 n_boot: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """One row per split both sides have predictions for: accuracies, delta A-B, 95 % CI, McNemar p."""
    from bertnli.tracking import client, load_predictions

    c = client(tracking_uri)
    runs = {}
    for rid in [*run_ids_a, *run_ids_b]:
        try:
            runs[rid] = c.get_run(rid)
        except Exception:  # noqa: BLE001
            raise BadInput(f"no MLflow run {rid}; check the id or --tracking-uri") from None
    for split in SPLITS:  # before any download: refusing costs nothing
        check_digests([runs[r] for r in run_ids_a], [runs[r] for r in run_ids_b], split)
    rows = []
    for split in SPLITS:
        frames_a = [load_predictions(r, split, tracking_uri) for r in run_ids_a]
        frames_b = [load_predictions(r, split, tracking_uri) for r in run_ids_b]
        if any(f is None for f in frames_a + frames_b):
            if split == "dev":
                lacking = [r for r, f in zip(run_ids_a + run_ids_b, frames_a + frames_b) if f is None]
                raise BadInput(f"run {lacking[0]} has no predictions_dev.parquet (recorded before per-example predictions); rerun it")
            continue
        ids, a = correctness(frames_a)
        _, b = correctness(frames_b, ids)
        comparison = compare_correct(a, b, n_boot=n_boot, seed=seed)
        rows.append({"split": split, **asdict(comparison)})
    return pd.DataFrame(rows)


def describe(row: pd.Series, name_a: str = "A", name_b: str = "B") -> str:
    """One plain sentence per split: what the numbers say, and what they do not."""
    ci = f"95 % CI [{100 * row['ci_low']:+.2f}, {100 * row['ci_high']:+.2f}] pp"
    if row["ci_low"] > 0 or row["ci_high"] < 0:
        better = name_a if row["delta"] > 0 else name_b
        verdict = f"{better} is better: the interval excludes 0"
    else:
        verdict = "no detectable difference: the interval includes 0"
    return (f"{row['split']}: {name_a} {row['acc_a']:.4f} ({int(row['seeds_a'])} run(s)) vs {name_b} {row['acc_b']:.4f} "
            f"({int(row['seeds_b'])} run(s)) on {int(row['n_examples'])} examples; delta {100 * row['delta']:+.2f} pp, {ci}; "
            f"McNemar exact p = {row['p_value']:.3g} ({int(row['a_only'])} vs {int(row['b_only'])} discordant); {verdict}")
