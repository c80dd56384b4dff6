"""`sweep --dry-run`: what a sweep would do on this host, and whether it can reach what it needs.

Run on each host before launching an array of jobs. It reads and connects, never writes: no study,
table, run, experiment or queued trial is created, so an unreachable database or MLflow server is
found before any job waits on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bertnli import BadInput
from bertnli.sweep import halving
from bertnli.sweep.checkpoint_store import store_kind
from bertnli.sweep.election import PARENT_ATTR
from bertnli.sweep.objectives import describe, is_multi
from bertnli.sweep.seeding import CELLS_ATTR
from bertnli.sweep.slots import slots_of
from bertnli.sweep.space import SweepConfig, cells
from bertnli.sweep.storage import default_storage, without_password
from bertnli.sweep.warm_start import IMPORTED, check_storage_file, parse_source, trained_here
from bertnli.tracking.store import default_tracking_uri


def _summary(cfg: SweepConfig, url: str) -> dict[str, Any] | None:
    """Trial counts and the study attributes the plan needs; None where the study does not exist yet.

    Read-only: a journal through Optuna (reading writes nothing), a database through plain SQL, since
    opening an RDBStorage creates its tables and version rows."""
    if "://" not in url:
        if not Path(url).is_file():
            return None
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        try:
            study = optuna.load_study(study_name=cfg.study_name, storage=JournalStorage(JournalFileBackend(url)))
        except KeyError:
            return None
        counts: dict[str, int] = {}
        trials = study.get_trials(deepcopy=False)
        here = trained_here(trials)
        for t in here:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        return {"counts": counts, "attrs": study.user_attrs, "imported": len(trials) - len(here)}
    return _rdb_summary(cfg, url)


def _rdb_summary(cfg: SweepConfig, url: str) -> dict[str, Any] | None:
    """What `_summary` reads, from Optuna's tables by plain SQL; None where the database has no such study."""
    import sqlalchemy

    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None  # connecting would create the file
    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as db:
            if not sqlalchemy.inspect(engine).has_table("studies"):
                return None
            col, table = sqlalchemy.column, sqlalchemy.table  # quoted per database (`key` is reserved in MySQL)
            studies = table("studies", col("study_id"), col("study_name"))
            trials = table("trials", col("trial_id"), col("study_id"), col("state"))
            attrs_t = table("study_user_attributes", col("study_id"), col("key"), col("value_json"))
            trial_attrs = table("trial_user_attributes", col("trial_id"), col("key"))
            sid = db.execute(
                sqlalchemy.select(studies.c.study_id).where(studies.c.study_name == cfg.study_name)
            ).scalar()
            if sid is None:
                return None
            q = sqlalchemy.select(trials.c.state, sqlalchemy.func.count()).where(trials.c.study_id == sid)
            counts = {str(state).split(".")[-1]: n for state, n in db.execute(q.group_by(trials.c.state))}
            q = sqlalchemy.select(sqlalchemy.func.count()).select_from(
                trials.join(trial_attrs, trials.c.trial_id == trial_attrs.c.trial_id)
            )
            imported = db.execute(q.where(trials.c.study_id == sid, trial_attrs.c.key == IMPORTED)).scalar()
            counts["COMPLETE"] = counts.get("COMPLETE", 0) - imported  # an imported trial is added COMPLETE
            q = sqlalchemy.select(attrs_t.c.key, attrs_t.c.value_json).where(attrs_t.c.study_id == sid)
            attrs = {k: json.loads(v) for k, v in db.execute(q)}
        engine.dispose()
    except Exception as e:  # noqa: BLE001 - any failure to connect is the one line the user needs
        raise BadInput(
            f"--storage {without_password(url)} is unreachable ({str(e).splitlines()[0][:160]}); start the database "
            "or fix the URL"
        ) from None
    return {"counts": counts, "attrs": attrs, "imported": imported}


def _check_tracking(uri: str) -> str:
    """One line on the MLflow store: reachable (a server answers /health), or where a local store would be."""
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=10).raise_for_status()
        except requests.RequestException as e:
            raise BadInput(
                f"--tracking-uri {without_password(uri)} is unreachable ({type(e).__name__}); start the MLflow server "
                "or fix the URI"
            ) from None
        return f"{without_password(uri)} (answers)"
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return f"{uri} ({'exists' if db.is_file() else 'created on first run'})"
    return uri


def _check_store(cfg: SweepConfig, tracking_uri: str) -> str:
    """One line on the checkpoint store: where it is, and that it can be read (an unreadable one is BadInput)."""
    kind = store_kind(cfg)
    if kind == "none":
        return "none (a retry resumes on its own host only)"
    if kind == "run":
        return "each trial's MLflow run artifacts (resume/)" + _artifact_warning(cfg, tracking_uri)
    if "://" not in kind or kind.startswith("file://"):
        folder = Path(kind.removeprefix("file://"))
        return f"{kind} ({'exists' if folder.is_dir() else 'made on the first upload'})"
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        get_artifact_repository(kind).list_artifacts()
    except Exception as e:  # noqa: BLE001 - a missing client library, credentials, a bad bucket
        raise BadInput(
            f"--checkpoint-store {without_password(kind)} cannot be read ({str(e).splitlines()[0][:160]}); fix the URI "
            "or its credentials"
        ) from None
    return f"{without_password(kind)} (readable)"


