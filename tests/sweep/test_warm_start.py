"""Warm starts: an earlier study's complete trials become trials of the new one (counted by the sampler, never
trained), only where they were trained the same way unless loose, and each source once per study."""

import optuna
import pytest
from conftest import make_rows, write_jsonl_gz
from mlflow import MlflowClient
from optuna.trial import TrialState as S
from tiny_sweeps import run_sweep, sweep_in_process, write_toml

from bertnli.sweep.params import parse_param
from bertnli.sweep.storage import open_storage
from bertnli.sweep.warm_start import IMPORTED, distribution

SPACE = "lr = {low = 1e-4, high = 5e-3, log = true}\nepochs = [1]"


def _study(tmp_path, name):
    return optuna.load_study(study_name=name, storage=open_storage(str(tmp_path / "journal.log")))


def _sweep(tmp_path, toml, name, *extra):
    return run_sweep(tmp_path, toml, "--study-name", name, "--no-progress", *extra)


def _plans(tmp_path, toml, source, mode, **train):
    """The warm start's plan as `sweep` makes it before anything else, read from the real storage and store."""
    from bertnli.config import TrackingConfig
    from bertnli.sweep.space import load_sweep_config
    from bertnli.sweep.warm_start import plan_all

    tracking = TrackingConfig(f"sqlite:///{tmp_path / 'mlflow.db'}", None)
    overrides = {"warm_start": (source,), "warm_start_mode": mode, "storage": str(tmp_path / "journal.log")}
    return plan_all(load_sweep_config(toml, train, overrides, [], tracking))


@pytest.mark.slow(80)  # three sweeps
def test_a_warm_start_imports_what_was_trained_alike_once_and_trains_only_its_own_trials(
    tmp_path, tiny_snli, new_store
):
    new_store(tmp_path / "mlflow.db")
    toml = write_toml(tmp_path, tiny_snli, trials=2, space=SPACE)
    _sweep(tmp_path, toml, "cheap", "--limit-train", "64")  # the cheap study: 64 pairs
    source = f"cheap@{tmp_path / 'journal.log'}"

    # strict (the default): trials trained on 64 pairs say nothing of a study on all of them; loose takes them
    (strict,) = _plans(tmp_path, toml, source, "strict")
    assert strict.summary() == f"warm start from {source}: 0 trial(s) imported; skipped 2 (limit_train 64 vs unset)"
    (loose,) = _plans(tmp_path, toml, source, "loose")
    assert len(loose.trials) == 2 and not loose.skipped

    # the same settings: imported, counted by the sampler under this study's distributions, never trained;
    # the parent links the source; a rerun imports nothing again
    out = _sweep(tmp_path, toml, "alike", "--trials", "1", "--limit-train", "64", "--warm-start", source).stdout
    assert f"warm start from {source}: 2 trial(s) imported" in out
    again = _sweep(tmp_path, toml, "alike", "--trials", "1", "--limit-train", "64", "--warm-start", source).stdout
    assert "warm start" not in again
    trials = _study(tmp_path, "alike").get_trials()
    imported = [t for t in trials if IMPORTED in t.user_attrs]
    cheap = {t.number: t for t in _study(tmp_path, "cheap").get_trials()}
    assert len(imported) == 2 and all(t.state == S.COMPLETE for t in imported)
    for t in imported:
        was = cheap[int(t.user_attrs[IMPORTED].rsplit("#", 1)[1])]
        assert (t.value, t.params) == (was.value, was.params)
        assert t.distributions["lr"] == distribution(parse_param("lr", "1e-4:5e-3:log"))
    trained = [t for t in trials if IMPORTED not in t.user_attrs]
    assert len(trained) == 1 and trained[0].state == S.COMPLETE  # --trials 1 counts its own trials only
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("alike").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("bertnli.role") == "sweep-parent")
    assert parent.data.tags["bertnli.warm_start"] == source
    assert "warm_start.csv" in [a.path for a in c.list_artifacts(parent.info.run_id)]
    assert len([r for r in runs if r.data.tags.get("bertnli.role") == "sweep-trial"]) == 1  # none for imported trials

    # the report reads this study's own runs, and says the imported trials are not among them
    from click.testing import CliRunner

    from bertnli.cli import main

    args = ["report", "--study", "alike", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "report"), "--format", "csv"])
    assert r.exit_code == 0, r.output
    assert f"study alike was warm-started from {source}: the trials it imported were trained in" in r.output

    # a study on other data is refused in one line, before anything is made
    other = tmp_path / "other-data"
    other.mkdir()
    for split, seed in (("train", 7), ("dev", 8), ("test", 9)):
        write_jsonl_gz(other / f"snli_1.0_{split}.jsonl.gz", make_rows(240 if split == "train" else 80, seed))
    r = sweep_in_process(tmp_path, toml, "--study-name", "elsewhere", "--data", str(other), "--warm-start", source)
    assert r.exit_code == 2 and "its trials were trained on other data (train, dev digests differ" in r.output
    assert "elsewhere" not in optuna.get_all_study_names(open_storage(str(tmp_path / "journal.log")))


