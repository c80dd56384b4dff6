"""Adoption is for a trial's own result only: a study's trial folders belong to one study in one storage."""

import json

import optuna
import pytest

from bertnli import BadInput
from bertnli.config import TrackingConfig
from bertnli.sweep.reaping import claim_study_dir, recorded_result, trial_dir, trial_identity
from bertnli.sweep.space import load_sweep_config
from bertnli.sweep.storage import open_storage


def _cfg(tmp_path, journal, uri):
    sweep = {"study_name": "s", "storage": str(journal), "out_dir": str(tmp_path / "out")}
    return load_sweep_config(None, {}, sweep, ["lr=1e-4:1e-2:log"], TrackingConfig(uri))


def test_a_summary_left_by_another_study_or_trial_is_not_adopted(tmp_path, new_store):
    """Seen: two studies of one name in two storages shared --out; a rerun adopted the other study's trial.json
    (lr 0.41 for a trial that sampled 3.54e-05) and left its own run RUNNING."""
    uri = new_store(tmp_path / "mlflow.db")
    cfg = _cfg(tmp_path, tmp_path / "a.log", uri)
    study = optuna.create_study(study_name="s", storage=open_storage(cfg.storage), direction="maximize")
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    frozen = study.get_trials(deepcopy=False)[0]
    folder = trial_dir(cfg, frozen.number)
    folder.mkdir(parents=True)
    other = _cfg(tmp_path, tmp_path / "b.log", uri)  # the same study name in another storage
    for identity in (
        trial_identity(other, 0, frozen.params),
        trial_identity(cfg, 0, {"lr": 0.41}),
        trial_identity(cfg, 1, frozen.params),
        {},
    ):
        (folder / "trial.json").write_text(json.dumps({"value": 0.9, "run_id": "x", **identity}))
        assert recorded_result(cfg, frozen) is None, identity
    (folder / "trial.json").write_text(
        json.dumps({"value": 0.9, "run_id": "x", **trial_identity(cfg, 0, frozen.params)})
    )
    assert recorded_result(cfg, frozen)["value"] == 0.9


def test_a_study_folder_is_refused_to_a_study_of_the_same_name_in_another_storage(tmp_path, new_store):
    uri = new_store(tmp_path / "mlflow.db")
    claim_study_dir(_cfg(tmp_path, tmp_path / "a.log", uri))
    claim_study_dir(_cfg(tmp_path, tmp_path / "a.log", uri))  # the same study again: fine
    with pytest.raises(BadInput, match=r"holds the trials of study 's' in another storage.*another --out"):
        claim_study_dir(_cfg(tmp_path, tmp_path / "b.log", uri))
