"""Everything MLflow: where runs go, their lifecycle and true status, params, metrics, artifacts, plots.

One MLflow run per training run. Params are the flat config, set once (a resumed run
reuses its run and does not set them again); metrics per epoch with `step=epoch`.
Status tells the truth: FINISHED, FAILED (an exception, a NaN loss) or KILLED (Ctrl-C,
or a pruned sweep trial, which the caller classifies).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from bertnli import BadInput
from bertnli.config import TrackingConfig, TrainConfig, config_from_dict, resume_changes
from bertnli.data import LABEL_NAMES
from bertnli.engine import EpochMetrics, EvalResult, FitResult, dist_info, fit
from bertnli.lineage import EXPERIMENT_KIND, log_split_inputs, provenance, source_tags

PACKAGE_DIR = Path(__file__).resolve().parent


# ---------------------------------------------------------------- store and experiments


def with_retries(write: Callable[[], Any], attempts: int = 4) -> Any:
    """MLflow's SQL store inserts a new tag key after checking it is absent, so two writers can
    collide (UNIQUE tags.key): the loser writes again."""
    import random

    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            return write()
        except MlflowException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 + random.random() * 0.5)


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

    """The experiment, tagged as model training so MLflow's UI opens it on the training runs, not GenAI."""
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


def code_version() -> dict[str, str]:
    """Tags for every run: git commit + dirty flag, digests of bertnli's source and of the installed packages."""
    return provenance()


def system_metrics_on(tracking: TrackingConfig) -> bool:
    """On unless --no-system-metrics (or BERTNLI_SYSTEM_METRICS=0, which sweep trial processes inherit)."""
    if tracking.system_metrics is not None:
        return tracking.system_metrics
    return os.environ.get("BERTNLI_SYSTEM_METRICS", "1").lower() not in ("0", "false", "no", "off")


