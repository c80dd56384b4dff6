"""What a study holds before its sampler draws: warm-start trials, the user's known configurations, and
every model x truncation cell, each added once per study.

On a first start the process that publishes the study's parent run seeds it, before it publishes
(every other process waits for that): a check-then-add by every starter let two starters both see
nothing and add everything twice. A publisher stopped midway is taken over by the first starter to
see it gone, which adds the rest. A resume that adds a warm-start source or an `--enqueue` entry
adds just that, in each process that starts (two resuming at the same moment may both add it).
"""

from __future__ import annotations

from bertnli.sweep.rungs import RUNG
from bertnli.sweep.space import SweepConfig, cells
from bertnli.sweep.warm_start import DONE_ATTR, Imported, trained_here

CELLS_ATTR = "cells_enqueued"


def add_warm_start(study, plans: list[Imported], log=print) -> int:
    """The sources' planned trials, each source once per study; returns how many trials were added."""
    done, added = set(study.user_attrs.get(DONE_ATTR, [])), 0
    for plan in plans:
        if plan.source.key in done:
            continue
        study.add_trials(plan.trials)
        log(plan.summary())
        added += len(plan.trials)
        done.add(plan.source.key)
        study.set_user_attr(DONE_ATTR, sorted(done))
    return added


def queue_known(study, cfg: SweepConfig, log=print, complete: bool = False) -> None:
    """`--enqueue` configurations that were never queued in this study (compared with what each of its own trials
    was queued with: an imported trial of the same params does not stand for one trained here). None to a
    `complete` study: nothing would run them now, and a later sweep would, unasked."""
    queued = [t.system_attrs.get("fixed_params") for t in trained_here(study.get_trials(deepcopy=False))]
    new = [params for i, params in enumerate(cfg.enqueue) if params not in queued and params not in cfg.enqueue[:i]]
    if new and complete:
        them = "it" if len(new) == 1 else "them"
        log(
            f"--enqueue: the study is complete ({cfg.trials}/{cfg.trials} trials); {len(new)} configuration"
            f"{'s' if len(new) > 1 else ''} not queued (raise --trials to run {them})"
        )
        return
    for params in new:
        study.enqueue_trial(params)


def queue_cells(study, cfg: SweepConfig, multi_fidelity: bool) -> None:
    """Every model x truncation cell once per study (other params sampled); none for the random sampler,
    whose trials must stay independent draws."""
    if study.user_attrs.get(CELLS_ATTR) or cfg.sampler == "random":
        return
    rung0 = {RUNG: 0} if multi_fidelity else {}
    for cell in cells(cfg):
        study.enqueue_trial({**cell, **rung0}, skip_if_exists=True)  # a dead seeder's rerun adds the rest
    study.set_user_attr(CELLS_ATTR, True)
