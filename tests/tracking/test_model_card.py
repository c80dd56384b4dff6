"""The model card README.md written into the saved checkpoint from the run, and logged with it."""

import subprocess

import torch
from mlflow import MlflowClient
from tiny_runs import tiny_cfg

import bertnli
from bertnli import PACKAGE_DIR
from bertnli.config import TrackingConfig
from bertnli.tracking.run import train_run


def test_checkpoint_carries_a_model_card_written_from_the_run(tiny_snli, tmp_path, mlflow_uri):
    cfg = tiny_cfg(tiny_snli, tmp_path, epochs=2, limit_train=64, lr=3e-3)
    result, run_id = train_run(cfg, tmp_path / "run", TrackingConfig(mlflow_uri, "t-card"), progress=False)
    card = (tmp_path / "run" / "best" / "README.md").read_text()
    c = MlflowClient(mlflow_uri)
    logged = open(c.download_artifacts(run_id, "checkpoint/README.md", str(tmp_path))).read()
    assert logged == card  # the logged checkpoint carries the same card
    for split, digest in result.info["digests"].items():
        assert f"| {split} | `{digest}` |" in card
    assert "| lr | 0.003 |" in card and "| model | tiny-d2l-random |" in card and "| num_heads | 2 |" in card
    for m in result.history:
        assert f"| {m.epoch} | {m.train_loss:.4f} | {m.train_acc:.4f} | {m.dev_loss:.4f} | {m.dev_acc:.4f} |" in card
    assert f"evaluated once: **{result.test.acc:.4f}**" in card
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True
    ).stdout.strip()
    dirty = c.get_run(run_id).data.tags["bertnli.git_dirty"]
    assert f"| torch | {torch.__version__} |" in card and f"| bertnli | {bertnli.__version__} |" in card
    assert f"| git commit | {commit} |" in card and f"| git dirty | {dirty} |" in card
    assert run_id in card and f"Selected epoch {result.best_epoch} of 2" in card
