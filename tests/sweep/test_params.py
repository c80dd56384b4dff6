"""The space's parameters: conditional ones (`when`), parsed alike from TOML and `--space`, suggested define-by-run
and absent exactly where their condition is false."""

import re

import pytest
from mlflow import MlflowClient
from tiny_runs import cli
from tiny_sweeps import S, run_sweep, state, write_toml

from bertnli import BadInput
from bertnli.config import TrackingConfig, TrainConfig
from bertnli.sweep.params import known_configuration, parse_space
from bertnli.sweep.space import load_sweep_config, spec_from_json, spec_to_json

TOML_SPACE = {
    "warmup": {"low": 0.0, "high": 0.2, "when": "schedule=linear"},
    "schedule": ["linear", "constant"],
    "lr": {"low": 1e-4, "high": 1e-3, "log": True},
}


def test_a_condition_reads_alike_in_toml_and_on_the_command_line_and_puts_its_parent_first():
    space = parse_space(TOML_SPACE)
    assert [p.name for p in space] == ["schedule", "warmup", "lr"]  # the parent before its condition
    cli = parse_space({"warmup": "0:0.2 if schedule=linear", "schedule": "linear|constant", "lr": "1e-4:1e-3:log"})
    assert cli == space
    assert space[1].describe() == "warmup=0:0.2 if schedule=linear"
    assert space[1].active({"schedule": "linear"}) and not space[1].active({"schedule": "constant"})
    either = parse_space(
        {"model": ["tiny-random", "tiny-d2l-random", "minilm-l3"], "num_heads": "2|4 if model=tiny-random|minilm-l3"}
    )
    assert either[1].when == ("model", "tiny-random", "minilm-l3") and either[1].choices == (2, 4)


def test_a_space_without_conditions_keeps_its_order():
    space = parse_space({"lr": "1e-4:1e-3", "epochs": "1:3", "truncation": "longest_first|ratio"})
    assert [p.name for p in space] == ["lr", "epochs", "truncation"]


@pytest.mark.parametrize(
    "doc, needle",
    [
        ({"warmup": "0:0.2 if schedule=cosine", "schedule": "linear|constant"}, "schedule=cosine is not one of"),
        ({"warmup": "0:0.2 if lr=1", "lr": "1e-4:1e-3"}, "write PARENT=VALUE[|VALUE], PARENT a choice of the space"),
        ({"warmup": "0:0.2 if schedule=linear"}, "write PARENT=VALUE[|VALUE], PARENT a choice of the space (warmup)"),
        (
            {
                "schedule": {"choices": ["linear", "constant"], "when": "bucket=true"},
                "bucket": {"choices": [True, False], "when": "schedule=linear"},
            },
            "go round in a circle",
        ),
    ],
)
def test_a_bad_condition_is_one_line(doc, needle):
    with pytest.raises(BadInput, match=re.escape(needle)):
        parse_space(doc)


def test_a_known_configuration_may_not_set_a_parameter_its_own_condition_leaves_out():
    space = parse_space(TOML_SPACE)
    assert known_configuration("schedule=linear,warmup=0.05", space) == {"schedule": "linear", "warmup": 0.05}
    for item in ("schedule=constant,warmup=0.05", "warmup=0.05"):  # sampled, the schedule might leave it out
        with pytest.raises(BadInput, match="warmup is used only if schedule=linear; give schedule such a value too"):
            known_configuration(item, space)


def test_every_value_a_trial_trains_with_includes_the_train_setting_where_a_condition_leaves_it_out():
    """What the checks before a sweep (models, batch sizes over ranks, the pruning clock) must cover."""
    from bertnli.sweep.params import values_trained

    space = parse_space({"model": "tiny-random|tiny-d2l-random", "epochs": "2|4 if model=tiny-random"})
    assert values_trained(space, "epochs", 3) == [2, 4, 3]  # tiny-d2l-random trials train the [train] 3 epochs
    assert values_trained(space, "model", "minilm-l6") == ["tiny-random", "tiny-d2l-random"]
    assert values_trained(space, "batch_size", 32) == [32]


