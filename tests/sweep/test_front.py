"""The trials a study keeps, registers and names as its champion: one answer, ties included."""

import optuna
import pytest

from bertnli.config import TrackingConfig
from bertnli.sweep.front import kept, trials_front
from bertnli.sweep.space import load_sweep_config


def _trials(rows, directions):
    study = optuna.create_study(directions=directions)  # in memory: the front reads only what trials recorded
    for acc, params in rows:
        study.add_trial(
            optuna.trial.create_trial(
                values=[acc, params] if len(directions) > 1 else [acc],
                params={"lr": 1e-3},
                distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)},
                user_attrs={"params": params},
            )
        )
    return study.get_trials()


@pytest.mark.parametrize("constraint", [(), ("params<=1500000",)])
def test_of_trials_tied_on_accuracy_only_the_cheaper_is_kept(tmp_path, constraint):
    """Trials (0.8, 2e6 params) and (0.8, 1e6) tie on accuracy: the champion is the second (the parent's best.*
    tags say so too: tests/sweep/test_objectives.py), and the first's weights are not kept."""
    cfg = load_sweep_config(None, {"data": str(tmp_path)}, {"objective": "dev_acc,params"}, [], TrackingConfig())
    cfg = cfg.__class__(**{**cfg.__dict__, "constraints": constraint})
    trials = _trials([(0.8, 2e6), (0.8, 1e6), (0.7, 0.5e6)], ["maximize", "minimize"])
    assert kept(cfg, trials) == [1, 2]
    table = trials_front(cfg, trials)
    assert list(table.loc[table["pareto"], "number"]) == [1, 2]


def test_one_objective_with_a_constraint_keeps_the_most_accurate_trial_within_it(tmp_path):
    cfg = load_sweep_config(None, {"data": str(tmp_path)}, {}, [], TrackingConfig())
    cfg = cfg.__class__(**{**cfg.__dict__, "constraints": ("params<=1500000",)})
    trials = _trials([(0.9, 2e6), (0.8, 1e6), (0.8, 0.5e6)], ["maximize"])
    assert kept(cfg, trials) == [1]  # the first of two tied within the constraint; 0 breaks it
