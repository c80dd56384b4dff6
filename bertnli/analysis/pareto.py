"""Accuracy against cost: a study's objectives and constraints, the trials no other trial beats on all of them,
and what the cheaper of two runs gives up.

A study may optimise dev accuracy alone (the default) or dev accuracy and costs that every run records
(train/cost.py); the answer is then a front of trade-offs, not one winner. Accuracy is always the first
objective: the winner of a study (its champion) is the most accurate trial on the front. The front is
computed here from plain tables, so the sweep (from its trials) and `report` (from MLflow runs) agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bertnli import BadInput
from bertnli.tracking.query import COSTS, finished_runs
from bertnli.tracking.store import client

# what every run records, and which way is better; a trial holds them as user attributes, a run as metrics
MEASURED = {
    "dev_acc": "max",
    "train_seconds": "min",
    "params": "min",
    "peak_mem_mib": "min",
    "latency_ms_b1": "min",
    "latency_ms_b256": "min",
}
ALIASES = {"latency_ms": "latency_ms_b1"}
ACCURACY = "dev_acc"
RUN_METRIC = {"dev_acc": "best_dev_acc"}  # the MLflow metric under another name


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # "max" or "min"

    def describe(self) -> str:
        return f"{self.name}:{self.direction}"


@dataclass(frozen=True)
class Constraint:
    name: str
    op: str  # "<=" or ">="
    bound: float

    def describe(self) -> str:
        bound = repr(self.bound)  # exact: two bounds never read alike (a study's identity, Optuna's constraint keys)
        return f"{self.name}{self.op}{bound.removesuffix('.0')}"

    def violation(self, value: float | None) -> float:
        """Optuna's convention: <= 0 is satisfied. A value never measured (a trial that did not finish) violates."""
        if value is None or np.isnan(value):
            return float("inf")
        return value - self.bound if self.op == "<=" else self.bound - value

    def holds(self, value: float | None) -> bool:
        return self.violation(value) <= 0


def _measured(name: str, where: str) -> str:
    name = ALIASES.get(name, name)
    if name not in MEASURED:
        known = ", ".join([*MEASURED, *ALIASES])
        raise BadInput(f"{where}: {name!r} is not measured; choose from {known}")
    return name


def parse_objectives(text: str) -> tuple[Objective, ...]:
    """`dev_acc:max,train_seconds:min` (a direction may be left out: each measure's better way). Accuracy
    comes first, added when left out: it is what the study selects its champion by."""
    out: list[Objective] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, _, direction = item.partition(":")
        name = _measured(name.strip(), f"bad --objective {item!r}")
        direction = direction.strip() or MEASURED[name]
        if direction not in ("max", "min"):
            raise BadInput(f"bad --objective {item!r}: direction {direction!r}; write NAME:max or NAME:min")
        if any(o.name == name for o in out):
            raise BadInput(f"bad --objective {text!r}: {name} is given twice")
        out.append(Objective(name, direction))
    accuracy = [o for o in out if o.name == ACCURACY]
    if accuracy and accuracy[0].direction != "max":
        raise BadInput(f"bad --objective {text!r}: dev_acc is maximised; write dev_acc or dev_acc:max")
    return (Objective(ACCURACY, "max"), *[o for o in out if o.name != ACCURACY])


def parse_constraint(text: str) -> Constraint:
    """`peak_mem_mib<=8000`: a trial that breaks it is recorded, and never on the front nor the champion."""
    m = re.fullmatch(r"\s*([A-Za-z_0-9]+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*", text)
    if not m:
        raise BadInput(f"bad --constraint {text!r}; write NAME<=BOUND or NAME>=BOUND, e.g. peak_mem_mib<=8000")
    try:
        bound = float(m[3])
    except ValueError:
        raise BadInput(f"bad --constraint {text!r}: {m[3]!r} is not a number") from None
    return Constraint(_measured(m[1], f"bad --constraint {text!r}"), m[2], bound)


