"""Adoption is for a trial's own result only: a study's trial folders belong to one study in one storage."""

import json

import optuna
import pytest

from bertnli import BadInput
from bertnli.config import TrackingConfig
from bertnli.sweep.reaping import (
    adopt,
    claim_study_dir,
    fail_and_retry,
    recorded_result,
    trial_dir,
    trial_identity,
)
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


class FinishedBeforeTheWrite:
    """A real storage in which another process's study finishes the trial just before this process's
    first write of a trial's end: the interleaving of two reapers after an outage (seen in CI with four
    workers on PostgreSQL), made certain instead of left to timing."""

    def __init__(self, inner, other_study, number: int):
        self.inner, self.other_study, self.number = inner, other_study, number

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def set_trial_state_values(self, *args, **kwargs):
        if self.other_study is not None:
            other, self.other_study = self.other_study, None
            other.tell(self.number, 0.5)
        return self.inner.set_trial_state_values(*args, **kwargs)


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
@pytest.mark.parametrize("end", ["adopt COMPLETE", "adopt PRUNED", "fail and retry"])
def test_a_trial_finished_by_another_process_just_before_our_write_is_left_as_it_finished(
    tmp_path, new_store, kind, end
):
    """Seen in CI: `study.tell(..., skip_if_finished=True)` checks, then writes; another worker finished
    the trial in between, and UpdateFinishedTrialError crashed the sweep worker (and the sweep, exit 1)."""
    url = str(tmp_path / "j.log") if kind == "journal" else f"sqlite:///{tmp_path / 'o.db'}"
    cfg = _cfg(tmp_path, url, new_store(tmp_path / "mlflow.db"))
    mine = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    trial = mine.ask()
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    other = optuna.load_study(study_name="s", storage=open_storage(url))
    storage = FinishedBeforeTheWrite(open_storage(url), other, trial.number)
    study = optuna.load_study(study_name="s", storage=storage)
    frozen = study.get_trials(deepcopy=False)[trial.number]
    said = []
    if end == "fail and retry":
        fail_and_retry(study, storage, cfg, frozen, "its worker is gone", log=said.append)
    else:
        result = {"state": end.split()[1], "value": 0.9, "run_id": None}
        adopt(study, storage, cfg, frozen, result, log=said.append)
    trials = optuna.load_study(study_name="s", storage=open_storage(url)).get_trials()
    assert [(t.state.name, t.value) for t in trials] == [("COMPLETE", 0.5)]  # as the other process left it
    assert said == []  # nothing adopted, failed or queued again by this process


def test_a_trial_already_finished_is_neither_failed_nor_queued_again(tmp_path, new_store):
    url = str(tmp_path / "j.log")
    cfg = _cfg(tmp_path, url, new_store(tmp_path / "mlflow.db"))
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    frozen = study.get_trials(deepcopy=False)[0]
    study.tell(trial, 0.5)
    fail_and_retry(study, open_storage(url), cfg, frozen, "its worker is gone")
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"]


def test_a_result_without_a_cost_the_study_optimises_is_not_adopted_and_nothing_is_written(tmp_path, new_store):
    uri = new_store(tmp_path / "mlflow.db")
    sweep = {"study_name": "s", "storage": str(tmp_path / "j.log"), "out_dir": str(tmp_path / "out")}
    cfg = load_sweep_config(
        None, {}, {**sweep, "objective": "dev_acc,latency_ms"}, ["lr=1e-4:1e-2:log"], TrackingConfig(uri)
    )
    storage = open_storage(cfg.storage)
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    frozen = study.get_trials(deepcopy=False)[0]
    result = {"state": "COMPLETE", "value": 0.9, "run_id": "x", "costs": {"params": 5.0}}  # no latency recorded
    assert adopt(study, storage, cfg, frozen, result) is False
    (after,) = study.get_trials()
    assert after.state.name == "RUNNING" and "adopted" not in after.user_attrs and "params" not in after.user_attrs
    result["costs"]["latency_ms_b1"] = 3.0
    assert adopt(study, storage, cfg, frozen, result) is True
    (after,) = study.get_trials()
    assert after.values == [0.9, 3.0] and after.user_attrs["adopted"] is True