def _artifact_warning(cfg: SweepConfig, tracking_uri: str) -> str:
    """Run artifacts reach every host only through a server that proxies them (mlflow-artifacts:/, or a
    bucket); an experiment whose artifact location is a plain path is one host's disk."""
    from bertnli.tracking.store import client

    try:
        exp = client(tracking_uri).get_experiment_by_name(cfg.tracking.experiment or cfg.study_name)
    except Exception:  # noqa: BLE001 - reachability was checked above; this is advice only
        return ""
    if exp is None or urlparse(exp.artifact_location).scheme not in ("", "file"):
        return ""
    return (
        f"; warning: experiment artifacts are at {exp.artifact_location}, a path other hosts may not see: start "
        "the server with --artifacts-destination, or give --checkpoint-store"
    )


def dry_run(cfg: SweepConfig) -> list[str]:
    """The lines `sweep --dry-run` prints; BadInput (one line) for a URI it cannot reach."""
    storage_url = cfg.storage or default_storage()
    tracking_uri = cfg.tracking.tracking_uri or default_tracking_uri()
    lines = [f"storage: {without_password(storage_url)}", f"tracking: {_check_tracking(tracking_uri)}"]
    lines.append(f"checkpoint store: {_check_store(cfg, tracking_uri)}")
    summary = _summary(cfg, storage_url)
    rungs = halving.rungs_of(cfg)
    target = rungs.total if rungs else cfg.trials
    if summary is None:
        lines.append(f"study {cfg.study_name}: new; {target} trials to run")
    else:
        n = summary["counts"]
        done, running = n.get("COMPLETE", 0) + n.get("PRUNED", 0), n.get("RUNNING", 0)
        parent = summary["attrs"].get(PARENT_ATTR, "none yet")
        imported = f", {summary['imported']} imported (not trained here, not counted)" if summary["imported"] else ""
        lines.append(
            f"study {cfg.study_name}: {done} of {target} trials complete or pruned, {running} running{imported}; "
            f"parent run {parent}"
        )
    lines.append(f"space: {'; '.join(p.describe() for p in cfg.space)}")
    if is_multi(cfg) or cfg.constraints:
        pruning = "; no pruning (several objectives)" if is_multi(cfg) else ""
        limits = f"; constraints {', '.join(cfg.constraints)}" if cfg.constraints else ""
        lines.append(f"objectives: {describe(cfg)}{limits}{pruning}")
    if cfg.sampler == "random":
        lines.append("cells queued first: none (a random design draws every trial)")
    elif summary is not None and summary["attrs"].get(CELLS_ATTR):
        lines.append("cells queued first: none (queued when the study began)")
    else:
        shown = [" ".join(f"{k}={v}" for k, v in c.items()) for c in cells(cfg)]
        lines.append(f"cells queued first: {', '.join(shown) or 'none (no model or truncation choice)'}")
    if cfg.enqueue:
        shown = ", ".join(" ".join(f"{k}={v}" for k, v in params.items()) for params in cfg.enqueue)
        lines.append(f"known configurations: {shown} (queued first, once per study)")
    for text in cfg.warm_start:
        if not text.startswith("mlflow:"):  # an MLflow source is found as the sweep starts
            for source in parse_source(text, tracking_uri, (cfg.storage,)):
                check_storage_file(source)
        lines.append(f"warm start: {text} ({cfg.warm_start_mode}), imported as the sweep starts")
    if rungs:
        promotion = "asynchronous (ASHA)" if rungs.asynchronous else "synchronous"
        lines.append(
            f"rungs: {', '.join(f'{f:.3g}' for f in rungs.fractions)} of the train split, {promotion} promotions"
        )
    lines.append(f"this host: {_slots_line(cfg)}; checkpoints under {cfg.out_dir}")
    return lines


def _slots_line(cfg: SweepConfig) -> str:
    """The workers and where their trial processes run (an impossible --gpus setting is one line, as in a sweep)."""
    slots = slots_of(cfg)
    workers = cfg.workers or slots.count
    groups = [g for g in slots.free if g]
    if not groups:
        procs = "one trial process" if slots.cpu_ranks == 1 else f"a trial of {slots.cpu_ranks} processes (gloo)"
        return f"{workers} worker(s), {procs} each, on {cfg.base.device}"
    shown = " ".join(",".join(map(str, g)) for g in groups)
    each = (
        "each trial process" if cfg.gpus_per_trial == 1 else f"each trial {cfg.gpus_per_trial} processes, one per GPU,"
    )
    return (
        f"{workers} worker(s) over {slots.count} slot(s): GPU(s) {shown}, {cfg.trials_per_gpu} trial(s) per GPU, "
        f"{each} seeing only its own (CUDA_VISIBLE_DEVICES)"
    )