def dominated(values: np.ndarray) -> np.ndarray:
    """values: (n, k), every column to be maximised. Row i is dominated when some row is >= on every column
    and > on one."""
    ge = (values[None, :, :] >= values[:, None, :]).all(-1)  # [i, j]: row j is at least as good as i everywhere
    gt = (values[None, :, :] > values[:, None, :]).any(-1)
    return (ge & gt).any(1)


def front(table: pd.DataFrame, objectives: tuple[Objective, ...], feasible: pd.Series | None = None) -> pd.Series:
    """True for the rows on the Pareto front: feasible, every objective measured, and dominated by no such row."""
    columns = [o.name for o in objectives]
    ok = table[columns].notna().all(axis=1)
    if feasible is not None:
        ok &= feasible.astype(bool)
    signs = np.array([1.0 if o.direction == "max" else -1.0 for o in objectives])
    values = table.loc[ok, columns].to_numpy(dtype=float) * signs
    on = pd.Series(False, index=table.index)
    on[ok[ok].index] = ~dominated(values) if len(values) else []
    return on


def feasible(table: pd.DataFrame, constraints: tuple[Constraint, ...]) -> pd.Series:
    ok = pd.Series(True, index=table.index)
    for c in constraints:
        values = table[c.name] if c.name in table else pd.Series(np.nan, index=table.index)
        ok &= values.map(lambda v, c=c: c.holds(None if pd.isna(v) else float(v)))
    return ok


def front_table(table: pd.DataFrame, objectives: tuple[Objective, ...], constraints=()) -> pd.DataFrame:
    """`table` (one row per trial or run, a column per measure) with `feasible` and `pareto` columns, and
    `pareto_rank` (1 = the most accurate point of the front)."""
    out = table.copy()
    out["feasible"] = feasible(out, tuple(constraints))
    out["pareto"] = front(out, objectives, out["feasible"])
    ranks = out.loc[out["pareto"], ACCURACY].rank(ascending=False, method="first")
    out["pareto_rank"] = pd.Series(pd.NA, index=out.index, dtype="Int64")
    out.loc[ranks.index, "pareto_rank"] = ranks.astype(int)
    return out


