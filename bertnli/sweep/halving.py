"""Successive halving over the training-set fraction (`sweep --fidelity data`), on plain Optuna trials.

One Optuna trial per configuration and rung; the rung is one of the trial's params. Sampled
configurations get rung 0 through Optuna's `PartialFixedSampler`; a promoted configuration is
queued with `enqueue_trial` (its params plus its new rung). So the sampler, the queue, retries,
reaping and the exactly-N guarantees work as in every sweep, through public API only.

Synchronous halving: rung k + 1 starts once every trial of rung k has ended, with the best
1/eta of rung k by dev accuracy (rungs.promoted). What the study holds decides what comes
next (`plan`), so a killed sweep, rerun, continues the rung it was in: a configuration that
completed a rung is never trained at that rung again, and one killed mid-rung resumes from its
checkpoint (a retry, reaping.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bertnli.sweep.reaping import states
from bertnli.sweep.rungs import RUNG, promoted, rung_fractions, rung_sizes
from bertnli.sweep.space import SweepConfig


@dataclass(frozen=True)
class Rungs:
    fractions: tuple[float, ...]  # training-set fraction per rung, the last 1
    sizes: tuple[int, ...]  # configurations per rung

    @property
    def total(self) -> int:
        """Trials of a study that ran to its end (every configuration, once per rung it reached)."""
        return sum(self.sizes)

    @property
    def top(self) -> int:
        return len(self.sizes) - 1


SETTINGS_ATTR = "bertnli.fidelity"


def settings(cfg: SweepConfig) -> dict[str, Any]:
    """What a study's trials mean, fixed when it is created: a rerun with other settings would mix schedules."""
    if cfg.fidelity != "data":
        return {"fidelity": "none"}
    return {"fidelity": "data", "eta": cfg.eta, "min_fraction": cfg.min_fraction, "trials": cfg.trials}


def rungs_of(cfg: SweepConfig) -> Rungs | None:
    """The study's rungs; None for a one-fidelity sweep (every trial on the whole train split)."""
    if cfg.fidelity != "data":
        return None
    fractions = rung_fractions(cfg.eta, cfg.min_fraction)
    return Rungs(tuple(fractions), tuple(rung_sizes(cfg.trials, cfg.eta, len(fractions))))


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
    retries: list[int] = field(default_factory=list)  # failed attempts at a rung > 0 to queue again (resuming them)


def _failed_try(t) -> bool:
    """A failed trial that trained (not withdrawn right after `ask`, not an orphan that never ran): it may be
    resumed.
    """
    return t.state == states().FAIL and not (t.user_attrs.get("stepped_aside") or t.user_attrs.get("orphan"))


def _is_attempt(t) -> bool:
    """A failed try that counts against its configuration's retries (an interruption does not)."""
    return _failed_try(t) and not t.user_attrs.get("interrupted")


def _exhausted(trials, k: int, max_retries: int) -> set[str]:
    """Configurations that failed every try at rung k."""
    fails: dict[str, int] = {}
    for t in trials:
        if rung_of(t) == k and _is_attempt(t):
            key = config_key(params_of(t))
            fails[key] = fails.get(key, 0) + 1
    return {key for key, n in fails.items() if n > max_retries}


def chosen(trials, k: int, rungs: Rungs, max_retries: int) -> list[str]:
    """Rung k's configurations: the best sizes[k] of rung k - 1 by dev accuracy, passing over any that failed every
    try at rung k (the next best takes its place). Rung k - 1 has ended before rung k starts, so this is fixed."""
    gone = _exhausted(trials, k, max_retries)
    below = [
        t
        for t in trials
        if rung_of(t) == k - 1 and t.state == states().COMPLETE and config_key(params_of(t)) not in gone
    ]
    return promoted([(config_key(params_of(t)), t.value, t.number) for t in below], rungs.sizes[k])