def _from_the_command_line(data, *space):
    """A sweep's settings from `--space` specs alone, as `bertnli-exp sweep --space ...` reads them."""
    return load_sweep_config(None, {"data": str(data)}, {}, list(space), TrackingConfig())


def test_conditions_travel_to_the_trial_processes(tiny_snli):
    cfg = _from_the_command_line(tiny_snli, "schedule=linear|constant", "warmup=0:0.2 if schedule=linear")
    import json

    assert spec_from_json(json.loads(json.dumps(spec_to_json(cfg)))).space == cfg.space


def test_the_cells_tried_first_leave_out_a_choice_where_its_condition_is_false(tiny_snli):
    from bertnli.sweep.space import cells

    cfg = _from_the_command_line(
        tiny_snli, "model=tiny-random|tiny-d2l-random", "truncation=longest_first|ratio if model=tiny-random"
    )
    assert cells(cfg) == [
        {"model": "tiny-random", "truncation": "longest_first"},
        {"model": "tiny-random", "truncation": "ratio"},
        {"model": "tiny-d2l-random"},
    ]


def test_a_new_range_on_the_command_line_keeps_the_tomls_condition(tmp_path, tiny_snli):
    toml = tmp_path / "s.toml"
    toml.write_text(
        f'[train]\ndata = "{tiny_snli}"\n[sweep.space]\nschedule = ["linear", "constant"]\n'
        'warmup = {low = 0.0, high = 0.2, when = "schedule=linear"}\n'
    )
    cfg = load_sweep_config(toml, {}, {}, ["warmup=0:0.1"], TrackingConfig())
    assert {p.name: p.describe() for p in cfg.space}["warmup"] == "warmup=0:0.1 if schedule=linear"
    cfg = load_sweep_config(toml, {}, {}, ["warmup=0:0.1 if schedule=constant"], TrackingConfig())
    assert {p.name: p.describe() for p in cfg.space}["warmup"] == "warmup=0:0.1 if schedule=constant"
    cfg = load_sweep_config(toml, {}, {}, ["warmup=0:0.3 if schedule=constant", "warmup=0:0.1"], TrackingConfig())
    assert {p.name: p.describe() for p in cfg.space}["warmup"] == "warmup=0:0.1 if schedule=constant"


@pytest.mark.slow  # runs a sweep
def test_a_conditional_parameter_is_absent_exactly_where_its_condition_is_false(tmp_path, tiny_snli, new_store):
    new_store(tmp_path / "mlflow.db")
    space = 'schedule = ["linear", "constant"]\nwarmup = {low = 0.0, high = 0.2, when = "schedule=linear"}\n'
    toml = write_toml(tmp_path, tiny_snli, trials=6, space=space + "epochs = [1]\nlr = [2e-3]")
    run_sweep(tmp_path, toml, "--sampler", "random", "--sampler-seed", "0", "--no-eval-test")
    st, parents, children = state(tmp_path)
    trials = [t for t in st.get_trials() if t.state == S.COMPLETE]
    assert len(trials) == 6 and {t.params["schedule"] for t in trials} == {"linear", "constant"}
    for t in trials:
        assert ("warmup" in t.params) == (t.params["schedule"] == "linear"), t.params
        assert ("warmup" in t.distributions) == ("warmup" in t.params)
    runs = {int(r.data.tags["optuna.trial"]): r for r in children}
    default = TrainConfig().warmup
    for t in trials:  # the run trained with the suggested warmup, or the setting's own when it had none
        assert float(runs[t.number].data.params["warmup"]) == pytest.approx(t.params.get("warmup", default))
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    table = c.download_artifacts(parents[0].info.run_id, "trials.csv", str(tmp_path))
    import pandas as pd

    frame = pd.read_csv(table)
    linear = frame["param_schedule"] == "linear"
    assert frame.loc[linear, "param_warmup"].notna().all() and frame.loc[~linear, "param_warmup"].isna().all()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = cli("report", "--study", "s", "--tracking-uri", uri, "--out", tmp_path / "rep")  # EVP, pruner replay
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "rep" / "report.md").is_file()
