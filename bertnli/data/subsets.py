"""Nested, label-stratified subsets of the training split: what a multi-fidelity rung trains on.

- Subsets are nested: one fixed, seeded order of the training rows, and the subset at fraction f
  is its first round(f * n) rows, so a smaller rung's data is inside every larger rung's and the
  rungs differ only in how much data they see.
- Subsets are stratified: the order interleaves the labels so that every prefix holds each label
  in the proportion of the whole split (each label's count is within one of its share).
"""

from __future__ import annotations

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
