"""Files that bertnli wrote before its modules moved into subpackages still load and resume.

tests/fixtures/pre_layering.tar.xz was made by tests/fixtures/make_pre_layering.py with the
pre-move code (git 91f8f18): a selected checkpoint, the encoded-split cache, an MLflow run
killed after epoch 1 of 2 with its `last.pt`, and a 2-trial Optuna journal study with its
MLflow parent run. Each test unpacks it into its own tmp_path and relocates the absolute paths
the store and the run folders recorded (the root is in manifest.json).

The only lines that name bertnli modules are the imports and CLI just below. Never regenerate
the archive with today's code: its point is that an older bertnli wrote it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bertnli.data.cache import encode_file
from bertnli.model.presets import build_model
from bertnli.train.checkpoint import load_selected
from bertnli.train.evaluation import predict

CLI = [sys.executable, "-m", "bertnli.cli"]  # the `bertnli-exp` command

ARCHIVE = Path(__file__).resolve().parent / "fixtures" / "pre_layering.tar.xz"
SPLITS = ("train", "dev", "test")


# ---------------------------------------------------------------- unpack and relocate


def relocate_store(db_path: Path, old: str, new: str) -> None:
    """Every text value in MLflow's SQLite store that names the old root (experiments.artifact_location,
    runs.artifact_uri, logged_models.artifact_location, dataset sources, path params and tags) gets the new one."""
    db = sqlite3.connect(db_path)
    try:
        with db:
            tables = [
                t
                for (t,) in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                )
            ]
            for table in tables:
                for column in [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]:
                    db.execute(
                        f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                        f'WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0',
                        (old + "/", new + "/", old + "/"),
                    )
            left = [
                (t, c)
                for t in tables
                for c in [row[1] for row in db.execute(f'PRAGMA table_info("{t}")')]
                if db.execute(
                    f'SELECT count(*) FROM "{t}" WHERE typeof("{c}") = \'text\' AND instr("{c}", ?) > 0', (old,)
                ).fetchone()[0]
            ]
            assert not left, f"the old root is still in {left}"
    finally:
        db.close()


def unpack(tmp_path: Path) -> tuple[Path, dict]:
    """The fixture under tmp_path/fixture, with every recorded absolute path moved there."""
    root = tmp_path / "fixture"
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(root, filter="data")
    manifest = json.loads((root / "manifest.json").read_text())
    old = manifest["root"]
    assert old != str(root)
    for marker in root.rglob("mlflow_run.json"):  # `train --resume` takes its tracking URI from here
        marker.write_text(marker.read_text().replace(old + "/", f"{root}/"))
    relocate_store(root / "mlruns" / "mlflow.db", old, str(root))
    return root, manifest


def tracking_uri(root: Path) -> str:
    return f"sqlite:///{root}/mlruns/mlflow.db"


def run_cli(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    """A real `bertnli-exp` process, in an empty cwd: nothing may fall back to ./mlruns or ./outputs."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run([*CLI, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert not list(cwd.iterdir()), f"wrote into its cwd: {list(cwd.iterdir())}"
    return r


