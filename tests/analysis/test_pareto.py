"""The Pareto front: the trials that no other feasible trial beats on every objective."""

import itertools

import numpy as np
import pandas as pd
import pytest
from pareto_reference import brute_force

from bertnli import BadInput
from bertnli.analysis.pareto import (
    Constraint,
    Objective,
    cost_lines,
    front_table,
    parse_constraint,
    parse_objectives,
)

OBJECTIVES = (Objective("dev_acc", "max"), Objective("latency_ms_b1", "min"), Objective("params", "min"))


@pytest.mark.parametrize("seed", range(20))
def test_the_front_equals_a_brute_force_front_and_leaves_out_constraint_violators(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    rows = [
        {
            "number": i,
            "dev_acc": float(rng.choice([0.5, 0.6, 0.7, 0.8])),  # ties, as real accuracies on a small dev split have
            "latency_ms_b1": float(rng.choice([1.0, 2.0, 3.0])),
            "params": float(rng.integers(1, 5)) * 1e6,
            "peak_mem_mib": float(rng.uniform(500, 3000)),
        }
        for i in range(n)
    ]
    constraints = (Constraint("peak_mem_mib", "<=", 2000.0),) if seed % 2 else ()
    table = front_table(pd.DataFrame(rows), OBJECTIVES, constraints)
    assert set(table.loc[table["pareto"], "number"]) == brute_force(rows, OBJECTIVES, constraints)
    assert not (table["pareto"] & ~table["feasible"]).any()
    ranked = table[table["pareto"]].sort_values("pareto_rank")
    assert list(ranked["pareto_rank"]) == list(range(1, len(ranked) + 1))
    assert ranked["dev_acc"].is_monotonic_decreasing  # pareto-1 is the most accurate point


def test_an_unmeasured_value_keeps_a_trial_off_the_front():
    table = pd.DataFrame(
        [{"number": 0, "dev_acc": 0.9, "params": np.nan}, {"number": 1, "dev_acc": 0.8, "params": 10.0}]
    )
    out = front_table(
        table, (Objective("dev_acc", "max"), Objective("params", "min")), (parse_constraint("params<=20"),)
    )
    assert list(out["pareto"]) == [False, True] and list(out["feasible"]) == [False, True]


def test_objectives_put_accuracy_first_and_take_aliases_and_default_directions():
    assert parse_objectives("latency_ms,dev_acc") == (Objective("dev_acc", "max"), Objective("latency_ms_b1", "min"))
    assert parse_objectives("params:min") == (Objective("dev_acc", "max"), Objective("params", "min"))
    assert parse_objectives("dev_acc") == (Objective("dev_acc", "max"),)
    assert parse_constraint("peak_mem_mib <= 8000") == Constraint("peak_mem_mib", "<=", 8000.0)
    assert parse_constraint("dev_acc>=0.7").holds(0.71) and not parse_constraint("dev_acc>=0.7").holds(0.69)


@pytest.mark.parametrize(
    "text, message",
    [
        ("dev_acc,beauty", "'beauty' is not measured; choose from dev_acc, train_seconds"),
        ("dev_acc:min", "dev_acc is maximised"),
        ("params:smallest", "direction 'smallest'; write NAME:max or NAME:min"),
        ("params,params:min", "params is given twice"),
        ("test_acc", "'test_acc' is not measured"),  # never tuned on test
    ],
)
def test_a_bad_objective_is_one_line_naming_the_option(text, message):
    with pytest.raises(BadInput, match=r"bad --objective") as e:
        parse_objectives(text)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["peak_mem_mib<8000", "peak_mem_mib<=lots", "gpu_watts<=300", "<=3"])
def test_a_bad_constraint_is_one_line_naming_the_option(text):
    with pytest.raises(BadInput, match=r"^bad --constraint"):
        parse_constraint(text)


