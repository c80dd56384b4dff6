"""One MLflow run per training run: its lifecycle, params, metrics, artifacts and true end status.

Params are the flat config, set once (a resumed run reuses its run and does not set them again);
metrics per epoch with `step=epoch`. Status tells the truth: FINISHED, FAILED (an exception, a
NaN loss) or KILLED (Ctrl-C, or a pruned sweep trial, which the caller classifies).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from bertnli import BertnliError
from bertnli.config import TrackingConfig, TrainConfig
from bertnli.data.snli import LABEL_NAMES
from bertnli.files import atomic_write
from bertnli.retry import policy
from bertnli.tracking.figures import confusion_figure, learning_curves_figure, pyplot
from bertnli.tracking.lineage import log_split_inputs, provenance, source_tags
from bertnli.tracking.model_card import render_card
from bertnli.tracking.models import log_selected
from bertnli.tracking.predictions import write_predictions
from bertnli.tracking.run_folder import MARKER, check_resumable, claimed, prepare_fresh, recorded_run
from bertnli.tracking.store import client, default_tracking_uri, get_or_create_experiment, patience, unreachable
from bertnli.tracking.system_metrics import start_system_metrics, stop_system_metrics, system_metrics_on
from bertnli.train.fit import fit
from bertnli.train.prepare import check_inputs
from bertnli.train.runtime import dist_info
from bertnli.train.state import EpochMetrics, FitResult


class MLflowUnreachable(BertnliError):
    """MLflow did not answer for the whole patience: the run is as MLflow last heard of it (RUNNING), and its
    checkpoint holds what MLflow lacks, which `--resume` records once the server answers."""

    def __init__(self, run: "MLflowRun", waited_s: float):
        epochs = ", ".join(str(e) for e, _ in run.pending) or "none"
        super().__init__(
            f"MLflow at {run.uri} did not answer for {waited_s:.0f} s; run {run.run_id} stays RUNNING "
            f"there without its results (epochs not recorded: {epochs}); once MLflow answers, "
            f"`bertnli-exp train --resume {run.info.get('out_dir', 'RUN_DIR')}` records them from the checkpoint"
        )


class MLflowRun:
    """Engine callback that records one run; also owns the run's start and true end status."""

    def __init__(
        self,
        cfg: TrainConfig,
        tracking: TrackingConfig,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        keep_checkpoint: bool = True,
    ):
        self.cfg, self.tracking, self.keep_checkpoint = cfg, tracking, keep_checkpoint
        self.uri = tracking.tracking_uri or default_tracking_uri()
        self.client = client(self.uri)
        self.provenance = provenance()  # once per run: it hashes the source and every installed package's metadata
        self.resumed = run_id is not None
        self.info: dict[str, Any] = {}
        self.pending: list = []  # (epoch, metrics) MLflow has not taken yet
        self.warned = False
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
            for stale in ("bertnli.error", "bertnli.end"):  # how the interrupted attempt ended: no longer true
                if stale in self.client.get_run(run_id).data.tags:
                    self.client.delete_tag(run_id, stale)
        self.monitor = (
            start_system_metrics(self.run_id, self.uri, tracking.system_metrics_interval, self.resumed)
            if system_metrics_on(tracking)
            else None
        )

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
        """The epoch's metrics, or, while MLflow cannot be reached, kept to be sent later: training goes on."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        keys = ("train_loss", "train_acc", "dev_loss", "dev_acc", "examples_per_sec", "lr")
        self.pending.append((m.epoch, [Metric(k, float(getattr(m, k)), now, m.epoch) for k in keys]))
        self.send_pending(wait_s=0)

    def send_pending(self, wait_s: float) -> None:
        """Send the kept epochs in order, waiting out an unreachable server for up to `wait_s` seconds."""
        while self.pending:
            epoch, metrics = self.pending[0]
            try:
                policy(unreachable, patience_s=wait_s)(self.client.log_batch, self.run_id, metrics=metrics)
            except Exception as e:
                if not unreachable(e):
                    raise
                if wait_s:
                    raise MLflowUnreachable(self, wait_s) from None
                if not self.warned:
                    print(
                        f"warning: MLflow at {self.uri} is unreachable; epoch {epoch}'s metrics are kept and sent "
                        "when it answers (training goes on)",
                        file=sys.stderr,
                        flush=True,
                    )
                    self.warned = True
                return
            self.pending.pop(0)

    def on_fit_end(self, result: FitResult) -> None:
        """The run's results, once MLflow answers (waited for up to the tracking config's patience)."""
        wait_s = patience(self.tracking.patience_s)
        self.send_pending(wait_s)
        try:
            policy(unreachable, patience_s=wait_s)(self.record_results, result)
        except Exception as e:
            if unreachable(e):
                raise MLflowUnreachable(self, wait_s) from None
            raise

    def record_results(self, result: FitResult) -> None:
        metrics = {
            "best_dev_acc": result.best_dev_acc,
            "best_epoch": result.best_epoch,
            "wall_seconds": result.wall_seconds,
        }
        evaluated = result.test or result.dev
        name = "test" if result.test else "dev"
        if result.test:
            metrics["test_acc"] = result.test.acc
            metrics["test_loss"] = result.test.loss
        for cls, d in evaluated.per_class().items():
            metrics[f"{name}_f1_{cls}"] = d["f1"]
        metrics |= result.costs
        for k, v in metrics.items():
            self.client.log_metric(self.run_id, k, float(v))
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            fig = learning_curves_figure(result.history)
            fig.savefig(tmp / "learning_curves.png", dpi=110)
            matrix = evaluated.confusion()
            fig2 = confusion_figure(matrix, f"{name} confusion (selected epoch {result.best_epoch})")
            fig2.savefig(tmp / f"confusion_{name}.png", dpi=110)
            pyplot().close(fig)
            pyplot().close(fig2)
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
        folder = result.out_dir / "best"
        model_config = json.loads((folder / "model_config.json").read_text())
        card = render_card(
            self.cfg.to_flat_dict(), model_config, result, self.info or result.info, self.provenance, self.run_id
        )
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
def recorded(
    run: MLflowRun, classify: Callable[[BaseException], tuple[str, dict[str, str]]] = default_classify
) -> Iterator[MLflowRun]:
    """End the run with the status its outcome deserves, whatever happens inside."""
    try:
        yield run
    except BaseException as e:
        status, tags = classify(e)
        with contextlib.suppress(Exception):  # an unreachable store cannot be told; the error itself says so
            run.end(status, tags)
        raise
    run.end("FINISHED")


def train_run(
    cfg: TrainConfig,
    out_dir: str | Path,
    tracking: TrackingConfig,
    resume: bool = False,
    parent_run_id: str | None = None,
    callbacks: list | None = None,
    classify=default_classify,
    keep_checkpoint: bool = True,
    progress: bool = True,
    overwrite: bool = False,
) -> tuple[FitResult, str]:
    """One recorded training run: the engine's fit inside an MLflow run with a true status.

    The run id is written to `out_dir/mlflow_run.json`, so `--resume` continues the same run. The folder
    is this process's alone while it runs (run_folder.py); a folder that holds a run is refused unless
    resumed or `overwrite`; a resume is checked before anything trains. `resume` without a marker (a sweep's
    retry, which carries an earlier attempt's checkpoint) continues from `last.pt` in a new MLflow run.
    """
    if not resume:  # a mistyped model or data folder leaves no failed run and no empty folder behind
        check_inputs(cfg)  # (a resume first learns whether its run already finished, whatever the data)
    out_dir = Path(out_dir)
    if dist_info()[0] != 0 or int(os.environ.get("RANK", "0")) != 0:
        return fit(cfg, out_dir, callbacks=[], resume=resume, progress=False), ""
    with claimed(out_dir):
        saved = recorded_run(out_dir) if resume else None
        if saved is not None:
            check_resumable(out_dir, saved)
            tracking = TrackingConfig(saved["tracking_uri"], tracking.experiment, tracking.run_name, tracking.tags)
        elif not resume:
            prepare_fresh(out_dir, overwrite)
        if resume:  # once it is known not to have finished: a moved --data leaves its run as it was, not FAILED
            check_inputs(cfg)
        run = MLflowRun(cfg, tracking, saved and saved["run_id"], parent_run_id, keep_checkpoint)
        atomic_write(out_dir / MARKER, json.dumps({"run_id": run.run_id, "tracking_uri": run.uri}))
        with recorded(run, classify):
            result = fit(cfg, out_dir, callbacks=[run, *(callbacks or [])], resume=resume, progress=progress)
    return result, run.run_id
