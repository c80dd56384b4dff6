"""Settings: TOML + CLI overrides into one frozen config; every experiment file parses."""

from pathlib import Path

import pytest

from bertnli import BertnliError
from bertnli.config import TrackingConfig, TrainConfig, load_config
from bertnli.sweep.space import load_sweep_config

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.toml"))


def test_options_override_file_override_defaults(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text('[train]\nlr = 1e-4\nepochs = 3\ntruncation = "ratio"\n')
    cfg = load_config(p, {"lr": 2e-5, "epochs": None})
    assert (cfg.lr, cfg.epochs, cfg.truncation, cfg.batch_size) == (2e-5, 3, "ratio", TrainConfig().batch_size)


@pytest.mark.parametrize(
    "text,needle",
    [
        ("[train]\nlearning_rate = 1\n", "unknown setting"),
        ("[train]\nepochs = 'three'\n", "epochs='three' is not a valid int"),
        ("[train]\ntruncation = 'middle'\n", "truncation must be one of"),
        ("[train\n", "not valid TOML"),
        ("[train]\nepochs = 2.5\n", "epochs=2.5"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, text, needle):
    p = tmp_path / "x.toml"
    p.write_text(text)
    with pytest.raises(BertnliError, match=needle) as e:
        load_config(p)
    assert "\n" not in str(e.value)


def test_flat_dict_is_mlflow_ready():
    flat = TrainConfig().to_flat_dict()
    assert (
        flat["limit_train"] == ""
        and flat["model"] == "minilm-l6"
        and all(not isinstance(v, (dict, list)) for v in flat.values())
    )


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_file_parses(path):
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    if path.stem.startswith("sweep"):
        sweep = load_sweep_config(path, {}, {}, [], TrackingConfig())
        assert {p.name for p in sweep.space} == {"model", "truncation", "lr", "epochs"} and sweep.trials == 20


def test_expected_experiments_exist():
    assert {p.stem for p in EXPERIMENTS} >= {
        "d2l_small",
        "bert_base_086",
        "truncation_ablation",
        "sweep",
        "sweep_cpu",
        "quick_cpu",
    }


def test_d2l_small_is_the_chapter_setting():
    """The chapter pads every batch to 128 in random order, in fp32, with Adam at a constant 1e-4."""
    cfg = load_config(Path(__file__).resolve().parents[1] / "experiments" / "d2l_small.toml")
    assert (cfg.model, cfg.bucket, cfg.amp, cfg.max_len, cfg.batch_size, cfg.epochs) == (
        "d2l-bert-small",
        False,
        False,
        128,
        512,
        5,
    )
    assert (cfg.optimizer, cfg.lr, cfg.schedule, cfg.grad_clip, cfg.weight_decay, cfg.truncation) == (
        "adam",
        1e-4,
        "constant",
        0.0,
        0.0,
        "longest_first",
    )


@pytest.mark.parametrize(
    "text, table",
    [
        ('[trian]\nmodel = "no-such-model"\n', "trian"),
        ("[sweeps]\ntrials = 2\n[sweeps.space]\nlr = {low = 10.0, high = 20.0}\n", "sweeps"),
        ("[train]\nepochs = 1\n[expected]\ntarget = 0.9\n", "expected"),
    ],
)
def test_a_misspelled_table_is_refused_in_one_line(tmp_path, text, table):
    """Seen: `[sweeps]` with trials = 2 and an impossible lr range ran 20 trials over the default range."""
    path = tmp_path / "x.toml"
    path.write_text(text)
    for load in (lambda: load_config(path), lambda: load_sweep_config(path, {}, {}, [], TrackingConfig())):
        with pytest.raises(BertnliError, match=rf"x.toml: unknown table \[{table}\]; known: .*train.*sweep"):
            load()


@pytest.mark.parametrize("name", ["../../x", "/abs/study", "a/../../b", "..", ".", "a/b", ""])
def test_a_study_name_is_a_name_not_a_path(name):
    """Seen: `--study-name ../../x` wrote trial folders outside --out, and the sweep later deleted folders there."""
    with pytest.raises(BertnliError, match="study name"):
        load_sweep_config(None, {}, {"study_name": name}, [], TrackingConfig())


def test_ordinary_study_names_stay_allowed():
    for name in ("sweep-cpu", "bertnli_sweep.v2", "MF9"):
        assert load_sweep_config(None, {}, {"study_name": name}, [], TrackingConfig()).study_name == name
