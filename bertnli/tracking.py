"""Everything MLflow: where runs go, their lifecycle and true status, params, metrics, artifacts, plots.

One MLflow run per training run. Params are the flat config, set once (a resumed run
reuses its run and does not set them again); metrics per epoch with `step=epoch`.
Status tells the truth: FINISHED, FAILED (an exception, a NaN loss) or KILLED (Ctrl-C,
or a pruned sweep trial, which the caller classifies).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from bertnli import BadInput
from bertnli.config import TrackingConfig, TrainConfig
from bertnli.data import LABEL_NAMES
from bertnli.engine import EpochMetrics, FitResult, dist_info, fit

PACKAGE_DIR = Path(__file__).resolve().parent


# ---------------------------------------------------------------- store and experiments


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
            raise BadInput(f"tracking URI {uri!r} is not usable ({str(e).splitlines()[0][:120]}); "
                           "give http://host:port, sqlite:///path or a folder") from None
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
    from mlflow.exceptions import MlflowException

    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=local_artifact_root(uri))
    except MlflowException:  # another worker created it first
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def code_version() -> dict[str, str]:
    """The git commit (when run from a checkout) and a digest of the package's source."""
    h = hashlib.sha256()
    for p in sorted(PACKAGE_DIR.glob("*.py")):
        h.update(p.read_bytes())
    out = {"bertnli.code_sha256": h.hexdigest()[:16]}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            out["mlflow.source.git.commit"] = commit.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


# ---------------------------------------------------------------- plots


def learning_curves_figure(history: list[EpochMetrics]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m.epoch for m in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [m.train_loss for m in history], "o-", label="train")
    ax1.plot(epochs, [m.dev_loss for m in history], "s-", label="dev")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax2.plot(epochs, [m.train_acc for m in history], "o-", label="train")
    ax2.plot(epochs, [m.dev_acc for m in history], "s-", label="dev")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
        ax.set_xticks(epochs)
    fig.tight_layout()
    return fig


def confusion_figure(matrix, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(3), LABEL_NAMES, rotation=30)
    ax.set_yticks(range(3), LABEL_NAMES)
    ax.set(xlabel="predicted", ylabel="gold", title=title)
    for i in range(3):
        for j in range(3):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- the run


