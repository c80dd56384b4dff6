"""Successive halving over the training-set fraction (`sweep --fidelity data`), on plain Optuna trials.

One Optuna trial per configuration and rung; the rung is one of the trial's params. Sampled
configurations get rung 0 through Optuna's `PartialFixedSampler`; a promoted configuration is
queued with `enqueue_trial` (its params plus its new rung). So the sampler, the queue, retries,
reaping and the exactly-N guarantees work as in every sweep, through public API only.

Synchronous halving (the default): rung k + 1 starts once every trial of rung k has ended, with
the best 1/eta of rung k by dev accuracy (rungs.promoted). Asynchronous (`--promotion async`,
ASHA: Li et al., MLSys 2020): a configuration goes up as soon as it ranks in the best 1/eta of
the trials of its rung finished so far, so no worker waits for a rung's slowest trial; once a
rung has ended, the rung above is filled with its best not yet promoted, so both train the same
number of configurations per rung. What the study holds decides what comes next (`plan`), so a
killed sweep, rerun, continues where it was: a configuration that completed a rung is never
trained at that rung again, and one killed mid-rung resumes from its checkpoint (a retry, reaping.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bertnli import BadInput
from bertnli.sweep.objectives import accuracy
from bertnli.sweep.reaping import states
from bertnli.sweep.rungs import RUNG, promoted, rung_fractions, rung_sizes
from bertnli.sweep.space import SweepConfig
from bertnli.sweep.warm_start import trained_here


@dataclass(frozen=True)
class Rungs:
    fractions: tuple[float, ...]  # training-set fraction per rung, the last 1
    sizes: tuple[int, ...]  # configurations per rung
    asynchronous: bool = False  # ASHA promotions instead of rung barriers
    eta: int = 3  # async: a configuration goes up once it ranks in the best 1/eta of its rung's finished trials

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
    made = {"fidelity": "data", "eta": cfg.eta, "min_fraction": cfg.min_fraction, "trials": cfg.trials}
    return made | ({"promotion": "async"} if cfg.promotion == "async" else {})  # studies made before it: sync


def keep_settings(study, cfg: SweepConfig) -> None:
    """A study keeps the fidelity settings it was created with (a plain study made before they were
    recorded counts as plain); a rerun with others is refused in one line."""
    mine = settings(cfg)
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        if study.get_trials(deepcopy=False):
            stored = {"fidelity": "none"}
        else:
            study.set_user_attr(SETTINGS_ATTR, mine)
            return
    if stored != mine:
        said = lambda d: " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())  # noqa: E731
        raise BadInput(
            f"study {cfg.study_name} was created with {said(stored)}, not {said(mine)}; rerun it with "
            f"the same settings, or start another with --study-name"
        )


def rungs_of(cfg: SweepConfig) -> Rungs | None:
    """The study's rungs; None for a one-fidelity sweep (every trial on the whole train split)."""
    if cfg.fidelity != "data":
        return None
    fractions = rung_fractions(cfg.eta, cfg.min_fraction)
    sizes = tuple(rung_sizes(cfg.trials, cfg.eta, len(fractions)))
    return Rungs(tuple(fractions), sizes, asynchronous=cfg.promotion == "async", eta=cfg.eta)


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
    """A failed try that counts against its configuration's retries (an interruption, or running out of GPU
    memory beside other trials, does not)."""
    return _failed_try(t) and not (t.user_attrs.get("interrupted") or t.user_attrs.get("oom_beside_others"))


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


LIVE = ("COMPLETE", "PRUNED", "RUNNING")


def _members(trials, k: int) -> list:
    """Rung k's trials that hold a place there: complete, pruned or running."""
    return [t for t in trials if rung_of(t) == k and t.state.name in LIVE]


def _configs(trials, k: int, *names: str) -> set[str]:
    return {config_key(params_of(t)) for t in trials if rung_of(t) == k and t.state.name in names}