def test_every_pair_of_a_front_trades_accuracy_for_cost():
    rows = [
        {"number": i, "dev_acc": a, "params": p} for i, (a, p) in enumerate([(0.8, 3), (0.7, 1), (0.75, 2), (0.7, 2)])
    ]
    objectives = (Objective("dev_acc", "max"), Objective("params", "min"))
    table = front_table(pd.DataFrame(rows), objectives)
    on = table[table["pareto"]]
    assert list(on["number"]) == [0, 1, 2]
    for (_, a), (_, b) in itertools.combinations(on.iterrows(), 2):
        assert (a["dev_acc"] > b["dev_acc"]) == (a["params"] > b["params"])


@pytest.mark.parametrize("a_cheaper", [True, False])
def test_compare_says_what_accuracy_the_cheaper_run_gives_up_with_its_interval(tmp_path, new_store, a_cheaper):
    from mlflow import MlflowClient

    uri = new_store(tmp_path / "mlflow.db")
    c = MlflowClient(uri)
    exp = c.create_experiment("e")
    small = {"params": 1e6, "latency_ms_b1": 2.0, "peak_mem_mib": 900.0}
    large = {"params": 4e6, "latency_ms_b1": 6.0, "peak_mem_mib": 1800.0}
    ids = []
    for costs in (small, large) if a_cheaper else (large, small):
        run = c.create_run(exp)
        for k, v in costs.items():
            c.log_metric(run.info.run_id, k, v)
        ids.append(run.info.run_id)
    # A - B on dev: the larger run is 3 pp more accurate, CI [1, 5] pp
    delta, low, high = (-0.03, -0.05, -0.01) if a_cheaper else (0.03, 0.01, 0.05)
    table = pd.DataFrame([{"split": "dev", "delta": delta, "ci_low": low, "ci_high": high}])
    lines = cost_lines([ids[0]], [ids[1]], table, "A", "B", uri)
    cheap = "A" if a_cheaper else "B"
    assert f"params: A {1e6 if a_cheaper else 4e6:,.4g} vs B" in lines[0] and f"({cheap} 4.00x cheaper)" in lines[0]
    assert lines[-1].startswith(f"{cheap} costs no more on any cost recorded and gives up 3.00 pp of dev accuracy")
    assert "(95 % CI [+1.00, +5.00] pp" in lines[-1]


def test_compare_calls_mixed_costs_a_trade_off(tmp_path, new_store):
    from mlflow import MlflowClient

    uri = new_store(tmp_path / "mlflow.db")
    c = MlflowClient(uri)
    exp = c.create_experiment("e")
    ids = []
    for costs in ({"params": 1e6, "latency_ms_b1": 9.0}, {"params": 4e6, "latency_ms_b1": 3.0}):
        run = c.create_run(exp)
        for k, v in costs.items():
            c.log_metric(run.info.run_id, k, v)
        ids.append(run.info.run_id)
    table = pd.DataFrame([{"split": "dev", "delta": 0.0, "ci_low": -0.01, "ci_high": 0.01}])
    assert cost_lines([ids[0]], [ids[1]], table, "A", "B", uri)[-1] == (
        "neither side is cheaper on every cost recorded: a trade-off, not a dominance"
    )


def test_compare_says_when_the_cheaper_run_is_more_accurate_too(tmp_path, new_store):
    from mlflow import MlflowClient

    uri = new_store(tmp_path / "mlflow.db")
    c = MlflowClient(uri)
    exp = c.create_experiment("e")
    ids = []
    for params in (1e6, 4e6):
        run = c.create_run(exp)
        c.log_metric(run.info.run_id, "params", params)
        ids.append(run.info.run_id)
    table = pd.DataFrame([{"split": "dev", "delta": 0.02, "ci_low": 0.01, "ci_high": 0.03}])  # A, the smaller, wins
    assert cost_lines([ids[0]], [ids[1]], table, "A", "B", uri)[-1] == (
        "A costs no more on any cost recorded and is 2.00 pp more accurate on dev too "
        "(what it gives up: 95 % CI [-3.00, -1.00] pp)"
    )