@pytest.mark.parametrize(
    "source, needle",
    [
        ("cheap", "--warm-start cheap: write NAME@STORAGE"),
        ("nosuch@{journal}", "no study 'nosuch' in"),
        ("mlflow:0123456789abcdef", "no run or experiment 0123456789abcdef in the MLflow store"),
        ("there@{journal}.typo", "no Optuna storage at {journal}.typo; check the path"),
        ("there@sqlite:///{journal}.db", "no Optuna storage at {journal}.db; check the path"),
    ],
)
def test_a_warm_start_source_not_found_is_one_line(tmp_path, tiny_snli, new_store, source, needle):
    new_store(tmp_path / "mlflow.db")
    journal = tmp_path / "journal.log"
    optuna.create_study(study_name="there", storage=open_storage(str(journal)))
    toml = write_toml(tmp_path, tiny_snli, trials=1, space=SPACE)
    r = sweep_in_process(tmp_path, toml, "--warm-start", source.format(journal=journal))
    needle = needle.format(journal=journal)
    assert r.exit_code == 2 and needle in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert optuna.get_all_study_names(open_storage(str(journal))) == ["there"]
    assert sorted(p.name for p in tmp_path.glob("journal.log*")) == ["journal.log"]  # a mistyped path made nothing


def test_a_value_outside_the_new_space_is_dropped_and_counted():
    from collections import Counter

    from bertnli.sweep.warm_start import Source, _as_new_trial

    space = {p.name: p for p in (parse_param("lr", "1e-4:1e-3:log"), parse_param("truncation", "ratio|longest_first"))}
    old = optuna.trial.create_trial(
        params={"lr": 3e-3, "truncation": "ratio", "epochs": 2},
        distributions={
            "lr": distribution(parse_param("lr", "1e-5:1e-2:log")),
            "truncation": distribution(parse_param("truncation", "ratio|longest_first")),
            "epochs": distribution(parse_param("epochs", "1:3")),
        },
        value=0.7,
    )
    dropped = Counter()
    new = _as_new_trial(old, space, Source("cheap", "j.log", "cheap@j.log"), dropped)
    assert new.params == {"truncation": "ratio"} and new.value == 0.7  # epochs is not searched here: not kept
    assert dropped == {"lr=0.003 outside lr=0.0001:0.001:log": 1}
    assert new.user_attrs[IMPORTED] == f"cheap@j.log#{old.number}"


def test_a_conditional_parameter_is_imported_only_where_its_condition_holds_here():
    """The source searched warmup with either schedule; here warmup exists only with the linear one."""
    from collections import Counter

    from bertnli.sweep.params import parse_space
    from bertnli.sweep.warm_start import Source, _as_new_trial

    space = {p.name: p for p in parse_space({"warmup": "0:0.2 if schedule=linear", "schedule": "linear|constant"})}
    flat = {"warmup": distribution(parse_param("warmup", "0:0.2")), "schedule": distribution(space["schedule"])}
    dropped = Counter()
    for schedule in ("constant", "linear"):
        old = optuna.trial.create_trial(params={"warmup": 0.1, "schedule": schedule}, distributions=flat, value=0.7)
        new = _as_new_trial(old, space, Source("cheap", "j.log", "cheap@j.log"), dropped)
        assert new.params == (
            {"schedule": "constant"} if schedule == "constant" else {"schedule": "linear", "warmup": 0.1}
        )
    assert dropped == {"warmup=0.1 where schedule=constant (only if schedule=linear here)": 1}


def test_a_database_password_is_never_recorded_in_mlflow_and_a_warm_start_gets_it_back(tmp_path, new_store, tiny_snli):
    """Seen in session 14: the parent run's `bertnli.storage` tag held the --storage URL with its password, and the
    sweep printed it; anyone who could read the MLflow store could read the database password."""
    from bertnli.config import TrackingConfig
    from bertnli.sweep.election import _create_parent
    from bertnli.sweep.space import load_sweep_config
    from bertnli.sweep.storage import with_password, without_password
    from bertnli.sweep.warm_start import parse_source

    url = "postgresql://ada:s3cret@127.0.0.1:5432/optuna"
    uri = new_store(tmp_path / "mlflow.db")
    cfg = load_sweep_config(
        None, {"data": str(tiny_snli)}, {"study_name": "s", "storage": url}, [], TrackingConfig(uri)
    )
    run_id = _create_parent(cfg, url)
    recorded = MlflowClient(uri).get_run(run_id).data.tags["bertnli.storage"]
    assert recorded == "postgresql://ada:***@127.0.0.1:5432/optuna" == without_password(url)
    (source,) = parse_source(f"mlflow:{run_id}", uri, (url,))  # this sweep's own --storage gives it back
    assert (source.study, source.storage) == ("s", url)
    assert with_password(recorded) == "postgresql://ada@127.0.0.1:5432/optuna"  # else PGPASSWORD / ~/.pgpass
    assert "s3cret" not in source.key
