"""A study's objectives and constraints in Optuna's terms: directions, the values told, each trial's constraints.

With one objective (dev accuracy, the default) a trial's value is its dev accuracy, as always. With
several (`--objective dev_acc,latency_ms`) a trial's values are its dev accuracy then each cost, and
the study answers with a Pareto front (analysis/pareto.py). Median pruning compares one value and
Optuna refuses it with several objectives, so a multi-objective study trains every trial to its end
(no pruning); multi-fidelity halving, which ranks on accuracy alone, is refused with them.
"""

from __future__ import annotations

from typing import Any

from bertnli.analysis.pareto import (
    ACCURACY,
    MEASURED,
    Constraint,
    Objective,
    parse_constraint,
    parse_objectives,
)
from bertnli.sweep.space import SweepConfig

STUDY_ATTR = "bertnli.objectives"  # the study's objectives as written, checked when a command resumes it


def objectives_of(cfg: SweepConfig) -> tuple[Objective, ...]:
    return parse_objectives(cfg.objective)


def constraints_of(cfg: SweepConfig) -> tuple[Constraint, ...]:
    return tuple(parse_constraint(c) for c in cfg.constraints)


def is_multi(cfg: SweepConfig) -> bool:
    return len(objectives_of(cfg)) > 1


def describe(cfg: SweepConfig) -> str:
    return ",".join(o.describe() for o in objectives_of(cfg))


def identity(cfg: SweepConfig) -> str:
    """What a study is optimised for, kept with it (STUDY_ATTR): its objectives and constraints. A resume that
    changes them would compare trials told on different terms."""
    limits = ", ".join(sorted(c.describe() for c in constraints_of(cfg)))
    return describe(cfg) + (f"; constraints {limits}" if limits else "")


def directions(cfg: SweepConfig) -> list[str]:
    return ["maximize" if o.direction == "max" else "minimize" for o in objectives_of(cfg)]


def accuracy(t) -> float | None:
    """A trial's dev accuracy: its value, or its first value in a multi-objective study."""
    return t.values[0] if t.values else None


def measures(t) -> dict[str, float | None]:
    """Every measure of a finished trial: dev accuracy from its value(s), the costs from its user attributes."""
    return {ACCURACY: accuracy(t), **{k: t.user_attrs.get(k) for k in MEASURED if k != ACCURACY}}


def summary_measures(s: dict[str, Any]) -> dict[str, Any]:
    """The measures in a trial's summary (trial.json, or its run's metrics as reaping reads them)."""
    return {ACCURACY: s.get("value"), "train_seconds": s.get("train_seconds"), **(s.get("costs") or {})}


def recorded_attrs(s: dict[str, Any]) -> dict[str, Any]:
    """The user attributes a complete trial gets from its summary, whoever tells it (its worker, or a reaper
    adopting it): its test accuracy and every cost, which `measures` reads back."""
    return {"test_acc": s.get("test_acc"), "train_seconds": s.get("train_seconds"), **(s.get("costs") or {})}


def values_to_tell(cfg: SweepConfig, measured: dict[str, Any]) -> list[float] | None:
    """The values Optuna is told, in the study's objective order; None when the run left one unmeasured."""
    values = [measured.get(o.name) for o in objectives_of(cfg)]
    return None if any(v is None for v in values) else [float(v) for v in values]


def set_constraints(trial, cfg: SweepConfig, measured: dict[str, Any]) -> None:
    """The trial's violation of each constraint (<= 0 holds) where Optuna's samplers read them (Optuna 5:
    `Trial.set_constraint`; TPE and NSGA-II then rank a trial that breaks one below every trial that does not).
    Set before the trial is told; a trial another process finished meanwhile keeps what it has."""
    from optuna.exceptions import UpdateFinishedTrialError

    for c in constraints_of(cfg):
        try:
            trial.set_constraint(c.describe(), c.violation(measured.get(c.name)))
        except UpdateFinishedTrialError:
            return


def holds(cfg: SweepConfig, t) -> bool:
    """The trial breaks none of the study's constraints."""
    m = measures(t)
    return all(c.holds(m.get(c.name)) for c in constraints_of(cfg))
