"""A run folder under faults: a full disk mid-checkpoint, a deleted or damaged checkpoint, two processes on
one folder, a reused folder. A failure leaves the run FAILED with its reason, nothing half-written that a
later `--resume` trusts, and the previous checkpoint intact; no epoch is ever logged twice."""

import shutil
import subprocess
import uuid

import pytest
import torch
from mlflow import MlflowClient
from tiny_runs import tiny_cfg

from bertnli import BertnliError
from bertnli.config import TrackingConfig
from bertnli.tracking.run import train_run


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