def pareto_figure(table: pd.DataFrame, objectives: tuple[Objective, ...], label: str = "number"):
    """Dev accuracy against each cost objective, one panel each: the front in colour and joined, the dominated
    trials grey, the trials that break a constraint as grey crosses."""
    from bertnli.tracking.figures import log_scale, pyplot

    plt = pyplot()
    costs = [o for o in objectives if o.name != ACCURACY] or [Objective(ACCURACY, "max")]
    fig, axes = plt.subplots(1, len(costs), figsize=(6 * len(costs), 4.5), squeeze=False)
    for ax, cost in zip(axes[0], costs):
        measured = table[table[ACCURACY].notna() & table[cost.name].notna()]
        grey = measured[measured["feasible"] & ~measured["pareto"]]
        broke = measured[~measured["feasible"]]
        on = measured[measured["pareto"]].sort_values(cost.name)
        ax.scatter(grey[cost.name], grey[ACCURACY], c="0.7", label="dominated")
        ax.scatter(broke[cost.name], broke[ACCURACY], c="0.7", marker="x", label="breaks a constraint")
        ax.plot(on[cost.name], on[ACCURACY], "o-", c="tab:red", label="Pareto front")
        for _, r in on.iterrows():
            ax.annotate(str(r[label]), (r[cost.name], r[ACCURACY]), textcoords="offset points", xytext=(4, 4))
        ax.set(xlabel=f"{cost.name} ({cost.direction})", ylabel="dev accuracy", title=f"dev accuracy vs {cost.name}")
        if cost.name == "params" and (measured[cost.name] > 0).all():
            log_scale(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def study_fronts(runs: pd.DataFrame, tracking_uri: str | None = None) -> pd.DataFrame:
    """For each study over accuracy and cost (its parent run's `bertnli.objectives` names several, or it has
    constraints): its finished trials' measures from their runs, with `feasible`, `pareto` and `pareto_rank`
    (analysis/pareto.py). Empty when no study of these runs traded accuracy against cost."""
    done = finished_runs(runs)
    parents = done["parent_run_id"].dropna().unique() if "parent_run_id" in done else []
    c, tables = client(tracking_uri), []
    for parent in parents:
        try:
            tags = c.get_run(parent).data.tags
        except Exception:  # noqa: BLE001 - a deleted parent: its objectives are unknown
            continue
        objectives = parse_objectives(tags.get("bertnli.objectives", ACCURACY))
        constraints = tuple(parse_constraint(x) for x in tags.get("bertnli.constraints", "").split(", ") if x)
        if len(objectives) == 1 and not constraints:
            continue
        trials = done[done["parent_run_id"] == parent].drop(columns=[ACCURACY], errors="ignore")  # the last epoch's
        trials = trials.rename(columns={"best_dev_acc": ACCURACY})  # the selected epoch's, as the study told Optuna
        table = front_table(trials, objectives, constraints)
        table.insert(0, "study", tags.get("bertnli.study", parent))
        table["objectives"] = ",".join(o.describe() for o in objectives)
        tables.append(table)
    if not tables:
        return pd.DataFrame()
    out = pd.concat(tables, ignore_index=True).sort_values(["study", "pareto_rank"])
    measured = [c for c in (ACCURACY, *MEASURED) if c in out and out[c].notna().any()]
    keep = ["study", "trial", "run_id", "model", "lr", "epochs", *dict.fromkeys(measured), "test_acc"]
    return out[[*keep, "feasible", "pareto", "pareto_rank", "objectives"]]


def cost_lines(
    run_ids_a: list[str],
    run_ids_b: list[str],
    table: pd.DataFrame,
    name_a: str = "A",
    name_b: str = "B",
    tracking_uri: str | None = None,
) -> list[str]:
    """What each side costs (train/cost.py, the mean over a side's runs) and, when one side is cheaper on every
    cost both recorded, how much dev accuracy it gives up, with the paired CI of `table`'s dev row."""
    c = client(tracking_uri)
    metrics = {r: c.get_run(r).data.metrics for r in [*run_ids_a, *run_ids_b]}

    def mean(runs: list[str], key: str) -> float | None:
        values = [metrics[r][key] for r in runs if key in metrics[r]]
        return float(np.mean(values)) if len(values) == len(runs) else None

    lines, cheaper = [], set()
    for key in COSTS:
        a, b = mean(run_ids_a, key), mean(run_ids_b, key)
        if a is None or b is None or a <= 0 or b <= 0:
            continue
        side = name_a if a < b else name_b if b < a else "neither"
        cheaper.add(side)
        which = "the same" if side == "neither" else f"{side} {max(a, b) / min(a, b):.2f}x cheaper"
        lines.append(f"{key}: {name_a} {a:,.4g} vs {name_b} {b:,.4g} ({which})")
    if not lines:
        return []
    dev = table[table["split"] == "dev"].iloc[0]
    if len(cheaper - {"neither"}) == 1:
        cheap = (cheaper - {"neither"}).pop()
        sign = 1 if cheap == name_b else -1  # delta is A - B: what the cheaper side gives up is positive
        low, high = sorted((sign * dev["ci_low"], sign * dev["ci_high"]))
        given = 100 * sign * dev["delta"]
        ci = f"95 % CI [{100 * low:+.2f}, {100 * high:+.2f}] pp"
        if given >= 0:
            lines.append(
                f"{cheap} costs no more on any cost recorded and gives up {given:.2f} pp of dev accuracy ({ci})"
            )
        else:
            lines.append(
                f"{cheap} costs no more on any cost recorded and is {-given:.2f} pp more accurate on dev too "
                f"(what it gives up: {ci})"
            )
    elif cheaper == {"neither"}:
        lines.append("the two cost the same on every cost recorded")
    else:
        lines.append("neither side is cheaper on every cost recorded: a trade-off, not a dominance")
    return lines
