"""Pruning replay: what MedianPruner, SuccessiveHalving and Hyperband would have done to a finished study.

The per-epoch dev curves recorded in MLflow are fed, trial by trial, to Optuna's own pruners over
an in-memory study, so a replayed decision is the decision the real pruner makes on those numbers
(replaying the study's own MedianPruner reproduces the live decisions: tested). Trials are replayed
in trial-number order, which is the order a one-worker study ran them; with several workers a live
pruner saw fewer finished trials, so its decisions can differ from the replay's (the report says
when trials overlapped).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from bertnli import BadInput
from bertnli.analysis.stats import kendall_tau, spearman_rho
from bertnli.sweep.space import report_step
from bertnli.tracking.store import client


@dataclass
class Curve:
    """One trial as recorded: its dev accuracy per epoch (as far as it ran), its planned epochs."""

    number: int
    values: list[float]
    epochs: int  # planned: the pruner is never asked after the last epoch (it would save nothing)
    live_pruned: bool = False
    final: float | None = None  # best dev accuracy of a completed trial
    epoch_seconds: list[float] = field(default_factory=list)
    overlapped: bool = False


def pruners(settings: dict[str, int]) -> dict[str, object]:
    """The study's own MedianPruner (its recorded settings) and the two halving pruners, on epochs."""
    import optuna

    max_epochs = max(1, settings.get("max_epochs", 1))
    return {
        "MedianPruner": optuna.pruners.MedianPruner(
            n_startup_trials=settings.get("n_startup_trials", 5), n_warmup_steps=settings.get("n_warmup_steps", 0)
        ),
        "SuccessiveHalving": optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
        "Hyperband": optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs, reduction_factor=2),
    }


def replay(
    curves: list[Curve], pruner, step_of: Callable[[int, int], int] | None = None, warmup_epochs: int = 0
) -> list[int | None]:
    """The epoch at which `pruner` stops each trial (None: it runs to its end), over the recorded curves.

    `step_of(epoch, epochs)` is the Optuna step the live sweep reported an epoch at (default: the epoch).

    A trial the pruner would continue past the end of its recorded curve (it was pruned live) is
    told as pruned there: what it would have scored later was never measured.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
    decisions: list[int | None] = []
    for c in sorted(curves, key=lambda c: c.number):
        trial = study.ask()
        stopped = None
        for epoch, value in enumerate(c.values, start=1):
            trial.report(value, step_of(epoch, c.epochs) if step_of else epoch)
            if warmup_epochs < epoch < c.epochs and trial.should_prune():
                stopped = epoch
                break
        if stopped is not None or len(c.values) < c.epochs:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, c.final if c.final is not None else max(c.values))
        decisions.append(stopped)
    return decisions


def replay_as_live(curves: list[Curve], name: str, pruner, settings: dict[str, int]) -> list[int | None]:
    """The sweep's own pruner (MedianPruner) replayed on the sweep's clock: each epoch reported at the
    fraction of its trial's schedule (sweep.space.report_step), no decision in the warm-up epochs."""
    if name != "MedianPruner" or "warmup_epochs" not in settings:
        return replay(curves, pruner)
    ticks = math.lcm(*(c.epochs for c in curves))  # a divisor-compatible clock: same steps compared, same decisions
    return replay(curves, pruner, lambda e, n: report_step(e, n, ticks), settings["warmup_epochs"])


def _seconds(c: Curve, epochs: int) -> float:
    """Train seconds of the first `epochs` epochs; unrecorded epochs at the trial's mean epoch time."""
    known = c.epoch_seconds[:epochs]
    mean = float(np.mean(c.epoch_seconds)) if c.epoch_seconds else math.nan
    return float(sum(known)) + (epochs - len(known)) * mean


