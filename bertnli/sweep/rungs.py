"""The successive-halving arithmetic of a multi-fidelity sweep: rung fractions, rung sizes, promotion.

Pure functions, no Optuna: `space` validates a schedule with them, `halving` runs one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

RUNG = "rung"  # the trial param (and MLflow tag) holding a multi-fidelity trial's rung


def rung_fractions(eta: int, min_fraction: float) -> list[float]:
    """Training-set fraction per rung: eta^-(R-1), ..., 1/eta, 1, the smallest at least `min_fraction`.

    eta 3, min_fraction 1/9 -> [1/9, 1/3, 1].
    """
    if eta < 2 or not 0 < min_fraction < 1:
        raise ValueError("eta must be at least 2 and min_fraction in (0, 1)")
    rungs = 1 + math.floor(math.log(1 / min_fraction) / math.log(eta) + 1e-9)
    return [float(eta) ** -(rungs - 1 - k) for k in range(rungs)]


def rung_sizes(configs: int, eta: int, rungs: int) -> list[int]:
    """Configurations trained at each rung: all of them at rung 0, then the best 1/eta of the rung below (at least
    one).
    """
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
