"""Successive halving over the training-set fraction (`sweep --fidelity data`), on plain Optuna trials.

One Optuna trial per configuration and rung; the rung is one of the trial's params. Sampled
configurations get rung 0 through Optuna's `PartialFixedSampler`; a promoted configuration is
queued with `enqueue_trial` (its params plus its new rung). So the sampler, the queue, retries,
reaping and the exactly-N guarantees work as in every sweep, through public API only.

Synchronous halving: rung k + 1 starts once every trial of rung k has ended, with the best
1/eta of rung k by dev accuracy (fidelity.promoted). What the study holds decides what comes
next (`plan`), so a killed sweep, rerun, continues the rung it was in: a configuration that
completed a rung is never trained at that rung again, and one killed mid-rung resumes from its
checkpoint (a retry, reaping.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bertnli.fidelity import promoted, rung_fractions, rung_sizes
from bertnli.sweep.reaping import states
from bertnli.sweep.space import SweepConfig

RUNG = "rung"


@dataclass(frozen=True)
class Schedule:
    fractions: tuple[float, ...]  # training-set fraction per rung, the last 1
    sizes: tuple[int, ...]  # configurations per rung

    @property
    def total(self) -> int:
        """Trials of a study that ran to its end (every configuration, once per rung it reached)."""
        return sum(self.sizes)

    @property
    def top(self) -> int:
        return len(self.sizes) - 1


def schedule(cfg: SweepConfig) -> Schedule | None:
    if cfg.fidelity != "data":
        return None
    fractions = rung_fractions(cfg.eta, cfg.min_fraction)
    return Schedule(tuple(fractions), tuple(rung_sizes(cfg.trials, cfg.eta, len(fractions))))


def params_of(t) -> dict[str, Any]:
    """A trial's params, also while a queued one has not suggested them yet (its fixed params)."""
    return {**t.system_attrs.get("fixed_params", {}), **t.params}


def rung_of(t) -> int:
    return int(params_of(t).get(RUNG, 0))  # a sampled trial is rung 0 (PartialFixedSampler) before it suggests


def config_key(params: dict[str, Any]) -> str:
    """A configuration's identity across rungs: its params without the rung."""
    return json.dumps({k: v for k, v in params.items() if k != RUNG}, sort_keys=True)


@dataclass
class Plan:
    action: str  # "ask" (a trial can start), "wait" (a rung is still running), "done"
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # promoted configurations to queue before asking


def _exhausted(trials, k: int, max_retries: int) -> set[str]:
    """Configurations that failed every try at rung k (not counting step-asides and interruptions)."""
    S = states()
    fails: dict[str, int] = {}
    for t in trials:
        if rung_of(t) == k and t.state == S.FAIL and not (t.user_attrs.get("stepped_aside") or t.user_attrs.get("interrupted")):
            key = config_key(params_of(t))
            fails[key] = fails.get(key, 0) + 1
    return {key for key, n in fails.items() if n > max_retries}


def plan(trials, sched: Schedule, max_retries: int) -> Plan:
    """What the study needs next, from its trials alone (any process, any time, after any kill)."""
    S = states()
    live = (S.COMPLETE, S.PRUNED, S.RUNNING)
    for k, size in enumerate(sched.sizes):
        members = [t for t in trials if rung_of(t) == k and t.state in live]
        if k == 0:
            if len(members) < size:
                return Plan("ask")  # the queue first (cells, retries), else the sampler draws a configuration
        else:
            below = [t for t in trials if rung_of(t) == k - 1 and t.state == S.COMPLETE]
            chosen = promoted([(config_key(params_of(t)), t.value, t.number) for t in below], size)
            have = {config_key(params_of(t)) for t in members}
            queued = {config_key(params_of(t)) for t in trials if rung_of(t) == k and t.state == S.WAITING}
            gone = _exhausted(trials, k, max_retries)
            todo = [c for c in chosen if c not in have and c not in gone]
            if todo:
                return Plan("ask", [{**json.loads(c), RUNG: k} for c in todo if c not in queued])
        if any(t.state == S.RUNNING for t in members):
            return Plan("wait")  # synchronous halving: the next rung is chosen from this whole rung
    return Plan("done")


def excess(trials, number: int, sched: Schedule) -> bool:
    """After `ask()`: is trial `number` one too many at its rung (a racing worker, a duplicate promotion)?

    Counted like the plain sweep's exactly-N check: of two racing trials the later to check
    always sees the other, so both never stay.
    """
    S = states()
    me = trials[number]
    k = rung_of(me)
    if k > sched.top:
        return True
    members = [t for t in trials if rung_of(t) == k and t.state in (S.COMPLETE, S.PRUNED, S.RUNNING)]
    if len(members) > sched.sizes[k]:
        return True
    mine = config_key(params_of(me))
    return k > 0 and sum(config_key(params_of(t)) == mine for t in members) > 1


def best_trial(trials, sched: Schedule | None):
    """The study's winner: the best complete trial at the highest rung any reached (full data when the study ended)."""
    S = states()
    complete = [t for t in trials if t.state == S.COMPLETE]
    if sched is not None and complete:
        top = max(rung_of(t) for t in complete)
        complete = [t for t in complete if rung_of(t) == top]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def rung_table(trials, sched: Schedule):
    """One row per rung: its fraction and examples, configurations, how they ended, the best dev accuracy, the promoted."""
    import pandas as pd

    S = states()
    rows = []
    for k, (fraction, size) in enumerate(zip(sched.fractions, sched.sizes)):
        at = [t for t in trials if rung_of(t) == k and t.state in (S.COMPLETE, S.PRUNED, S.RUNNING)]
        values = [t.value for t in at if t.state == S.COMPLETE]
        examples = next((t.user_attrs["train_examples"] for t in at if t.user_attrs.get("train_examples")), None)
        rows.append({"rung": k, "train_fraction": fraction, "train_examples": examples,
                     "configurations": size, "complete": len(values), "pruned": sum(t.state == S.PRUNED for t in at),
                     "running": sum(t.state == S.RUNNING for t in at),
                     "best_dev_acc": max(values) if values else None,
                     "promoted": sched.sizes[k + 1] if k < sched.top else None})
    return pd.DataFrame(rows)
