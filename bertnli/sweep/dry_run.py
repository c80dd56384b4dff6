"""`sweep --dry-run`: what a sweep would do on this host, and whether it can reach what it needs.

Run on each host before launching an array of jobs. It reads and connects, never writes: no study,
table, run, experiment or queued trial is created, so an unreachable database or MLflow server is
found before any job waits on it.
"""

from __future__ import annotations

from pathlib import Path

from bertnli import BadInput
from bertnli.sweep import halving
from bertnli.sweep.parent import PARENT_ATTR
from bertnli.sweep.reaping import states
from bertnli.sweep.space import SweepConfig, cells
from bertnli.sweep.storage import default_storage
from bertnli.tracking.store import default_tracking_uri


def _shown(url: str) -> str:
    """A URL without its password."""
    return url.split("@")[-1] if "://" in url and "@" in url else url


def _study(cfg: SweepConfig, url: str):
    """The study as stored now, or None where it does not exist yet (read-only: nothing is created)."""
    import optuna

    if "://" not in url:
        if not Path(url).is_file():
            return None
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(url))
    else:
        import sqlalchemy

        try:
            engine = sqlalchemy.create_engine(url)
            with engine.connect():
                has_tables = sqlalchemy.inspect(engine).has_table("studies")
        except Exception as e:  # noqa: BLE001 - any failure to connect is the one line the user needs
            raise BadInput(
                f"--storage {_shown(url)} is unreachable ({str(e).splitlines()[0][:160]}); start the database "
                "or fix the URL"
            ) from None
        if not has_tables:
            return None
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True, skip_compatibility_check=True)
    try:
        return optuna.load_study(study_name=cfg.study_name, storage=storage)
    except KeyError:
        return None


def _check_tracking(uri: str) -> str:
    """One line on the MLflow store: reachable (a server answers /health), or where a local store would be."""
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=10).raise_for_status()
        except requests.RequestException as e:
            raise BadInput(
                f"--tracking-uri {_shown(uri)} is unreachable ({type(e).__name__}); start the MLflow server "
                "or fix the URI"
            ) from None
        return f"{_shown(uri)} (answers)"
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return f"{uri} ({'exists' if db.is_file() else 'created on first run'})"
    return uri


STORE_DEFAULTS = {
    "run": "each trial's MLflow run artifacts (resume/)",
    "none": "none (a retry resumes on its host only)",
}


def _check_store(cfg: SweepConfig) -> str:
    if cfg.checkpoint_store in STORE_DEFAULTS:
        return STORE_DEFAULTS[cfg.checkpoint_store]
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        get_artifact_repository(cfg.checkpoint_store).list_artifacts()
    except Exception as e:  # noqa: BLE001 - a missing client library, credentials, a bad bucket
        raise BadInput(
            f"--checkpoint-store {cfg.checkpoint_store} cannot be read ({str(e).splitlines()[0][:160]}); fix the URI "
            "or its credentials"
        ) from None
    return f"{cfg.checkpoint_store} (readable)"


def dry_run(cfg: SweepConfig) -> list[str]:
    """The lines `sweep --dry-run` prints; BadInput (one line) for a URI it cannot reach."""
    storage_url = cfg.storage or default_storage()
    tracking_uri = cfg.tracking.tracking_uri or default_tracking_uri()
    lines = [f"storage: {_shown(storage_url)}", f"tracking: {_check_tracking(tracking_uri)}"]
    lines.append(f"checkpoint store: {_check_store(cfg)}")
    study = _study(cfg, storage_url)
    rungs = halving.rungs_of(cfg)
    target = rungs.total if rungs else cfg.trials
    S = states()
    trials = study.get_trials(deepcopy=False) if study else []
    done = sum(t.state in (S.COMPLETE, S.PRUNED) for t in trials)
    running = sum(t.state == S.RUNNING for t in trials)
    if study is None:
        lines.append(f"study {cfg.study_name}: new; {target} trials to run")
    else:
        parent = study.user_attrs.get(PARENT_ATTR, "none yet")
        lines.append(
            f"study {cfg.study_name}: {done} of {target} trials complete or pruned, {running} running; "
            f"parent run {parent}"
        )
    lines.append(f"space: {'; '.join(p.describe() for p in cfg.space)}")
    if cfg.sampler == "random":
        lines.append("cells queued first: none (a random design draws every trial)")
    elif study is not None and study.user_attrs.get("cells_enqueued"):
        lines.append("cells queued first: none (queued when the study began)")
    else:
        shown = [" ".join(f"{k}={v}" for k, v in c.items()) for c in cells(cfg)]
        lines.append(f"cells queued first: {', '.join(shown) or 'none (no model or truncation choice)'}")
    if rungs:
        lines.append(f"rungs: {', '.join(f'{f:.3g}' for f in rungs.fractions)} of the train split")
    lines.append(f"this host: {cfg.workers} worker(s), one trial process each; checkpoints under {cfg.out_dir}")
    return lines
