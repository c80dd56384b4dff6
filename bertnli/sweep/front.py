"""The Pareto front of a study's trials (analysis/pareto.py over what the trials recorded): the trials a study
keeps the weights of, registers and shows as its answer."""

from __future__ import annotations

import pandas as pd

from bertnli.analysis.pareto import MEASURED, front_table
from bertnli.sweep.halving import best_trial
from bertnli.sweep.objectives import constraints_of, holds, is_multi, measures, objectives_of
from bertnli.sweep.reaping import states
from bertnli.sweep.space import SweepConfig
from bertnli.sweep.warm_start import trained_here


def trials_front(cfg: SweepConfig, trials) -> pd.DataFrame:
    """One row per complete trial trained in this study: its number, measures and params, whether it holds
    every constraint (`feasible`), whether it is on the front (`pareto`) and its rank there by accuracy."""
    rows = [
        {"number": t.number, **measures(t), **{f"param_{k}": v for k, v in t.params.items()}}
        for t in trained_here(trials)
        if t.state == states().COMPLETE
    ]
    table = pd.DataFrame(rows, columns=["number", *MEASURED]) if not rows else pd.DataFrame(rows)
    return front_table(table, objectives_of(cfg), constraints_of(cfg))


def front_numbers(cfg: SweepConfig, trials) -> list[int]:
    """The front's trials, the most accurate first."""
    table = trials_front(cfg, trials)
    on = table[table["pareto"]].sort_values("pareto_rank")
    return [int(n) for n in on["number"]]


def kept(cfg: SweepConfig, trials, rungs=None) -> list[int]:
    """The trials whose weights the study keeps, logs as MLflow models and registers, the champion first: the
    front with several objectives, else the most accurate trial that holds every constraint."""
    if is_multi(cfg):
        return front_numbers(cfg, trials)
    best = best_trial(trials, rungs, lambda t: holds(cfg, t))
    return [best.number] if best is not None else []