def plan(trials, rungs: Rungs, max_retries: int) -> Plan:
    """What the study needs next, from its trials alone (any process, any time, after any kill).

    At rung 0 the queue (cells, retries) and then the sampler fill N slots. At a higher rung the
    plan alone queues work: a chosen configuration not yet trained there is queued fresh, or, if
    it failed there, as a retry of its last attempt (Optuna's retry attributes: it resumes from
    that attempt's checkpoint). `reaping.retry` leaves those to the plan, so nothing is queued twice.
    """
    S = states()
    live = (S.COMPLETE, S.PRUNED, S.RUNNING)
    for k, size in enumerate(rungs.sizes):
        members = [t for t in trials if rung_of(t) == k and t.state in live]
        if k == 0:
            if len(members) < size:
                return Plan("ask")
        else:
            have = {config_key(params_of(t)) for t in members}
            todo = [c for c in chosen(trials, k, rungs, max_retries) if c not in have]
            if todo:
                queued = {config_key(params_of(t)) for t in trials if rung_of(t) == k and t.state == S.WAITING}
                decision = Plan("ask")
                for c in todo:
                    if c in queued:
                        continue
                    tries = [t for t in trials if rung_of(t) == k and _failed_try(t) and config_key(params_of(t)) == c]
                    if tries:
                        decision.retries.append(max(t.number for t in tries))
                    else:
                        decision.enqueue.append({**json.loads(c), RUNG: k})
                return decision
        if any(t.state == S.RUNNING for t in members):
            return Plan("wait")  # synchronous halving: the next rung is chosen from this whole rung
    return Plan("done")


def excess(trials, number: int, rungs: Rungs, max_retries: int) -> bool:
    """After `ask()`: should trial `number` not run? One too many at its rung (racing workers), a second copy
    of a configuration, a configuration the plan did not choose, or a rung that is closed (the next has begun).

    Counted like the plain sweep's exactly-N check: of two racing trials the later to check
    always sees the other, so both never stay.
    """
    S = states()
    me = trials[number]
    k = rung_of(me)
    if k > rungs.top:
        return True
    if not is_open(trials, k):
        return True  # a leftover of a rung that has ended (e.g. a queued retry nobody needed)
    members = [t for t in trials if rung_of(t) == k and t.state in (S.COMPLETE, S.PRUNED, S.RUNNING)]
    if len(members) > rungs.sizes[k]:
        return True
    if k == 0:
        return False
    mine = config_key(params_of(me))
    return (
        mine not in chosen(trials, k, rungs, max_retries) or sum(config_key(params_of(t)) == mine for t in members) > 1
    )


def awaiting_retry(trials, rungs: Rungs, max_retries: int) -> set[int]:
    """Failed attempts above rung 0 that the plan will queue again (their checkpoints must stay)."""
    S = states()
    out = set()
    for k in range(1, rungs.top + 1):
        done = {config_key(params_of(t)) for t in trials if rung_of(t) == k and t.state in (S.COMPLETE, S.PRUNED)}
        wanted = set(chosen(trials, k, rungs, max_retries)) - done
        out |= {t.number for t in trials if rung_of(t) == k and _failed_try(t) and config_key(params_of(t)) in wanted}
    return out


def is_open(trials, k: int) -> bool:
    """Rung k still takes trials: no trial of a higher rung exists yet."""
    S = states()
    return not any(rung_of(t) > k and (t.state != S.FAIL or _failed_try(t)) for t in trials)


def best_trial(trials, rungs: Rungs | None):
    """The study's winner: the best complete trial at the highest rung any reached (full data when the study ended)."""
    S = states()
    complete = [t for t in trials if t.state == S.COMPLETE]
    if rungs is not None and complete:
        top = max(rung_of(t) for t in complete)
        complete = [t for t in complete if rung_of(t) == top]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def rung_table(trials, rungs: Rungs):
    """One row per rung: its fraction and examples, configurations planned and trained, how they ended, the best dev
    accuracy.
    """
    import pandas as pd

    S = states()
    rows = []
    for k, (fraction, size) in enumerate(zip(rungs.fractions, rungs.sizes)):
        at = [t for t in trials if rung_of(t) == k and t.state in (S.COMPLETE, S.PRUNED, S.RUNNING)]
        values = [t.value for t in at if t.state == S.COMPLETE]
        examples = next((int(t.user_attrs["train_examples"]) for t in at if t.user_attrs.get("train_examples")), "")
        rows.append(
            {
                "rung": k,
                "train_fraction": round(fraction, 4),
                "train_examples": examples,
                "planned": size,
                "configurations": len(at),
                "complete": len(values),
                "pruned": sum(t.state == S.PRUNED for t in at),
                "running": sum(t.state == S.RUNNING for t in at),
                "best_dev_acc": round(max(values), 4) if values else "",
            }
        )
    return pd.DataFrame(rows)
