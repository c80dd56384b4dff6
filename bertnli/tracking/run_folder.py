"""A run's folder: one process at a time, never silently reused, checked before a resume trusts it.

The folder holds what a resume continues from (`last.pt`, `best/`, `config.json`) and the marker naming
the run's MLflow run (`mlflow_run.json`). An OS lock (`.lock`, released however the process ends) keeps a
second process out; a folder that holds a run is refused unless the run is resumed or deliberately
overwritten; a resume of a finished run, or of a run whose checkpoint is gone, is refused up front.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from bertnli import BadInput
from bertnli.tracking.store import client

MARKER = "mlflow_run.json"
RUN_FILES = (MARKER, "config.json", "last.pt", "result.json", "best", "best.tmp", "best.old", "trial.json")


class RunFinished(Exception):
    """`--resume` of a run that already finished: nothing to do (the message says what it scored)."""


@contextlib.contextmanager
def claimed(out_dir: Path) -> Iterator[None]:
    """The folder, created if need be, for this process alone while the block runs."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = open(out_dir / ".lock", "a+")
    except OSError as e:
        raise BadInput(f"cannot create the run folder {out_dir} ({e.strerror or e}); give another --out") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise BadInput(
                f"{out_dir} is in use by another process (pid {holder}); wait for it to end, or give another --out"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield


def recorded_run(out_dir: Path) -> dict | None:
    """The marker of the run the folder holds: {"run_id", "tracking_uri"}, or None."""
    marker = out_dir / MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def _describe(saved: dict | None) -> str:
    if saved is None:
        return "an earlier run"
    try:
        status = client(saved["tracking_uri"]).get_run(saved["run_id"]).info.status
    except Exception:  # noqa: BLE001 - the store may be gone; the folder is still in use
        status = "status unknown"
    return f"run {saved['run_id']} ({status})"


def prepare_fresh(out_dir: Path, overwrite: bool) -> None:
    """A new run goes into an unused folder; `overwrite` clears one that holds a run."""
    used = [name for name in RUN_FILES if (out_dir / name).exists()]
    if not used:
        return
    if not overwrite:
        raise BadInput(
            f"{out_dir} holds {_describe(recorded_run(out_dir))}; continue it with --resume {out_dir}, "
            "give another --out, or --overwrite to replace it"
        )
    for name in used:
        path = out_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def check_resumable(out_dir: Path, saved: dict) -> None:
    """Refuse, before anything trains, a resume that would train again what MLflow already holds."""
    run = client(saved["tracking_uri"]).get_run(saved["run_id"])
    if run.info.status == "FINISHED":
        m = run.data.metrics
        scores = f"best dev_acc {m.get('best_dev_acc', float('nan')):.4f}" + (
            f", test_acc {m['test_acc']:.4f}" if "test_acc" in m else ""
        )
        raise RunFinished(f"run {saved['run_id']} in {out_dir} already finished: {scores}; nothing to resume")
    if not (out_dir / "last.pt").is_file():
        raise BadInput(
            f"{out_dir} has no last.pt to resume from (run {saved['run_id']} would train its epochs again); "
            f"start it over with --out {out_dir} --overwrite, or give another --out"
        )
