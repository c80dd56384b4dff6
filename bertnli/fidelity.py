"""Multi-fidelity over the training-set fraction: nested stratified subsets and the successive-halving schedule.

Pure functions, no Optuna or MLflow: the engine (prepare.py) takes a run's subset from here, and
the sweep (sweep/halving.py) its rungs and promotions.

- Subsets are nested: one fixed, seeded order of the training rows, and the subset at fraction f
  is its first round(f * n) rows, so a smaller rung's data is inside every larger rung's and the
  rungs differ only in how much data they see.
- Subsets are stratified: the order interleaves the labels so that every prefix holds each label
  in the proportion of the whole split (each label's count is within one of its share).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SUBSET_SEED = 0  # one order for every run: the rungs of every configuration see the same examples


def nested_order(labels: np.ndarray, seed: int = SUBSET_SEED) -> np.ndarray:
    """Row indices in an order whose every prefix is stratified by label.

    Each label's rows are shuffled (seeded); the i-th row of a label with n_c rows gets the key
    (i + 0.5) / n_c, and rows are sorted by key. A prefix of length m then holds about m * n_c / n
    rows of each label (largest-remainder rounding, within one).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rows = rows[rng.permutation(len(rows))]
        keys[rows] = (np.arange(len(rows)) + 0.5) / len(rows)
    tiebreak = np.random.default_rng(seed + 1).random(len(labels))  # equal keys (equal class sizes): a seeded order
    return np.lexsort((tiebreak, keys))


def subset_rows(labels: np.ndarray, fraction: float, seed: int = SUBSET_SEED) -> np.ndarray:
    """The rows (ascending) of the nested, stratified subset holding `fraction` of the split (at least one row)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction} is not in (0, 1]")
    n = len(labels)
    if fraction >= 1:
        return np.arange(n)
    m = max(1, round(fraction * n))
    return np.sort(nested_order(labels, seed)[:m])


def rung_fractions(eta: int, min_fraction: float) -> list[float]:
    """Training-set fraction per rung: eta^-(R-1), ..., 1/eta, 1, the smallest at least `min_fraction`.

    eta 3, min_fraction 1/9 -> [1/9, 1/3, 1].
    """
    if eta < 2 or not 0 < min_fraction < 1:
        raise ValueError("eta must be at least 2 and min_fraction in (0, 1)")
    rungs = 1 + math.floor(math.log(1 / min_fraction) / math.log(eta) + 1e-9)
    return [float(eta) ** -(rungs - 1 - k) for k in range(rungs)]


def rung_sizes(configs: int, eta: int, rungs: int) -> list[int]:
    """Configurations trained at each rung: all of them at rung 0, then the best 1/eta of the rung below (at least one)."""
    sizes = [configs]
    for _ in range(rungs - 1):
        sizes.append(max(1, sizes[-1] // eta))
    return sizes


def promoted(results: Sequence[tuple[object, float | None, int]], k: int) -> list[object]:
    """The `k` best of a rung's (config, dev accuracy, trial number) by accuracy, earlier trial first on ties.

    A configuration without an accuracy (diverged) is never promoted.
    """
    scored = [r for r in results if r[1] is not None and not math.isnan(r[1])]
    return [config for config, _, _ in sorted(scored, key=lambda r: (-r[1], r[2]))[:k]]
