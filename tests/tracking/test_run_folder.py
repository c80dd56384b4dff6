"""A run folder under faults: a full disk mid-checkpoint, a deleted or damaged checkpoint, two processes on
one folder, a reused folder. A failure leaves the run FAILED with its reason, nothing half-written that a
later `--resume` trusts, and the previous checkpoint intact; no epoch is ever logged twice."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from mlflow import MlflowClient
from tiny_runs import Quiet, StopAt, tiny_cfg

from bertnli import BadInput, BertnliError
from bertnli.config import TrackingConfig
from bertnli.tracking.run import train_run
from bertnli.tracking.run_folder import RunFinished


@pytest.fixture
def small_disk(tmp_path):
    """A real tmpfs of a few MB (mounting needs root; skipped where the machine does not allow it)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()[:80]})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk, leave: int) -> None:
    """Leave only `leave` bytes free on `disk`."""
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def test_a_full_disk_while_checkpointing_fails_the_run_with_the_reason_and_keeps_the_last_checkpoint(
    tiny_snli, tmp_path, small_disk, new_store
):
    uri = new_store(tmp_path / "mlflow.db")
    cfg = tiny_cfg(tiny_snli, tmp_path, epochs=1, limit_train=240, batch_size=8, checkpoint_every=10)  # 30 steps
    train_run(cfg, tmp_path / "measure", TrackingConfig(uri, "size"), progress=False, keep_checkpoint=False)
    size = (tmp_path / "measure" / "last.pt").stat().st_size  # a checkpoint of this run, as written at the end

    out = small_disk / "run"
    _fill(small_disk, leave=size + size // 2)  # room for the step-10 checkpoint, not for a second beside it
    tracking = TrackingConfig(uri, "full-disk")
    with pytest.raises(BertnliError, match=r"No space left on device writing .*last\.pt"):
        train_run(cfg, out, tracking, progress=False)
    (run,) = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("full-disk").experiment_id])
    assert run.info.status == "FAILED"
    assert "No space left on device" in run.data.tags["bertnli.error"] and "last.pt" in run.data.tags["bertnli.error"]
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]  # nothing half-written is left beside it
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["step_in_epoch"] == 10  # the previous checkpoint, intact

    (small_disk / "filler").unlink()
    result, run_id = train_run(cfg, out, tracking, resume=True, progress=False)
    done = MlflowClient(uri).get_run(run_id)
    assert run_id == run.info.run_id and done.info.status == "FINISHED"
    assert "bertnli.error" not in done.data.tags  # the resumed run no longer says it failed
    assert [m.step for m in MlflowClient(uri).get_metric_history(run_id, "dev_acc")] == [1]


def _interrupted(tiny_snli, tmp_path, uri, name="run"):
    """A 2-epoch run stopped in epoch 2 (as Ctrl-C would): KILLED, with last.pt and best/ of epoch 1."""
    cfg = tiny_cfg(tiny_snli, tmp_path, epochs=2, limit_train=160)  # 10 steps an epoch
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / name, TrackingConfig(uri, "folders"), callbacks=[StopAt(15)], progress=False)
    return cfg, tmp_path / name


def _dev_steps(uri, run_id):
    return [m.step for m in MlflowClient(uri).get_metric_history(run_id, "dev_acc")]


def _run_id(folder):
    return json.loads((folder / "mlflow_run.json").read_text())["run_id"]


def test_resume_without_last_pt_refuses_instead_of_training_again_into_the_same_run(tiny_snli, tmp_path, new_store):
    """Seen: last.pt deleted (as an earlier message advised for a damaged one), `--resume` exited 0 having
    retrained epoch 1 into the same MLflow run, which then held epoch 1 twice."""
    uri = new_store(tmp_path / "mlflow.db")
    cfg, run = _interrupted(tiny_snli, tmp_path, uri)
    (run / "last.pt").unlink()
    with pytest.raises(BadInput, match=r"has no last\.pt to resume from.*--overwrite"):
        train_run(cfg, run, TrackingConfig(uri, "folders"), resume=True, progress=False)
    assert _dev_steps(uri, _run_id(run)) == [1]


def test_a_resume_with_a_moved_data_folder_is_one_line_and_leaves_its_run_as_it_was(tiny_snli, tmp_path, new_store):
    """Seen: the resume reopened the KILLED run, failed to read the data, and left the run FAILED."""
    uri = new_store(tmp_path / "mlflow.db")
    cfg, run = _interrupted(tiny_snli, tmp_path, uri)
    with pytest.raises(BadInput, match=r"data folder .*moved not found"):
        train_run(cfg.replace(data=str(tmp_path / "moved")), run, TrackingConfig(uri, "folders"), resume=True)
    assert MlflowClient(uri).get_run(_run_id(run)).info.status == "KILLED"
    train_run(cfg, run, TrackingConfig(uri, "folders"), resume=True, progress=False)  # the right data: it goes on
    assert _dev_steps(uri, _run_id(run)) == [1, 2]


