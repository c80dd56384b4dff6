"""Which trial checkpoints a study keeps on disk: what a retry may still resume from, and the winner's weights."""

from __future__ import annotations

import shutil

from bertnli.sweep import halving
from bertnli.sweep.front import kept
from bertnli.sweep.halving import Rungs
from bertnli.sweep.reaping import retry_history, states, study_dir
from bertnli.sweep.space import SweepConfig


def prune_checkpoints(cfg: SweepConfig, trials: list, rungs: Rungs | None) -> None:
    """Trials keep no optimizer state once nothing will resume them; only the best complete trial (every
    trial on the Pareto front of a study over costs) keeps its weights (unless 'all'). A failed trial keeps
    both until its retry has taken them."""
    S = states()
    pending = {retry_history(t)[-1] for t in trials if t.state == S.WAITING and retry_history(t)}
    keep = {t.number for t in trials if t.state == S.RUNNING} | pending
    if rungs:  # a promoted configuration's failed attempt, until the plan queues its retry
        keep |= halving.awaiting_retry(trials, rungs, cfg.max_retries)
    number = lambda p: int(p.parent.name.split("-")[1])  # noqa: E731 - trial-NNN/<file>
    for last in study_dir(cfg).glob("trial-*/last.pt"):
        if number(last) not in keep:
            last.unlink(missing_ok=True)
    if cfg.keep_checkpoints == "all":
        return
    winners = set(kept(cfg, trials, rungs))  # the best trial, or every trial on the Pareto front
    for ck in study_dir(cfg).glob("trial-*/best"):
        if number(ck) not in winners | keep:
            shutil.rmtree(ck, ignore_errors=True)