def start_system_metrics(run_id: str, uri: str, interval: float, resume: bool):
    """MLflow's own monitor (CPU, memory, disk, network; GPU where NVML answers) as system/* metrics."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, resume_logging=resume, tracking_uri=uri)
    except Exception as e:  # noqa: BLE001 - e.g. psutil missing: the run goes on without them, and says so
        print(f"note: system metrics are off ({str(e).splitlines()[0][:120]})")
        return None
    monitor.start()
    return monitor


def stop_system_metrics(monitor) -> None:
    """Stop, then take one last sample: a run shorter than the interval still gets its figures."""
    if monitor is None:
        return
    try:
        monitor.finish()
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
    except Exception:  # noqa: BLE001 - metrics never decide a run's status
        pass


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
        self.provenance = code_version()  # once per run: it hashes the source and every installed package's metadata
        self.resumed = run_id is not None
        self.info: dict[str, Any] = {}
        if run_id is None:
            exp_id = get_or_create_experiment(self.client, tracking.experiment, self.uri)
            tags = {**source_tags(), **self.provenance, **tracking.tags}
            if parent_run_id:
                tags["mlflow.parentRunId"] = parent_run_id
            name = tracking.run_name or f"{cfg.model}-{cfg.truncation}-lr{cfg.lr:g}-s{cfg.seed}"
            run = self.client.create_run(exp_id, run_name=name, tags=tags)
            self.run_id = run.info.run_id
            self.client.log_batch(self.run_id, params=_params(cfg.to_flat_dict()))
        else:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        self.monitor = (start_system_metrics(self.run_id, self.uri, tracking.system_metrics_interval, self.resumed)
                        if system_metrics_on(tracking) else None)

    # engine callbacks
    def on_fit_start(self, info: dict[str, Any]) -> None:
        self._log_missing_epochs(info.get("history", []))
        tags = {f"bertnli.{k}": str(v) for k, v in info.items() if k not in ("digests", "history")}
        tags |= {f"data.{k}.sha256": v for k, v in info.get("digests", {}).items()}
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)
        self._log_json({"data_sha256": info.get("digests", {}), **self.provenance}, "digests.json")
        examples = {s: info.get(f"{s}_examples", 0) for s in ("train", "dev", "test")}
        log_split_inputs(self.client, self.run_id, self.cfg.data, info.get("digests", {}), examples)
        self.info = info

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
            for split, evaluated_split in (("dev", result.dev), ("test", result.test)):
                if evaluated_split is not None:
                    write_predictions(evaluated_split, tmp / f"predictions_{split}.parquet")
            for f in tmp.iterdir():
                self.client.log_artifact(self.run_id, str(f))
        self.write_model_card(result)
        if self.keep_checkpoint:
            self.log_checkpoint(result.out_dir / "best", result.best_epoch)

    def write_model_card(self, result: FitResult) -> None:
        """README.md in the selected checkpoint, from what this run records (so it travels with the weights)."""
        from bertnli.model_card import render_card

        folder = result.out_dir / "best"
        model_config = json.loads((folder / "model_config.json").read_text())
        card = render_card(self.cfg.to_flat_dict(), model_config, result, self.info or result.info, self.provenance, self.run_id)
        (folder / "README.md").write_text(card)

    def log_checkpoint(self, folder: Path, step: int = 0) -> None:
        log_selected(self.client, self.run_id, folder, step)

    def _log_json(self, obj: dict, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / name
            p.write_text(json.dumps(obj, indent=2))
            self.client.log_artifact(self.run_id, str(p))

    def end(self, status: str, tags: dict[str, str] | None = None) -> None:
        stop_system_metrics(self.monitor)
        self.monitor = None
        for k, v in (tags or {}).items():
            self.client.set_tag(self.run_id, k, v)
        self.client.set_terminated(self.run_id, status=status)


PREDICTION_COLUMNS = ["id", "gold", "pred", *(f"p_{name}" for name in LABEL_NAMES)]


def predictions_frame(r: EvalResult):
    """One row per example, keyed by its SNLI pairID: what paired comparisons between runs join on."""
    import pandas as pd

    ids = r.ids if r.ids is not None else [str(i) for i in range(len(r.labels))]
    frame = pd.DataFrame({"id": pd.Series(ids, dtype="string"), "gold": r.labels.astype("int8"), "pred": r.preds.astype("int8")})
    for i, name in enumerate(LABEL_NAMES):
        frame[f"p_{name}"] = r.probs[:, i].astype("float32")
    return frame


def write_predictions(r: EvalResult, path: Path) -> None:
    predictions_frame(r).to_parquet(path, index=False)


def load_predictions(run_id: str, split: str, tracking_uri: str | None = None):
    """A run's `predictions_<split>.parquet` as a DataFrame, or None if the run has none for that split."""
    import pandas as pd

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per file would bury the answer
    c = client(tracking_uri)
    name = f"predictions_{split}.parquet"
    if name not in {f.path for f in c.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return pd.read_parquet(c.download_artifacts(run_id, name, tmp))


def log_selected(c, run_id: str, folder: Path, step: int = 0) -> None:
    """The selected checkpoint as artifacts (`checkpoint/`) and as the run's pyfunc model (`runs:/<id>/model`)."""
    from bertnli.mlmodel import log_served_model

    c.log_artifacts(run_id, str(folder), "checkpoint")
    log_served_model(c, run_id, Path(folder), step)


def register_champion(run_id: str, name: str, tracking_uri: str | None = None) -> str:
    """A study's winner into the Model Registry as `name`, alias `champion`; returns the version (sweep --register)."""
    from bertnli.mlmodel import register

    return register(client(tracking_uri), run_id, name, "champion")


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


def seed_group_settings(out_dir: Path, marker: dict) -> TrainConfig | None:
    """The configuration a seed group was started with: its marker's, or (a marker written before
    session 6 has none) the config.json of any seed it started. None for a new group."""
    saved = marker.get("config")
    if saved is None:
        started = sorted(out_dir.glob("seed-*/config.json"))
        saved = json.loads(started[0].read_text()) if started else None
    if saved is None:
        return None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return config_from_dict({k: v for k, v in saved.items() if k in known and k != "seed"})


def train_seed_group(cfg: TrainConfig, seeds: list[int], out_dir: str | Path, tracking: TrackingConfig,
                     progress: bool = True, log: Callable[[str], None] = print,
                     fix: str = "drop them to resume the group, or give another --out for a new one") -> tuple[str, list[tuple[int, float | None, str]]]:
    """One run per seed, all tagged `bertnli.seed_group=<group>`: a cell's score is a distribution over seeds.

    Rerunning the same command with the same --out resumes: finished seeds are adopted (never
    trained again), an interrupted one continues from its last checkpoint in its own MLflow run.
    Returns the group and (seed, best dev accuracy or None when adopted, run id) per seed.
    """
    import uuid

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / "seed_group.json"
    before = json.loads(marker.read_text()) if marker.is_file() else {}
    group = before.get("group") or f"{out_dir.name}-{uuid.uuid4().hex[:8]}"
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "seed"}
    started_with = seed_group_settings(out_dir, before)
    if started_with is not None:  # a group is one configuration over seeds: a rerun resumes it, never changes it
        resume_changes(started_with, settings, what=f"{out_dir} holds seed group {group} with other settings", fix=fix)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps({"group": group, "seeds": seeds, "config": settings}))
    tmp.replace(marker)
    tags = {**tracking.tags, "bertnli.seed_group": group, "bertnli.seeds": ",".join(map(str, seeds))}
    done = []
    for seed in seeds:
        folder = out_dir / f"seed-{seed}"
        saved = json.loads((folder / "mlflow_run.json").read_text()) if (folder / "mlflow_run.json").is_file() else None
        if saved and client(saved["tracking_uri"]).get_run(saved["run_id"]).info.status == "FINISHED":
            log(f"seed {seed}: already finished in run {saved['run_id']}; adopted")
            done.append((seed, None, saved["run_id"]))
            continue
        name = f"{tracking.run_name}-s{seed}" if tracking.run_name else None
        result, run_id = train_run(cfg.replace(seed=seed), folder, TrackingConfig(tracking.tracking_uri, tracking.experiment, name, tags),
                                   resume=saved is not None, progress=progress)
        done.append((seed, result.best_dev_acc, run_id))
    return group, done


def resolve_run_checkpoint(run_id: str, tracking_uri: str | None = None) -> Path:
    """Download (or locate) a run's `checkpoint/` artifact folder for predict/evaluate; also `models:/NAME@alias`."""
    c = client(tracking_uri)
    if run_id.startswith(("models:/", "runs:/")):
        from bertnli.mlmodel import download_model_checkpoint

        return download_model_checkpoint(run_id, tracking_uri or default_tracking_uri())
    try:
        c.get_run(run_id)
    except Exception:  # noqa: BLE001
        raise BadInput(f"no MLflow run {run_id} at {tracking_uri or default_tracking_uri()}; check the id or --tracking-uri") from None
    try:
        return Path(c.download_artifacts(run_id, "checkpoint"))
    except Exception:  # noqa: BLE001
        raise BadInput(f"run {run_id} has no checkpoint artifact (pruned sweep trials keep none); pick another run") from None