def test_a_damaged_best_folder_is_refused_when_resuming_not_after_training(tiny_snli, tmp_path, new_store):
    uri = new_store(tmp_path / "mlflow.db")
    cfg, run = _interrupted(tiny_snli, tmp_path, uri)
    weights = run / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    trained = []
    with pytest.raises(BertnliError, match=r"best.* is damaged.*epoch 1"):
        train_run(cfg, run, TrackingConfig(uri, "folders"), resume=True, callbacks=[Steps(trained)], progress=False)
    assert not trained and _dev_steps(uri, _run_id(run)) == [1]  # refused before a single step


@pytest.mark.slow  # another process holds the folder's lock
def test_a_second_process_on_a_run_folder_is_refused_and_a_released_lock_is_taken(tiny_snli, tmp_path, new_store):
    uri = new_store(tmp_path / "mlflow.db")
    cfg, run = _interrupted(tiny_snli, tmp_path, uri)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"  # another process holds the folder (as a running train does)
    try:
        with pytest.raises(BadInput, match=rf"{run} is in use by another process \(pid {holder.pid}\)"):
            train_run(cfg, run, TrackingConfig(uri, "folders"), resume=True, progress=False)
    finally:
        holder.kill()  # SIGKILL: the OS releases its lock
        holder.wait()
    train_run(cfg, run, TrackingConfig(uri, "folders"), resume=True, progress=False)
    assert _dev_steps(uri, _run_id(run)) == [1, 2]  # each epoch once


HOLD_LOCK = """
import fcntl, os, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
f.seek(0); f.truncate(); f.write(str(os.getpid())); f.flush()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_used_folder_is_refused_without_resume_and_replaced_with_overwrite(tiny_snli, tmp_path, new_store):
    """Seen: `--out` of a KILLED run reused without --resume silently replaced best/ and the marker, and the
    KILLED run could never be resumed."""
    uri = new_store(tmp_path / "mlflow.db")
    cfg, run = _interrupted(tiny_snli, tmp_path, uri)
    killed = _run_id(run)
    with pytest.raises(BadInput, match=rf"{run} holds run {killed} \(KILLED\).*--resume.*--overwrite"):
        train_run(cfg.replace(seed=1), run, TrackingConfig(uri, "folders"), progress=False)
    assert _run_id(run) == killed and (run / "last.pt").is_file()  # untouched
    _, fresh = train_run(
        cfg.replace(seed=1, epochs=1), run, TrackingConfig(uri, "folders"), overwrite=True, progress=False
    )
    assert fresh != killed and _run_id(run) == fresh and json.loads((run / "config.json").read_text())["seed"] == 1


def test_resuming_a_finished_run_says_so_and_changes_nothing(tiny_snli, tmp_path, new_store):
    """Seen: resuming a FINISHED run logged test_acc a second time, or with a moved --data turned it FAILED."""
    uri = new_store(tmp_path / "mlflow.db")
    cfg = tiny_cfg(tiny_snli, tmp_path, epochs=1, limit_train=80)
    _, run_id = train_run(cfg, tmp_path / "run", TrackingConfig(uri, "folders"), progress=False)
    with pytest.raises(RunFinished, match=rf"run {run_id} in .* already finished: best dev_acc"):
        train_run(
            cfg.replace(data=str(tmp_path / "moved")),
            tmp_path / "run",
            TrackingConfig(uri, "folders"),
            resume=True,
            progress=False,
        )
    done = MlflowClient(uri).get_run(run_id)
    assert done.info.status == "FINISHED" and len(MlflowClient(uri).get_metric_history(run_id, "test_acc")) == 1


def test_an_out_folder_that_cannot_be_created_is_one_line_and_creates_no_run(tiny_snli, tmp_path, new_store):
    """Seen: `--out /proc/x` left the MLflow run, created before the folder, RUNNING for ever."""
    uri = new_store(tmp_path / "mlflow.db")
    cfg = tiny_cfg(tiny_snli, tmp_path, epochs=1, limit_train=80)
    with pytest.raises(BadInput, match=r"cannot create the run folder /proc/x"):
        train_run(cfg, "/proc/x", TrackingConfig(uri, "nowhere"), progress=False)
    exp = MlflowClient(uri).get_experiment_by_name("nowhere")
    assert exp is None or not MlflowClient(uri).search_runs([exp.experiment_id])


class Steps(Quiet):
    def __init__(self, seen):
        self.seen = seen

    def on_step(self, global_step, loss):
        self.seen.append(global_step)