class MLflowRun:
    """Engine callback that records one run; also owns the run's start and true end status."""

    def __init__(self, cfg: TrainConfig, tracking: TrackingConfig, run_id: str | None = None, parent_run_id: str | None = None,
                 keep_checkpoint: bool = True):
        self.cfg, self.tracking, self.keep_checkpoint = cfg, tracking, keep_checkpoint
        self.uri = tracking.tracking_uri or default_tracking_uri()
        self.client = client(self.uri)
        self.resumed = run_id is not None
        if run_id is None:
            exp_id = get_or_create_experiment(self.client, tracking.experiment, self.uri)
            tags = {**code_version(), **tracking.tags}
            if parent_run_id:
                tags["mlflow.parentRunId"] = parent_run_id
            name = tracking.run_name or f"{cfg.model}-{cfg.truncation}-lr{cfg.lr:g}-s{cfg.seed}"
            run = self.client.create_run(exp_id, run_name=name, tags=tags)
            self.run_id = run.info.run_id
            self.client.log_batch(self.run_id, params=_params(cfg.to_flat_dict()))
        else:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")

    # engine callbacks
    def on_fit_start(self, info: dict[str, Any]) -> None:
        self._log_missing_epochs(info.get("history", []))
        tags = {f"bertnli.{k}": str(v) for k, v in info.items() if k not in ("digests", "history")}
        tags |= {f"data.{k}.sha256": v for k, v in info.get("digests", {}).items()}
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)
        self._log_json({"data_sha256": info.get("digests", {}), **code_version()}, "digests.json")

    def _log_missing_epochs(self, history: list[dict[str, Any]]) -> None:
        """A resumed run: the checkpoint is written before on_epoch_end logs, so a kill between the
        two leaves an epoch that the checkpoint holds and MLflow lacks; log it now (each epoch once)."""
        if not history:
            return
        logged = {m.step for m in self.client.get_metric_history(self.run_id, "dev_acc")}
        for h in history:
            if h["epoch"] not in logged:
                self.on_epoch_end(EpochMetrics(**h))

    def on_epoch_end(self, m: EpochMetrics) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        keys = ("train_loss", "train_acc", "dev_loss", "dev_acc", "examples_per_sec", "lr")
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(getattr(m, k)), now, m.epoch) for k in keys])

    def on_fit_end(self, result: FitResult) -> None:
        metrics = {"best_dev_acc": result.best_dev_acc, "best_epoch": result.best_epoch, "wall_seconds": result.wall_seconds}
        evaluated = result.test or result.dev
        name = "test" if result.test else "dev"
        if result.test:
            metrics["test_acc"] = result.test.acc
            metrics["test_loss"] = result.test.loss
        for cls, d in evaluated.per_class().items():
            metrics[f"{name}_f1_{cls}"] = d["f1"]
        for k, v in metrics.items():
            self.client.log_metric(self.run_id, k, float(v))
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            fig = learning_curves_figure(result.history)
            fig.savefig(tmp / "learning_curves.png", dpi=110)
            matrix = evaluated.confusion()
            fig2 = confusion_figure(matrix, f"{name} confusion (selected epoch {result.best_epoch})")
            fig2.savefig(tmp / f"confusion_{name}.png", dpi=110)
            import matplotlib.pyplot as plt

            plt.close(fig)
            plt.close(fig2)
            header = "gold\\predicted," + ",".join(LABEL_NAMES)
            rows = [f"{LABEL_NAMES[i]}," + ",".join(str(int(x)) for x in matrix[i]) for i in range(3)]
            (tmp / f"confusion_{name}.csv").write_text("\n".join([header, *rows]) + "\n")
            (tmp / "per_class.json").write_text(json.dumps(evaluated.per_class(), indent=2))
            (tmp / "result.json").write_text((result.out_dir / "result.json").read_text())
            for f in tmp.iterdir():
                self.client.log_artifact(self.run_id, str(f))
        if self.keep_checkpoint:
            self.log_checkpoint(result.out_dir / "best")

    def log_checkpoint(self, folder: Path) -> None:
        self.client.log_artifacts(self.run_id, str(folder), "checkpoint")

    def _log_json(self, obj: dict, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / name
            p.write_text(json.dumps(obj, indent=2))
            self.client.log_artifact(self.run_id, str(p))

    def end(self, status: str, tags: dict[str, str] | None = None) -> None:
        for k, v in (tags or {}).items():
            self.client.set_tag(self.run_id, k, v)
        self.client.set_terminated(self.run_id, status=status)


def _params(flat: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(k, str(v)) for k, v in flat.items()]


def default_classify(exc: BaseException) -> tuple[str, dict[str, str]]:
    """An exception -> (MLflow status, tags). Ctrl-C is KILLED; anything else FAILED."""
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED", {"bertnli.end": "interrupted"}
    msg = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
    return "FAILED", {"bertnli.error": msg}


@contextlib.contextmanager
def recorded(run: MLflowRun, classify: Callable[[BaseException], tuple[str, dict[str, str]]] = default_classify) -> Iterator[MLflowRun]:
    """End the run with the status its outcome deserves, whatever happens inside."""
    try:
        yield run
    except BaseException as e:
        status, tags = classify(e)
        try:
            run.end(status, tags)
        finally:
            raise
    run.end("FINISHED")


def train_run(cfg: TrainConfig, out_dir: str | Path, tracking: TrackingConfig, resume: bool = False,
              parent_run_id: str | None = None, callbacks: list | None = None, classify=default_classify,
              keep_checkpoint: bool = True, progress: bool = True) -> tuple[FitResult, str]:
    """One recorded training run: the engine's fit inside an MLflow run with a true status.

    The run id is written to `out_dir/mlflow_run.json`, so `--resume` continues the same run.
    """
    out_dir = Path(out_dir)
    marker = out_dir / "mlflow_run.json"
    run_id = None
    if resume and marker.is_file():
        saved = json.loads(marker.read_text())
        run_id = saved["run_id"]
        tracking = TrackingConfig(saved["tracking_uri"], tracking.experiment, tracking.run_name, tracking.tags)
    if dist_info()[0] != 0 or int(os.environ.get("RANK", "0")) != 0:
        return fit(cfg, out_dir, callbacks=[], resume=resume, progress=False), ""
    run = MLflowRun(cfg, tracking, run_id, parent_run_id, keep_checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"run_id": run.run_id, "tracking_uri": run.uri}))
    with recorded(run, classify):
        result = fit(cfg, out_dir, callbacks=[run, *(callbacks or [])], resume=resume, progress=progress)
    return result, run.run_id


def resolve_run_checkpoint(run_id: str, tracking_uri: str | None = None) -> Path:
    """Download (or locate) a run's `checkpoint/` artifact folder for predict/evaluate."""
    c = client(tracking_uri)
    try:
        c.get_run(run_id)
    except Exception:  # noqa: BLE001
        raise BadInput(f"no MLflow run {run_id} at {tracking_uri or default_tracking_uri()}; check the id or --tracking-uri") from None
    try:
        return Path(c.download_artifacts(run_id, "checkpoint"))
    except Exception:  # noqa: BLE001
        raise BadInput(f"run {run_id} has no checkpoint artifact (pruned sweep trials keep none); pick another run") from None