def summarize(curves: list[Curve], settings: dict[str, int]) -> pd.DataFrame:
    """Per pruner (and the live run): trials pruned, epochs and seconds run, saved vs no pruning, winner's fate."""
    curves = sorted(curves, key=lambda c: c.number)
    complete = [c for c in curves if not c.live_pruned]
    winner = max(complete, key=lambda c: c.final).number if complete else None
    full_epochs = sum(c.epochs for c in curves)
    full_seconds = sum(_seconds(c, c.epochs) for c in curves)
    live = [len(c.values) if c.live_pruned else None for c in curves]
    rows = []
    for name, decisions in [
        ("live", live),
        *((n, replay_as_live(curves, n, p, settings)) for n, p in pruners(settings).items()),
    ]:
        run = [d if d is not None else c.epochs for c, d in zip(curves, decisions)]
        unresolved = sum(c.live_pruned and d is None for c, d in zip(curves, decisions))
        seconds = sum(_seconds(c, e) for c, e in zip(curves, run))
        rows.append(
            {
                "pruner": name,
                "trials": len(curves),
                "pruned": sum(d is not None for d in decisions),
                "epochs_run": sum(run),
                "epochs_saved": full_epochs - sum(run),
                "seconds_run": seconds,
                "seconds_saved": full_seconds - seconds,
                "saved_fraction": 1 - seconds / full_seconds if full_seconds else math.nan,
                "winner_pruned": winner is not None and decisions[[c.number for c in curves].index(winner)] is not None,
                "same_as_live": sum(d == lv for d, lv in zip(decisions, live)),
                "unresolved": unresolved,
            }
        )
    return pd.DataFrame(rows)


def rank_by_epoch(curves: list[Curve]) -> pd.DataFrame:
    """Kendall's tau (and Spearman's rho) between the ranking at each epoch and the final ranking,
    over the completed trials that reached that epoch: how early the winner could be told."""
    complete = [c for c in curves if not c.live_pruned]
    rows = []
    for epoch in range(1, max((len(c.values) for c in complete), default=0) + 1):
        reached = [c for c in complete if len(c.values) >= epoch]
        at, final = [c.values[epoch - 1] for c in reached], [c.final for c in reached]
        rows.append(
            {
                "epoch": epoch,
                "trials": len(reached),
                "kendall_tau": kendall_tau(at, final),
                "spearman_rho": spearman_rho(at, final),
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- from MLflow


def parse_pruner_tag(tag: str | None) -> dict[str, int]:
    """`MedianPruner(n_startup_trials=4, n_warmup_steps=0)` (the sweep parent's tag) -> its settings."""
    settings = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", tag or "")}
    warmup = re.search(r"warmup (\d+) epochs", tag or "")
    if warmup:  # the sweep's clock: warm-up counted in epochs, outside the pruner
        settings["warmup_epochs"] = int(warmup.group(1))
    return settings


def study_curves(study: str, tracking_uri: str | None = None) -> tuple[list[Curve], dict[str, int]]:
    """The study's trial runs with their dev curves, and its MedianPruner settings (from the parent run)."""
    c = client(tracking_uri)
    exps = [e.experiment_id for e in c.search_experiments()]
    runs = c.search_runs(exps, filter_string=f"tags.`optuna.study` = '{study}'", max_results=50_000)
    runs = [r for r in runs if r.info.status == "FINISHED" or r.data.tags.get("optuna.state") == "PRUNED"]
    if not runs:
        raise BadInput(
            f"no finished or pruned trials of study {study!r}; check the name (bertnli-exp report lists runs) or "
            "--tracking-uri"
        )
    parent = runs[0].data.tags.get("mlflow.parentRunId")
    settings = parse_pruner_tag(c.get_run(parent).data.tags.get("bertnli.pruner") if parent else None)
    curves = []
    for r in runs:
        hist = sorted(c.get_metric_history(r.info.run_id, "dev_acc"), key=lambda m: m.step)
        speed = {m.step: m.value for m in c.get_metric_history(r.info.run_id, "examples_per_sec")}
        n_train = float(r.data.tags.get("bertnli.train_examples", "nan"))
        curves.append(
            Curve(
                int(r.data.tags["optuna.trial"]),
                [m.value for m in hist],
                int(r.data.params.get("epochs", len(hist))),
                r.data.tags.get("optuna.state") == "PRUNED",
                r.data.metrics.get("best_dev_acc"),
                [n_train / speed[m.step] for m in hist if speed.get(m.step)],
            )
        )
    spans = sorted((r.info.start_time, r.info.end_time or r.info.start_time) for r in runs)
    overlapped = any(b[0] < a[1] for a, b in zip(spans, spans[1:]))
    for cv in curves:
        cv.overlapped = overlapped
    settings["max_epochs"] = max(cv.epochs for cv in curves)
    return curves, settings


def replay_study(study: str, tracking_uri: str | None = None) -> dict[str, pd.DataFrame]:
    curves, settings = study_curves(study, tracking_uri)
    summary = summarize(curves, settings)
    summary["note"] = (
        "trials overlapped in time (several workers): the live pruner saw fewer finished trials than the replay"
        if curves[0].overlapped
        else ""
    )
    return {"pruner_replay": summary, "rank_by_epoch": rank_by_epoch(curves)}
