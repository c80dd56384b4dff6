"""Where runs are recorded: the tracking URI, the client, experiments, and writes that two processes race on."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from bertnli import BadInput
from bertnli.retry import policy

EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI's "model training" view


def unreachable(e: BaseException) -> bool:
    """The tracking server could not be reached (down, restarting, network): worth waiting out, unlike a bad request."""
    from mlflow.exceptions import MlflowException

    while e is not None:
        if isinstance(e, ConnectionError) or type(e).__name__ in (
            "ConnectionError",
            "MaxRetryError",
            "NewConnectionError",
        ):
            return True
        if isinstance(e, MlflowException) and ("API request to" in str(e) and "failed with exception" in str(e)):
            return True
        e = e.__cause__ or e.__context__
    return False


def patience(tracking_patience: float | None) -> float:
    return float(os.environ.get("BERTNLI_MLFLOW_PATIENCE", 300)) if tracking_patience is None else tracking_patience


def with_retries(write: Callable[[], Any], attempts: int = 4) -> Any:
    """MLflow's SQL store inserts a new tag key after checking it is absent, so two writers can
    collide (UNIQUE tags.key): the loser writes again, after a short random wait."""
    from mlflow.exceptions import MlflowException

    return policy(MlflowException, attempts=attempts, first=0.2, cap=0.2, jitter=0.5)(write)


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else a local SQLite store in ./mlruns (MLflow 3 refuses file stores)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path.cwd() / 'mlruns' / 'mlflow.db').resolve()}"


def local_artifact_root(uri: str) -> str | None:
    """Artifacts of a local SQLite store live beside it (mlruns/artifacts), not in the cwd."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri.removeprefix("sqlite:///")).parent / "artifacts")
    return None


def client(uri: str | None = None):
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    # A new store announces its schema migration on stderr; a user sees only errors and results.
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    if not uri.startswith("sqlite:///"):
        try:
            return MlflowClient(uri)
        except MlflowException as e:
            raise BadInput(
                f"tracking URI {uri!r} is not usable ({str(e).splitlines()[0][:120]}); "
                "give http://host:port, sqlite:///path or a folder"
            ) from None
    # Two processes creating the same SQLite store race in MLflow's schema migration:
    # the first to take the lock creates it, the others find it ready.
    import fcntl

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".init-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        c = MlflowClient(uri)
        c.search_experiments(max_results=1)
    return c


def get_or_create_experiment(c, name: str, uri: str) -> str:
    """The experiment, tagged as model training so MLflow's UI opens it on the training runs, not GenAI."""
    from mlflow.exceptions import MlflowException

    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        for k, v in EXPERIMENT_KIND.items():
            if exp.tags.get(k) != v:
                c.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=local_artifact_root(uri), tags=EXPERIMENT_KIND)
    except MlflowException:  # another worker created it first
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


UI_PORT = 5000  # `mlflow ui`'s default


def runs_table_url(uri: str, experiment_id: str) -> str:
    """The MLflow UI's page for an experiment's runs table. `workflowType=machine_learning`: MLflow 3 opens
    experiments on its GenAI overview by default (the experiment's kind tag is not honoured there)."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{UI_PORT}"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def how_to_see(uri: str | None, run_id: str) -> str:
    """One line: how to open the runs table holding `run_id` (a local store needs `mlflow ui` started first)."""
    uri = uri or default_tracking_uri()
    url = runs_table_url(uri, client(uri).get_run(run_id).info.experiment_id)
    if uri.startswith(("http://", "https://")):
        return f"open {url}"
    art = local_artifact_root(uri)
    start = f"mlflow ui --backend-store-uri {uri}" + (f" --default-artifact-root {art}" if art else "")
    return f"{start} --port {UI_PORT}, then open {url}"