def listing(folder: Path) -> dict[str, tuple]:
    """Name -> (inode, mtime, sha256): a file rebuilt under the same name shows as changed."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.iterdir())
    }


def snapshot(run) -> dict:
    """What a run that nothing touched keeps: status, times, params, metrics, tags."""
    return {
        "status": run.info.status,
        "start": run.info.start_time,
        "end": run.info.end_time,
        "stage": run.info.lifecycle_stage,
        "params": run.data.params,
        "metrics": run.data.metrics,
        "tags": run.data.tags,
    }


# ---------------------------------------------------------------- the tests


def test_old_checkpoint_loads_and_predicts_what_it_did(tmp_path):
    root, manifest = unpack(tmp_path)
    p = manifest["predict"]
    expected = np.array(p["probabilities"])
    assert expected.shape == (len(p["premises"]), 3) and np.ptp(expected, axis=0).max() > 1e-3  # not a constant model
    model, tokenizer, meta = load_selected(root / p["checkpoint"])
    assert meta["epoch"] == manifest["train"]["best_epoch"] == 1
    probs = predict(model, tokenizer, p["premises"], p["hypotheses"], p["max_len"], p["truncation"], amp=False)
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-5)  # made in fp32 (bf16, on a CPU with AMX: 1e-3)


def test_old_encoding_cache_is_hit_and_equals_a_fresh_encoding(tmp_path):
    root, manifest = unpack(tmp_path)
    c = manifest["cache"]
    cache = root / c["folder"]
    before = listing(cache)
    assert sorted(before) == c["files"] and len(before) == len(SPLITS)
    _, tokenizer = build_model(c["model"])
    for split in SPLITS:
        path = root / manifest["data"]["folder"] / f"snli_1.0_{split}.jsonl.gz"
        cached, digest = encode_file(path, split, tokenizer, c["max_len"], c["truncation"], cache_dir=cache)
        fresh, _ = encode_file(path, split, tokenizer, c["max_len"], c["truncation"], cache_dir=None)
        assert digest == manifest["data"]["sha256"][split]
        assert len(cached) == len(fresh) > 0 and cached.pad_id == fresh.pad_id
        for name in ("ids", "offsets", "seg1", "labels", "example_ids"):
            np.testing.assert_array_equal(getattr(cached, name), getattr(fresh, name), err_msg=f"{split}.{name}")
    assert listing(cache) == before  # no new key, no rebuilt file: every split came from the committed .npz


@pytest.mark.slow
def test_killed_run_resumes_epoch_2_in_the_same_mlflow_run(tmp_path):
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    root, manifest = unpack(tmp_path)
    t = manifest["train"]
    c = MlflowClient(tracking_uri(root))
    exp_id = c.get_experiment_by_name(t["experiment"]).experiment_id
    (killed,) = c.search_runs([exp_id], run_view_type=ViewType.ALL)
    assert killed.info.run_id == t["run_id"] and killed.info.status == "KILLED"
    assert [m.step for m in c.get_metric_history(t["run_id"], "dev_acc")] == [1]
    cache_before = listing(root / "enc")

    r = run_cli(
        tmp_path,
        "train",
        "--resume",
        root / t["out"],
        "--data",
        root / "snli",
        "--cache-dir",
        root / "enc",
        "--tracking-uri",
        tracking_uri(root),
        "--no-progress",
        "--no-system-metrics",
    )
    assert "epoch 2:" in r.stdout and "epoch 1:" not in r.stdout, r.stdout  # went on from last.pt, did not start over
    assert t["run_id"] in r.stdout

    (done,) = c.search_runs([exp_id], run_view_type=ViewType.ALL)  # no second run
    assert done.info.run_id == t["run_id"] and done.info.status == "FINISHED"
    history = c.get_metric_history(t["run_id"], "dev_acc")
    assert sorted(m.step for m in history) == [1, 2]  # each epoch once
    assert next(m.value for m in history if m.step == 1) == t["dev_acc_step1"]
    assert done.data.metrics["best_epoch"] in (1, 2)
    assert json.loads((root / t["out"] / "result.json").read_text())["history"][0]["dev_acc"] == t["dev_acc_step1"]
    assert done.info.artifact_uri.startswith(f"{root}/")
    assert (
        Path(done.info.artifact_uri) / "checkpoint" / "model.safetensors"
    ).is_file()  # logged into the relocated store
    assert listing(root / "enc") == cache_before


@pytest.mark.slow
def test_old_sweep_study_resumes_and_trains_only_the_new_trial(tmp_path):
    import optuna
    from mlflow import MlflowClient
    from mlflow.entities import ViewType
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    root, manifest = unpack(tmp_path)
    s = manifest["sweep"]
    c = MlflowClient(tracking_uri(root))
    exp_id = c.get_experiment_by_name(s["experiment"]).experiment_id
    runs = lambda: {r.info.run_id: r for r in c.search_runs([exp_id], run_view_type=ViewType.ALL, max_results=1000)}  # noqa: E731
    role = lambda r: r.data.tags.get("bertnli.role")  # noqa: E731
    before = runs()
    old_children = {rid for rid, r in before.items() if role(r) == "sweep-trial"}
    assert old_children == {t["mlflow_run_id"] for t in s["trials"]}
    assert [rid for rid, r in before.items() if role(r) == "sweep-parent"] == [s["parent_run_id"]]
    study_dir = root / s["out"] / s["study"]
    logs_before = {p.name: p.read_bytes() for p in study_dir.glob("trial-*.log")}
    assert sorted(logs_before) == ["trial-000.log", "trial-001.log"]

    args = [a.replace("{root}", str(root)) for a in s["args"]]
    run_cli(tmp_path, *args, "--trials", "3")

    storage = JournalStorage(JournalFileBackend(str(root / s["storage"])))
    study = optuna.load_study(study_name=s["study"], storage=storage)
    trials = study.get_trials()
    S = optuna.trial.TrialState
    assert len(trials) == 3 and all(t.state in (S.COMPLETE, S.PRUNED) for t in trials), [t.state for t in trials]
    for old, t in zip(s["trials"], trials):
        assert (t.number, t.state.name, t.value, t.params, t.user_attrs["mlflow_run_id"]) == (
            old["number"],
            old["state"],
            old["value"],
            old["params"],
            old["mlflow_run_id"],
        )
    assert study.user_attrs["mlflow_parent_run_id"] == s["parent_run_id"]

    after = runs()
    new = [after[rid] for rid in set(after) - set(before)]
    assert len(new) == 1, [(r.info.run_name, role(r)) for r in new]  # one trial process: trial 2; no new parent
    (child,) = new
    assert role(child) == "sweep-trial" and child.data.tags["optuna.trial"] == "2"
    assert child.data.tags["mlflow.parentRunId"] == s["parent_run_id"] and child.info.status == "FINISHED"
    assert child.info.run_id == trials[2].user_attrs["mlflow_run_id"]
    assert child.info.artifact_uri.startswith(f"{root}/")
    assert after[s["parent_run_id"]].info.status == "FINISHED"
    for rid in old_children:  # the old trials were not trained (or recorded) again
        assert snapshot(after[rid]) == snapshot(before[rid]), rid
    logs_after = {p.name: p.read_bytes() for p in study_dir.glob("trial-*.log")}
    assert sorted(logs_after) == ["trial-000.log", "trial-001.log", "trial-002.log"]
    assert {k: logs_after[k] for k in logs_before} == logs_before
