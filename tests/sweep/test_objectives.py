"""Studies over accuracy and cost: several objectives, constraints, the front kept, shown and registered."""

import io

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from pareto_reference import brute_force
from tiny_runs import invoke
from tiny_sweeps import run_sweep, state, sweep_in_process, write_toml

from bertnli.analysis.pareto import Objective, parse_constraint

SPACE = 'lr = {low = 1e-4, high = 5e-3, log = true}\nmodel = ["tiny-d2l-random", "tiny-random"]'
ARGS = ("--epochs", "2", "--limit-train", "96", "--objective", "dev_acc,params")


def _recorded(study) -> list[dict]:
    """What the trials told Optuna (values) and recorded (user attributes): the front must be computed from these."""
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    return [
        {"number": t.number, "dev_acc": t.values[0], "params": t.values[1], **{"p": t.user_attrs["params"]}}
        for t in done
    ]


def _artifact(c, run_id, name) -> str:
    return open(c.download_artifacts(run_id, name)).read()


@pytest.mark.slow
@pytest.mark.parametrize("limit", [None, "params<=500000"])
def test_a_study_over_accuracy_and_size_keeps_registers_and_shows_its_front(tmp_path, tiny_snli, limit):
    toml = write_toml(tmp_path, tiny_snli, trials=4, space=SPACE)
    extra = ("--constraint", limit) if limit else ()
    r = run_sweep(tmp_path, toml, *ARGS, *extra, "--register", "nli")
    study, (parent,), children = state(tmp_path)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert {t.state.name for t in study.get_trials()} == {"COMPLETE"}  # no pruning with several objectives
    assert all(not t.intermediate_values for t in study.get_trials())
    assert "NopPruner(); several objectives" in parent.data.tags["bertnli.pruner"]
    assert all(
        len(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(ch.info.run_id, "dev_acc")) == 2
        for ch in children
    )  # every trial trained its 2 epochs
    recorded = _recorded(study)
    assert all(row["params"] == row["p"] for row in recorded)
    constraints = (parse_constraint(limit),) if limit else ()
    objectives = (Objective("dev_acc", "max"), Objective("params", "min"))
    expected = brute_force(recorded, objectives, constraints)
    assert expected, "some trial holds the constraint"

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    table = pd.read_csv(io.StringIO(_artifact(c, parent.info.run_id, "pareto.csv")))
    assert set(table.loc[table["pareto"], "number"]) == expected
    if limit:
        big = {t.number for t in study.get_trials() if t.params["model"] == "tiny-random"}
        assert big and set(table.loc[~table["feasible"], "number"]) == big  # recorded, never on the front
        assert not big & expected
        for t in study.get_trials():  # where Optuna's samplers read them: TPE ranks violators below the rest
            assert t.constraints == {limit: t.user_attrs["params"] - 500000}
            assert (t.constraints[limit] > 0) == (t.number in big)
    assert c.download_artifacts(parent.info.run_id, "pareto.png").endswith("pareto.png")
    tags = parent.data.tags
    front = [int(n) for n in tags["bertnli.pareto_front"].split(", ")]
    assert set(front) == expected
    by_accuracy = sorted(expected, key=lambda n: (-study.trials[n].values[0], n))
    assert front == by_accuracy
    assert tags["best.trial"] == str(front[0])  # the champion: the front's most accurate, ties included
    feasible = [row for row in recorded if all(k.holds(row[k.name]) for k in constraints)]
    assert int(tags["best.dev_acc.trial"]) == front[0]
    assert float(tags["best.params.value"]) == min(row["params"] for row in feasible)

    # the registry: every front point a version, pareto-1.. in order of accuracy, champion on pareto-1
    for k, n in enumerate(front, start=1):
        mv = c.get_model_version_by_alias("nli", f"pareto-{k}")
        assert mv.run_id == study.trials[n].user_attrs["mlflow_run_id"], (k, n)
        assert (tmp_path / "out" / "s" / f"trial-{n:03d}" / "best").is_dir()  # its weights are kept
    assert (
        c.get_model_version_by_alias("nli", "champion").version
        == c.get_model_version_by_alias("nli", "pareto-1").version
    )
    assert "models:/nli@champion, models:/nli@pareto-1" in r.stdout
    assert "complete trials on dev_acc:max,params:min (pareto: on the front" in r.stdout
    # the same command again (a resume): nothing registered twice
    versions = {mv.version for mv in c.search_model_versions("name = 'nli'")}
    again = run_sweep(tmp_path, toml, *ARGS, *extra, "--register", "nli")
    assert "complete trials on dev_acc:max,params:min" in again.stdout
    assert {mv.version for mv in c.search_model_versions("name = 'nli'")} == versions
    # registered with a shorter front: no new version, no alias past the front's end
    from bertnli.tracking.models import register

    run_ids = [study.trials[n].user_attrs["mlflow_run_id"] for n in front]
    assert register(c, run_ids[:1], "nli", ranked=True) == [
        str(c.get_model_version_by_alias("nli", "pareto-1").version)
    ]
    assert {a for a in c.get_registered_model("nli").aliases if a.startswith("pareto-")} == {"pareto-1"}
    assert len(register(c, run_ids, "nli", ranked=True)) == len(front)
    assert {mv.version for mv in c.search_model_versions("name = 'nli'")} == versions

    # report --study shows the front, from the runs alone; compare takes any two trials and weighs their costs
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    shown = invoke(["report", "--study", "s", "--tracking-uri", uri, "--out", str(tmp_path / "rep")])
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "Pareto front of study s (dev_acc:max,params:min" in shown.stdout
    reported = pd.read_csv(tmp_path / "rep" / "pareto_front.csv")
    assert set(reported.loc[reported["pareto"], "trial"].astype(int)) == expected
    assert (tmp_path / "rep" / "pareto_s.png").is_file()
    small, big = (
        next(t for t in study.get_trials() if t.params["model"] == m).user_attrs["mlflow_run_id"]
        for m in ("tiny-d2l-random", "tiny-random")
    )
    compared = invoke(["compare", small, big, "--tracking-uri", uri, "--boot", "200"])
    assert compared.returncode == 0, compared.stderr[-2000:]
    assert f"params: {small[:8]} " in compared.stdout and f"({small[:8]} " in compared.stdout


def test_a_study_resumed_with_other_objectives_or_constraints_is_one_line(tmp_path, tiny_snli):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    toml = write_toml(tmp_path, tiny_snli, trials=2)
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    had = "dev_acc:max,params:min; constraints params<=5000"
    optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"]).set_user_attr(
        "bertnli.objectives", had
    )
    for args in (
        ["dev_acc"],
        ["dev_acc,latency_ms"],
        ["dev_acc,params"],
        ["dev_acc,params", "--constraint", "params<=9"],
    ):
        r = sweep_in_process(tmp_path, toml, "--objective", *args)
        assert r.exit_code == 2, r.output
        assert f"study s optimises {had}, not" in r.stderr and "--objective and --constraint" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--objective", "dev_acc,params", "--fidelity", "data"), "--objective with costs and --fidelity data"),
        (("--objective", "dev_acc,params", "--warm-start", "o@x.log"), "--warm-start into a study with several"),
        (("--constraint", "params<=9", "--fidelity", "data"), "--constraint with --fidelity data"),
    ],
)
def test_what_a_study_over_costs_cannot_do_is_one_line(tmp_path, tiny_snli, extra, message):
    toml = write_toml(tmp_path, tiny_snli, trials=4)
    r = sweep_in_process(tmp_path, toml, *extra)
    assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
