"""The study's MLflow parent run once elected (election.py): system metrics, summary, plots, verdict, its end."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

from bertnli.analysis.compare import sweep_verdict
from bertnli.analysis.pareto import MEASURED, pareto_figure
from bertnli.analysis.report import to_markdown
from bertnli.sweep.checkpoint_store import fetch_best, prune_store, store_uri
from bertnli.sweep.front import kept, trials_front
from bertnli.sweep.halving import rung_table, rungs_of
from bertnli.sweep.objectives import accuracy, is_multi, objectives_of
from bertnli.sweep.reaping import is_mine, retry_history, states, trial_dir
from bertnli.sweep.rungs import RUNG
from bertnli.sweep.space import SweepConfig
from bertnli.sweep.storage import min_trials
from bertnli.sweep.warm_start import DONE_ATTR, IMPORTED
from bertnli.tracking.figures import integer_ticks, log_scale, pyplot
from bertnli.tracking.models import log_selected
from bertnli.tracking.query import load_runs
from bertnli.tracking.store import client, default_tracking_uri, with_retries
from bertnli.tracking.system_metrics import start_system_metrics, system_metrics_on

SUMMARY_ATTR = "bertnli.summary_digest"  # parent run tag: the study state (space + trials table) its summary shows


def start_parent_metrics(cfg: SweepConfig, parent_run_id: str):
    """MLflow's system-metrics monitor on the parent run, for a process that runs workers under it.

    The parent spans the whole sweep (trial start-up, waits, reaping), which no child run covers,
    so its own system/* series shows the load between and across trials. It is started on the
    parent the election settled on (never on a candidate that lost and was deleted), by each
    process that runs workers; processes sharing a study sample into the one series (processes
    that start together may log the same steps). `resume` starts after the steps already logged
    (a resumed study's earlier invocations) instead of at step 0. MLflow's monitor stops by itself
    once the parent is no longer RUNNING, so a process that stops while others still run trials
    leaves the parent RUNNING (`others_at_work`): the last one ends it. Off under --no-system-metrics /
    BERTNLI_SYSTEM_METRICS=0, the same switch as the trials'.
    """
    if not system_metrics_on(cfg.tracking):
        return None
    uri = cfg.tracking.tracking_uri or default_tracking_uri()
    # every GPU of the host: the sweep's slots are all of them, and CUDA is never started in a sweep process
    return start_system_metrics(parent_run_id, uri, cfg.tracking.system_metrics_interval, resume=True, own_gpus=False)


# ---------------------------------------------------------------- the parent's summary


def trials_frame(study):
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        history = retry_history(t)
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "dev_acc": accuracy(t),
                "test_acc": t.user_attrs.get("test_acc"),
                **{f"param_{k}": v for k, v in t.params.items()},
                "epochs_reported": len(t.intermediate_values),
                "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
                "retry_of": history[0] if history else None,
                "seconds": t.user_attrs.get("trial_wall_seconds"),
                **{k: t.user_attrs.get(k) for k in MEASURED if k != "dev_acc"},
                "error": t.user_attrs.get("error"),
                "imported_from": t.user_attrs.get(IMPORTED),
            }
        )
    return pd.DataFrame(rows)


def link_sources(cfg: SweepConfig, parent_run_id: str, study) -> None:
    """The parent run names every study this one was warm-started from (tag) and lists every trial it imported
    (warm_start.csv), rebuilt from the study so that a resume adding a source keeps the earlier ones; the
    source runs stay where they are."""
    import pandas as pd

    rows = [
        {
            "imported_as": t.number,
            "source": t.user_attrs[IMPORTED].rsplit("#", 1)[0],
            "source_trial": int(t.user_attrs[IMPORTED].rsplit("#", 1)[1]),
            "source_run_id": t.user_attrs.get("source_run_id"),
            "dev_acc": accuracy(t),
            **{f"param_{k}": v for k, v in t.params.items()},
        }
        for t in study.get_trials(deepcopy=False)
        if IMPORTED in t.user_attrs
    ]
    c = client(cfg.tracking.tracking_uri or default_tracking_uri())
    sources = ", ".join(study.user_attrs.get(DONE_ATTR, []))
    with_retries(lambda: c.set_tag(parent_run_id, "bertnli.warm_start", sources))
    with_retries(lambda: c.log_text(parent_run_id, pd.DataFrame(rows).to_csv(index=False), "warm_start.csv"))


def searched_params(study) -> list[str]:
    """The hyperparameters of a study's complete trials; a multi-fidelity study's rung is a trial param
    too, but it is the budget, not a choice (a name no complete trial has would make Optuna's plot raise)."""
    return sorted({k for t in study.get_trials(deepcopy=False, states=(states().COMPLETE,)) for k in t.params} - {RUNG})


def first_rung(study):
    """The trials the per-parameter plots read. In a multi-fidelity study scores rise with the rung and
    only promoted configurations reach the higher rungs, so plotted together the budget would pass for
    the hyperparameters' effect: its rung-0 trials only (every sampled configuration, at one budget)."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(states().COMPLETE,))
    if not any(RUNG in t.params for t in done):
        return study
    view = optuna.create_study(directions=study.directions)  # in memory, never stored
    view.add_trials([t for t in done if t.params.get(RUNG) == 0])
    return view


def legible(fig, fn: str, n_params: int) -> None:
    """Optuna's figure `fn` laid out with labels that do not collide: the slice plot a panel width per parameter,
    log axes in plain numbers, whole trial numbers, and the slice plot's colour bar beside its panels
    (tight_layout would lay the last panel over it)."""
    fig.set_size_inches(max(10, 3 * n_params + 1) if fn == "plot_slice" else 10, 5)
    for ax in fig.axes:
        for which in "xy":
            if getattr(ax, f"get_{which}scale")() == "log":
                log_scale(ax, which)
    if fn == "plot_optimization_history":
        integer_ticks(fig.axes[0].xaxis)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"] if fn == "plot_slice" else []
    fig.tight_layout(rect=(0, 0, 0.9, 1) if bars else None)
    for ax in bars:
        ax.set_position([0.92, 0.12, 0.015, 0.76])


def _plots(study, c, parent_run_id: str, tmp: Path) -> None:
    import warnings

    import optuna.visualization.matplotlib as ovm

    plt = pyplot()

    plots = {
        "optimization_history.png": "plot_optimization_history",
        "param_importances.png": "plot_param_importances",
        "slice.png": "plot_slice",
        "parallel_coordinate.png": "plot_parallel_coordinate",
    }
    per_param = first_rung(study)
    params = searched_params(per_param)
    for name, fn in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                target = {"target": accuracy, "target_name": "dev_acc"} if len(study.directions) > 1 else {}
                if fn == "plot_optimization_history":
                    ax = ovm.plot_optimization_history(study, **target)
                else:
                    ax = getattr(ovm, fn)(per_param, params=params, **target)
                fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
                try:
                    legible(fig, fn, len(params))
                    fig.savefig(tmp / name, dpi=100)
                finally:
                    plt.close(fig)
            c.log_artifact(parent_run_id, str(tmp / name), "plots")
        except Exception as e:  # noqa: BLE001 - e.g. importances need >1 complete trial
            why = str(e)[:200]
            with_retries(lambda key=f"bertnli.plot_skipped.{name}", why=why: c.set_tag(parent_run_id, key, why))


def finish_parent(study, cfg: SweepConfig, parent_run_id: str, status: str, done: int, rungs=None) -> dict[str, Any]:
    """Best trial's params and metrics, the trials table (and the rung table) and Optuna's plots onto the parent run.

    Logged once per state of the study: an invocation that finds the trials as the summary already on the parent
    left them (a rerun of a finished study; the last of several processes to end) sets the status only.
    """
    c = client(cfg.tracking.tracking_uri)
    frame = trials_frame(study)
    trials = study.get_trials(deepcopy=False)
    winners = kept(cfg, trials, rungs)  # the champion first: with several objectives, the front's most accurate
    best = trials[winners[0]] if winners else None
    out: dict[str, Any] = {"parent_run_id": parent_run_id, "done": done, "trials": frame}
    out["kept"] = [trials[n] for n in winners]
    if best is not None:
        out["best"] = best
    if is_multi(cfg) or cfg.constraints:
        out["front"] = trials_front(cfg, trials)
    space = "; ".join(p.describe() for p in cfg.space)
    digest = hashlib.sha256(f"{space}\n{frame.to_csv(index=False)}".encode()).hexdigest()
    logged = c.get_run(parent_run_id).data.tags.get(SUMMARY_ATTR) == digest
    if rungs is not None:
        out["rungs"] = rung_table(study.get_trials(deepcopy=False), rungs)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not logged:
            _log_summary(c, study, cfg, parent_run_id, frame, best, out.get("rungs"), tmp)
            if "front" in out:
                _log_front(c, cfg, parent_run_id, out["front"], tmp)
        for t in (trials[n] for n in winners):
            _log_best_checkpoint(c, cfg, t, tmp, status == "FINISHED")  # once per trial: it checks the run
    if status == "FINISHED":
        prune_store(cfg, study, set(winners))
    if not logged:  # last: a summary cut short is logged again by the next invocation
        with_retries(lambda: c.set_tag(parent_run_id, SUMMARY_ATTR, digest))
    with_retries(lambda: c.log_metric(parent_run_id, "trials_done", done))
    if status != "FINISHED" and others_at_work(study):
        out["parent_left_running"] = True  # the last process at work ends it; its system metrics go on till then
    else:
        with_retries(lambda: c.set_terminated(parent_run_id, status))
    return out


def others_at_work(study) -> bool:
    """Another process runs a trial of the study: this one stopping early (a timeout, SIGTERM) must not end
    the parent run under it (MLflow stops every process's system metrics once the parent is not RUNNING)."""
    running = study.get_trials(deepcopy=False, states=(states().RUNNING,))
    return any(t.user_attrs.get("worker") and not is_mine(t) for t in running)


def _log_summary(c, study, cfg: SweepConfig, parent_run_id: str, frame, best, rung_frame, tmp: Path) -> None:
    """trials.csv (and rungs.csv), the best trial's metrics and params, the verdict and the plots."""
    frame.to_csv(tmp / "trials.csv", index=False)
    c.log_artifact(parent_run_id, str(tmp / "trials.csv"))
    if rung_frame is not None:
        _log_rungs(c, rung_frame, parent_run_id, tmp)
    if best is None:
        return
    tag = lambda key, value: with_retries(lambda: c.set_tag(parent_run_id, key, str(value)))  # noqa: E731
    with_retries(lambda: c.log_metric(parent_run_id, "best_dev_acc", accuracy(best)))
    if best.user_attrs.get("test_acc") is not None:
        with_retries(lambda: c.log_metric(parent_run_id, "best_trial_test_acc", best.user_attrs["test_acc"]))
    for k, v in best.params.items():
        tag(f"best.{k}", v)
    tag("best.trial", best.number)
    tag("best.mlflow_run_id", best.user_attrs.get("mlflow_run_id"))
    for key, value in _verdict_tags(cfg, parent_run_id).items():
        tag(key, value)
    _plots(study, c, parent_run_id, tmp)


def _log_front(c, cfg: SweepConfig, parent_run_id: str, table, tmp: Path) -> None:
    """pareto.csv (every trial, whether it holds the constraints and is on the front), pareto.png, and for each
    objective the trial that does best on it alone (best.<objective>.*): a front point, since of trials tied on
    one objective only those not beaten on the others are on the front."""
    table.to_csv(tmp / "pareto.csv", index=False)
    c.log_artifact(parent_run_id, str(tmp / "pareto.csv"))
    plt = pyplot()
    fig = pareto_figure(table, objectives_of(cfg))
    fig.savefig(tmp / "pareto.png", dpi=100)
    plt.close(fig)
    c.log_artifact(parent_run_id, str(tmp / "pareto.png"))
    tags = {
        "bertnli.pareto_front": ", ".join(str(n) for n in table[table["pareto"]].sort_values("pareto_rank")["number"])
    }
    ok = table[table["pareto"]]
    for o in objectives_of(cfg):
        if ok[o.name].notna().any():
            row = ok.loc[ok[o.name].idxmax() if o.direction == "max" else ok[o.name].idxmin()]
            tags |= {f"best.{o.name}.trial": int(row["number"]), f"best.{o.name}.value": row[o.name]}
    for key, value in tags.items():
        with_retries(lambda key=key, value=value: c.set_tag(parent_run_id, key, str(value)))


def _log_rungs(c, table, parent_run_id: str, tmp: Path) -> None:
    """The rung table: `rungs.csv`, and as the parent run's description (the run page shows it)."""
    table.to_csv(tmp / "rungs.csv", index=False)
    c.log_artifact(parent_run_id, str(tmp / "rungs.csv"))
    text = "Multi-fidelity sweep (successive halving over the training-set fraction).\n\n" + to_markdown(table)
    with_retries(lambda: c.set_tag(parent_run_id, "mlflow.note.content", text))


def _log_best_checkpoint(c, cfg: SweepConfig, best, tmp: Path, final: bool) -> None:
    """The winner's weights onto its run, from this host's --out or, trained on another host and the sweep
    done (`final`), the checkpoint store: a process stopping early (SIGTERM before a requeue) has no time for it."""
    run_id = best.user_attrs.get("mlflow_run_id")
    if not run_id or c.get_run(run_id).data.tags.get("bertnli.checkpoint_logged") == "true":
        return
    folder = trial_dir(cfg, best.number) / "best"
    if not folder.is_dir():
        if not final:
            return
        folder = tmp / "best"
        if not fetch_best(store_uri(cfg, best.number, run_id), folder, cfg.tracking.tracking_uri):
            return
    log_selected(c, run_id, folder)  # checkpoint/ artifacts + the pyfunc model (runs:/<id>/model), for --register
    with_retries(lambda: c.set_tag(run_id, "bertnli.checkpoint_logged", "true"))


def sampler_tag(cfg: SweepConfig) -> str:
    name = {"random": "RandomSampler", "nsga2": "NSGAIISampler"}.get(cfg.sampler, "TPESampler")
    limits = ", constraints set on each trial" if cfg.constraints else ""
    return f"{name}(seed={cfg.seed}, per trial number{limits})"


def pruner_tag(cfg: SweepConfig) -> str:
    if cfg.fidelity == "data":
        rungs = rungs_of(cfg)
        return (
            f"NopPruner(); successive halving over the training-set fraction, eta {cfg.eta}: rungs "
            f"{', '.join(f'{f:.3g}' for f in rungs.fractions)} with {' -> '.join(map(str, rungs.sizes))} configurations"
        )
    if cfg.sampler == "random":
        return "NopPruner()"
    if is_multi(cfg):
        return "NopPruner(); several objectives: every trial trains to its end"
    return (
        f"MedianPruner(n_startup_trials={cfg.pruner_startup_trials}"
        + (f", n_min_trials={min_trials(cfg)}" if min_trials(cfg) > 1 else "")
        + ") at the fraction of each schedule; "
        f"warmup {cfg.pruner_warmup_epochs} epochs"
    )


def _verdict_tags(cfg: SweepConfig, parent_run_id: str) -> dict[str, str]:
    """Best cell vs runner-up, paired (analysis.compare); a sweep never fails for want of a verdict."""
    try:
        runs = load_runs(None, cfg.tracking.tracking_uri, parent_run_id=parent_run_id)
        if (
            RUNG in runs and runs[RUNG].notna().any()
        ):  # multi-fidelity: compare what was trained on the same data (the top rung reached)
            runs = runs[runs[RUNG] == runs[RUNG].max()]
        keys = [p.name for p in cfg.space if p.kind == "categorical"] or ["model", "truncation"]
        return sweep_verdict(runs, keys, cfg.tracking.tracking_uri)
    except Exception as e:  # noqa: BLE001 - e.g. trials recorded before per-example predictions
        return {"bertnli.verdict": f"not computed: {str(e).splitlines()[0][:200]}"}