def wanted(trials, k: int, rungs: Rungs, max_retries: int) -> list[str]:
    """Rung k's configurations as far as they are decided now, in the order they are queued.

    Synchronous: `chosen` (rung k - 1 has ended). Asynchronous: those already promoted, then the best
    n // eta of the n trials of rung k - 1 finished so far (all of rung k's size once it has ended)."""
    if not rungs.asynchronous:
        return chosen(trials, k, rungs, max_retries)
    gone = _exhausted(trials, k, max_retries)
    so_far = sorted(  # promoted already: running or done there, queued there, or failed there (to be resumed)
        {
            config_key(params_of(t))
            for t in trials
            if rung_of(t) == k
            and (t.state.name in (*LIVE, "WAITING") or _failed_try(t))
            and config_key(params_of(t)) not in gone
        }
    )
    below = [t for t in trials if rung_of(t) == k - 1 and t.state == states().COMPLETE]
    finished = [t for t in below if config_key(params_of(t)) not in gone]
    n = min(rungs.sizes[k], len(finished) // rungs.eta)
    if _ended(trials, k - 1, rungs, max_retries):
        n = rungs.sizes[k]
    best = promoted([(config_key(params_of(t)), t.value, t.number) for t in finished], n)
    return so_far + [c for c in best if c not in so_far]


def _todo(trials, k: int, rungs: Rungs, max_retries: int) -> list[str]:
    """Configurations rung k still needs (queued ones included); async: no more than the rung has room for."""
    live, waiting = _configs(trials, k, *LIVE), _configs(trials, k, "WAITING")
    todo = [c for c in wanted(trials, k, rungs, max_retries) if c not in live]
    if rungs.asynchronous:
        room = max(0, rungs.sizes[k] - len(live | waiting))
        todo = [c for c in todo if c in waiting] + [c for c in todo if c not in waiting][:room]
    return todo


def _ended(trials, k: int, rungs: Rungs, max_retries: int) -> bool:
    """Rung k will take no more trials and none of its trials runs (a queued copy of a configuration that
    is already there is a leftover, stepped aside when asked)."""
    if _configs(trials, k, "RUNNING") or _configs(trials, k, "WAITING") - _configs(trials, k, *LIVE):
        return False
    if k == 0:
        return len(_members(trials, 0)) >= rungs.sizes[0]
    return _ended(trials, k - 1, rungs, max_retries) and not _todo(trials, k, rungs, max_retries)


def _queue(trials, k: int, todo: list[str]) -> Plan:
    """Plan "ask" for rung k's `todo`: queued already, queued fresh, or (failed there) its last try resumed."""
    queued = _configs(trials, k, "WAITING")
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


def plan(trials, rungs: Rungs, max_retries: int) -> Plan:
    """What the study needs next, from its trials alone (any process, any time, after any kill).

    At rung 0 the queue (cells, retries) and then the sampler fill N slots. At a higher rung the
    plan alone queues work: a configuration it promotes and that is not yet trained there is queued
    fresh, or, if it failed there, as a retry of its last attempt (Optuna's retry attributes: it
    resumes from that attempt's checkpoint). `reaping.retry` leaves those to the plan, so nothing is
    queued twice. Asynchronous: promotions first, highest rung first, then rung 0; "wait" only
    when nothing can start.
    """
    if rungs.asynchronous:
        for k in range(rungs.top, 0, -1):
            todo = _todo(trials, k, rungs, max_retries)
            if todo:
                return _queue(trials, k, todo)
        if len(_members(trials, 0)) < rungs.sizes[0]:
            return Plan("ask")
        return Plan("wait") if any(t.state == states().RUNNING for t in trials) else Plan("done")
    S = states()
    for k, size in enumerate(rungs.sizes):
        members = _members(trials, k)
        if k == 0:
            if len(members) < size:
                return Plan("ask")
        else:
            todo = _todo(trials, k, rungs, max_retries)
            if todo:
                return _queue(trials, k, todo)
        if any(t.state == S.RUNNING for t in members):
            return Plan("wait")  # synchronous halving: the next rung is chosen from this whole rung
    return Plan("done")


def excess(trials, number: int, rungs: Rungs, max_retries: int) -> bool:
    """After `ask()`: should trial `number` not run? One too many at its rung (racing workers), a second copy
    of a configuration, a configuration the plan did not choose, or a rung that is closed.

    Counted like the plain sweep's exactly-N check: of two racing trials the later to check
    always sees the other, so both never stay.
    """
    me = trials[number]
    k = rung_of(me)
    if k > rungs.top:
        return True
    if not rungs.asynchronous and not is_open(trials, k, rungs):
        return True  # a leftover of a rung that has ended (e.g. a queued retry nobody needed)
    members = _members(trials, k)
    if len(members) > rungs.sizes[k]:
        return True
    if k == 0:
        return False
    mine = config_key(params_of(me))
    if sum(config_key(params_of(t)) == mine for t in members) > 1:
        return True
    if rungs.asynchronous:  # promoted when it was queued, whatever has finished since
        return mine not in _configs(trials, k - 1, "COMPLETE")
    return mine not in chosen(trials, k, rungs, max_retries)


def awaiting_retry(trials, rungs: Rungs, max_retries: int) -> set[int]:
    """Failed attempts above rung 0 that the plan will queue again (their checkpoints must stay)."""
    out = set()
    for k in range(1, rungs.top + 1):
        still = set(wanted(trials, k, rungs, max_retries)) - _configs(trials, k, "COMPLETE", "PRUNED")
        out |= {t.number for t in trials if rung_of(t) == k and _failed_try(t) and config_key(params_of(t)) in still}
    return out


def is_open(trials, k: int, rungs: Rungs | None = None) -> bool:
    """Rung k still takes trials. Synchronous: no trial of a higher rung exists yet. Asynchronous: it
    holds fewer than its size."""
    if rungs is not None and rungs.asynchronous:
        return len(_members(trials, k)) < rungs.sizes[k]
    S = states()
    return not any(rung_of(t) > k and (t.state != S.FAIL or _failed_try(t)) for t in trials)


def best_trial(trials, rungs: Rungs | None, ok=None):
    """The study's winner: the most accurate complete trial at the highest rung any reached (full data when the
    study ended) among those `ok` accepts (the study's constraints)."""
    S = states()
    complete = [t for t in trained_here(trials) if t.state == S.COMPLETE]  # an imported trial's weights are not here
    complete = [t for t in complete if ok is None or ok(t)]
    if rungs is not None and complete:
        top = max(rung_of(t) for t in complete)
        complete = [t for t in complete if rung_of(t) == top]
    return max(complete, key=lambda t: (accuracy(t), -t.number)) if complete else None


def rung_table(trials, rungs: Rungs):
    """One row per rung: its fraction and examples, configurations planned and trained, how they ended, the best dev
    accuracy.
    """
    import pandas as pd

    S = states()
    rows = []
    for k, (fraction, size) in enumerate(zip(rungs.fractions, rungs.sizes)):
        at = [t for t in trials if rung_of(t) == k and t.state in (S.COMPLETE, S.PRUNED, S.RUNNING)]
        values = [accuracy(t) for t in at if t.state == S.COMPLETE]
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
