"""The checkpoint store on a real MLflow artifact repository (a local folder, as a shared mount would be):
epochs complete or not at all, best weights uploaded once, what a retry finds, what is kept at the end."""

import json
import shutil
import types
from pathlib import Path

import optuna
import torch

from bertnli.config import TrackingConfig
from bertnli.sweep import checkpoint_store as store
from bertnli.sweep.space import load_sweep_config


def run_folder(out, epochs: int, best: int):
    """A trial's run folder after `epochs` epochs whose best dev was at epoch `best`."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"history": [{"epoch": e} for e in range(1, epochs + 1)], "model": {}}, out / "last.pt")
    if best:
        (out / "best").mkdir(exist_ok=True)
        (out / "best" / "model.safetensors").write_bytes(b"weights-%d" % best)
        (out / "best" / "meta.json").write_text(json.dumps({"epoch": best}))


def names(uri):
    return sorted(p.name for p in Path(uri).iterdir())


def test_each_epoch_replaces_the_last_and_best_weights_go_up_once(tmp_path):
    uri, out = str(tmp_path / "store"), tmp_path / "trial-000"
    run_folder(out, 1, best=1)
    store.upload(uri, out, 1, None)
    assert names(uri) == ["best-001", "epoch-001"] and store.newest(uri, None) == 1
    run_folder(out, 2, best=1)  # epoch 2 did not beat epoch 1
    (out / "best" / "model.safetensors").write_bytes(b"changed locally")  # so a re-upload would show
    store.upload(uri, out, 2, None)
    assert names(uri) == ["best-001", "epoch-002"]
    assert (tmp_path / "store" / "best-001" / "model.safetensors").read_bytes() == b"weights-1"  # not uploaded again
    run_folder(out, 3, best=3)
    store.upload(uri, out, 3, None)
    assert names(uri) == ["best-003", "epoch-003"] and store.newest(uri, None) == 3


def test_an_epoch_cut_short_is_not_resumed_from(tmp_path):
    uri, out = str(tmp_path / "store"), tmp_path / "trial-000"
    run_folder(out, 1, best=1)
    store.upload(uri, out, 1, None)
    (tmp_path / "store" / "epoch-002").mkdir()  # epoch 2's last.pt went up, its done.json never did
    shutil.copy(out / "last.pt", tmp_path / "store" / "epoch-002" / "last.pt")
    assert store.newest(uri, None) == 1
    got = tmp_path / "got"
    assert store.download(uri, got, None) == 1
    assert sorted(p.name for p in got.iterdir()) == ["best", "last.pt"]
    assert (got / "best" / "model.safetensors").read_bytes() == b"weights-1"


def test_forget_keeps_only_the_best_weights_and_fetch_best_finds_them(tmp_path):
    uri, out = str(tmp_path / "store"), tmp_path / "trial-000"
    run_folder(out, 2, best=2)
    store.upload(uri, out, 2, None)
    store.forget(uri, None, keep_best=True)
    assert names(uri) == ["best-002"] and store.newest(uri, None) == 0  # nothing to resume from any more
    store.forget(uri, None, keep_best=True)  # settled, then pruned at the sweep's end with --keep-checkpoints all
    assert names(uri) == ["best-002"]
    assert store.fetch_best(uri, tmp_path / "winner" / "best", None)
    assert (tmp_path / "winner" / "best" / "model.safetensors").read_bytes() == b"weights-2"
    store.forget(uri, None)
    assert names(uri) == []


def retry_study(tmp_path, checkpoint_store):
    """A study whose trial 1 retries trial 0 (Optuna's retry attributes), and its sweep config."""
    cfg = load_sweep_config(
        None,
        {"data": str(tmp_path)},
        {"study_name": "s", "out_dir": str(tmp_path / "out"), "checkpoint_store": checkpoint_store},
        [],
        TrackingConfig(f"sqlite:///{tmp_path / 'mlflow.db'}"),
    )
    study = optuna.create_study(study_name="s")
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING, system_attrs={"failed_trial": 0, "retry_history": [0]}
        )
    )
    return cfg, study


def test_a_retry_takes_the_newer_of_the_local_and_the_stored_checkpoint(tmp_path):
    cfg, study = retry_study(tmp_path, str(tmp_path / "store"))
    local = tmp_path / "out" / "s" / "trial-000"
    run_folder(local, 1, best=1)  # this host saw epoch 1
    elsewhere = tmp_path / "elsewhere"
    run_folder(elsewhere, 2, best=2)  # the host that died had uploaded epoch 2
    store.upload(store.store_uri(cfg, 0, None), elsewhere, 2, None)
    out = tmp_path / "out" / "s" / "trial-001"
    assert store.carry_checkpoint(cfg, study, study.get_trials()[1], out)
    assert store.local_epoch(out) == 2 and (out / "best" / "model.safetensors").read_bytes() == b"weights-2"


def test_a_store_that_cannot_be_read_leaves_the_retry_with_the_local_checkpoint(tmp_path):
    cfg, study = retry_study(tmp_path, str(tmp_path / "store"))
    local = tmp_path / "out" / "s" / "trial-000"
    run_folder(local, 1, best=1)
    uri = store.store_uri(cfg, 0, None)
    store.upload(uri, tmp_path / "out" / "s" / "trial-000", 1, None)
    run_folder(tmp_path / "newer", 2, best=1)
    store.upload(uri, tmp_path / "newer", 2, None)
    (Path(uri) / "epoch-002" / "last.pt").unlink()  # the store lost a file: epoch 2 cannot be fetched
    out = tmp_path / "out" / "s" / "trial-001"
    assert store.carry_checkpoint(cfg, study, study.get_trials()[1], out)  # epoch 2 is gone: epoch 1, local
    assert store.local_epoch(out) == 1 and not (out.parent / "trial-001.carry").exists()


def test_auto_stores_checkpoints_only_with_an_mlflow_server(tmp_path):
    def kind(uri):
        cfg = load_sweep_config(None, {"data": str(tmp_path)}, {}, [], TrackingConfig(uri))
        return store.store_kind(cfg)

    assert kind("http://mlflow:5000") == "run"  # every host reaches the run's artifacts through it
    assert kind(f"sqlite:///{tmp_path / 'mlflow.db'}") == "none"  # one host: --out holds every checkpoint


def test_an_upload_that_fails_for_good_turns_uploads_off_and_the_trial_trains_on(tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    out = tmp_path / "trial-000"
    run_folder(out, 1, best=1)
    upload = store.EpochUpload(lambda run_id: str(blocker / "store"), out, None, patience_s=0.5)
    upload.on_fit_start({})
    upload.on_epoch_end(types.SimpleNamespace(epoch=1))  # no exception: training goes on
    assert upload.uri is None and "not uploaded to the checkpoint store" in capsys.readouterr().err
