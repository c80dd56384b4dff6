"""The selected checkpoint as an MLflow model: logged beside its run, registered, found again by URI.

`runs:/<run_id>/model` and `models:/NAME@champion` both resolve to a pyfunc (tracking/served.py)
whose `checkpoint` artifact is the selected checkpoint folder; predict/evaluate load that
folder directly, with bertnli's own loader.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

from bertnli import PACKAGE_DIR, BadInput
from bertnli.data.snli import LABEL_NAMES
from bertnli.tracking.store import client, default_tracking_uri, with_retries

MODEL_NAME = "model"  # runs:/<run_id>/model


EXAMPLE = {"premise": ["A man is playing a guitar on stage."], "hypothesis": ["A man is performing music."]}


SERVED_NEEDS = (
    ("torch",),
    ("mlflow", "mlflow-skinny"),  # MLflow may be installed as mlflow-skinny
    ("pandas",),
    ("numpy",),
    ("tokenizers",),
    ("safetensors",),
    ("tqdm",),
    ("requests",),
    ("click",),
)


def pin(distributions: tuple[str, ...]) -> str:
    """`name==version` of the first of these distributions that is installed (a local tag such as +cpu dropped)."""
    from importlib.metadata import PackageNotFoundError, version

    for name in distributions:
        try:
            return f"{name}=={version(name).split('+')[0]}"
        except PackageNotFoundError:
            continue
    raise BadInput(f"{distributions[0]} is not installed, and a served model needs it: pip install {distributions[0]}")


def _requirements() -> list[str]:
    """Pinned where it matters; given explicitly so MLflow does not load the model in a subprocess to infer them."""
    return [pin(d) for d in SERVED_NEEDS]


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("string", "premise"), ColSpec("string", "hypothesis")])
    outputs = Schema([ColSpec("string", "label"), *(ColSpec("double", n) for n in LABEL_NAMES)])
    return ModelSignature(inputs, outputs)


@contextlib.contextmanager
def _quiet_logging():
    """MLflow's notes while logging ("inferring signature", "add type hints", a download progress bar) are noise
    here.
    """
    loggers = [logging.getLogger(n) for n in ("mlflow.pyfunc", "mlflow.models.model")]
    levels = [q.level for q in loggers]
    old_bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        for q in loggers:
            q.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for q, level in zip(loggers, levels):
            q.setLevel(level)
        if old_bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = old_bar


def log_served_model(c, run_id: str, folder: Path, step: int = 0) -> str:
    """Log `folder` as the run's pyfunc model (signature, input example, bertnli code); returns the model id."""
    import mlflow
    import pandas as pd
    from mlflow.entities import LoggedModelOutput

    exp_id = c.get_run(run_id).info.experiment_id
    lm = mlflow.initialize_logged_model(name=MODEL_NAME, source_run_id=run_id, experiment_id=exp_id)
    with _quiet_logging():
        mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(PACKAGE_DIR / "tracking" / "served.py"),
            artifacts={"checkpoint": str(folder)},
            code_paths=[str(PACKAGE_DIR)],
            signature=signature(),
            input_example=pd.DataFrame(EXAMPLE),
            pip_requirements=_requirements(),
            model_id=lm.model_id,
        )
    c.log_outputs(run_id, [LoggedModelOutput(lm.model_id, step)])
    with_retries(
        lambda: c.set_tag(run_id, "bertnli.model_id", lm.model_id)
    )  # sweep processes finishing together collide here
    return lm.model_id


def _version_of(c, name: str, model_id: str) -> str | None:
    """The version of `name` that holds this logged model, if one does (a server fills only `source`)."""
    for mv in c.search_model_versions(f"name = '{name}'"):
        if model_id in (getattr(mv, "model_id", None), (mv.source or "").removeprefix("models:/")):
            return str(mv.version)
    return None


def register(c, run_ids: list[str], name: str, ranked: bool = False) -> list[str]:
    """Each run's model as a version of `name`, `champion` on the first and, where `ranked` (a Pareto front),
    `pareto-1` ... `pareto-k` in order; returns the versions. A model already registered keeps its version
    (a resumed study registers nothing twice), and a `pareto-j` left from a longer front is removed. Refused
    before anything is registered when a run has no logged model."""
    import mlflow

    model_ids = []
    for run_id in run_ids:
        model_id = c.get_run(run_id).data.tags.get("bertnli.model_id")
        if not model_id:
            raise BadInput(
                f"run {run_id} has no logged model to register (its checkpoint was not kept: a trial trained on "
                "another host needs a --checkpoint-store)"
            )
        model_ids.append(model_id)
    versions = []
    for model_id in model_ids:
        version = _version_of(c, name, model_id)
        if version is None:  # MLflow's own registration (it also links the version to the logged model), in c's store
            mlflow.set_tracking_uri(c.tracking_uri)
            with _quiet_logging(), contextlib.redirect_stderr(io.StringIO()):  # "Created version '2' of model ..."
                version = str(mlflow.register_model(f"models:/{model_id}", name).version)
        versions.append(version)
    c.set_registered_model_alias(name, "champion", versions[0])
    if ranked:
        for k, version in enumerate(versions, start=1):
            c.set_registered_model_alias(name, f"pareto-{k}", version)
        for alias in c.get_registered_model(name).aliases:
            if alias.startswith("pareto-") and alias[7:].isdigit() and int(alias[7:]) > len(versions):
                c.delete_registered_model_alias(name, alias)
    return versions


def download_model_checkpoint(uri: str, tracking_uri: str) -> Path:
    """`models:/NAME@alias` (or `models:/NAME/version`, `runs:/<id>/model`) -> the checkpoint folder inside it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)
    try:
        with _quiet_logging():
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except MlflowException as e:
        raise BadInput(
            f"{uri} is not a model at {tracking_uri} ({str(e).splitlines()[0][:160]}); "
            "check the name and alias (bertnli-exp sweep --register NAME sets @champion)"
        ) from None
    found = sorted(p.parent for p in local.rglob("model.safetensors"))
    if not found:
        raise BadInput(f"{uri} holds no bertnli checkpoint (no model.safetensors); it was not logged by bertnli")
    return found[0]


def log_selected(c, run_id: str, folder: Path, step: int = 0) -> None:
    """The selected checkpoint as artifacts (`checkpoint/`) and as the run's pyfunc model (`runs:/<id>/model`)."""
    c.log_artifacts(run_id, str(folder), "checkpoint")
    log_served_model(c, run_id, Path(folder), step)


def resolve_run_checkpoint(run_id: str, tracking_uri: str | None = None) -> Path:
    """Download (or locate) a run's `checkpoint/` artifact folder for predict/evaluate; also `models:/NAME@alias`."""
    c = client(tracking_uri)
    if run_id.startswith(("models:/", "runs:/")):
        return download_model_checkpoint(run_id, tracking_uri or default_tracking_uri())
    try:
        c.get_run(run_id)
    except Exception:  # noqa: BLE001
        raise BadInput(
            f"no MLflow run {run_id} at {tracking_uri or default_tracking_uri()}; check the id or --tracking-uri"
        ) from None
    try:
        return Path(c.download_artifacts(run_id, "checkpoint"))
    except Exception:  # noqa: BLE001
        raise BadInput(
            f"run {run_id} has no checkpoint artifact (pruned sweep trials keep none); pick another run"
        ) from None
