"""Known configurations (`--enqueue`, `[[sweep.enqueue]]`): typed as the space has them, run first, and queued
once per study however often the sweep is killed and resumed."""

import os
import signal
import subprocess
import time

import pytest
from conftest import ROOT, run_env
from optuna.trial import TrialState as S
from tiny_sweeps import ran, run_sweep, state, sweep_cmd, sweep_in_process, wait_until_no_trial_runs, write_toml

from bertnli import BadInput
from bertnli.sweep.params import known_configuration, parse_param

SPACE = (
    parse_param("lr", "1e-4:5e-3:log"),
    parse_param("epochs", "1:2"),
    parse_param("model", "tiny-d2l-random|tiny-random"),
    parse_param("bucket", "true|false"),
)


def test_a_known_configuration_is_typed_as_the_space_has_it():
    assert known_configuration("lr=2e-3, epochs=2,model=tiny-random,bucket=false", SPACE) == {
        "lr": 2e-3,
        "epochs": 2,
        "model": "tiny-random",
        "bucket": False,
    }
    assert known_configuration({"lr": 0.001, "bucket": True}, SPACE) == {"lr": 0.001, "bucket": True}  # TOML
    assert known_configuration("epochs=2.0", SPACE) == {"epochs": 2}  # was refused: "not a number"
    assert type(known_configuration({"epochs": 2.0}, SPACE)["epochs"]) is int


@pytest.mark.parametrize(
    "item, needle",
    [
        ("warmup=3", "--enqueue warmup=3: warmup is not in the sweep space (lr, epochs, model, bucket)"),
        ("lr=1", "lr=1 is outside the space lr=0.0001:0.005:log"),
        ("model=bert-huge", "model=bert-huge is not one of model=tiny-d2l-random|tiny-random"),
        ("epochs=two", "epochs=two is not a number"),
        ("epochs=1.5", "epochs=1.5 is not a whole number (epochs=1:2)"),
        ({"epochs": 1.5}, "epochs=1.5 is not a whole number (epochs=1:2)"),  # TOML: was cut to 1
        ("lr=nan", "lr=nan is not a number"),
        ("lr", "write NAME=VALUE pairs separated by commas"),
    ],
)
def test_a_bad_known_configuration_is_one_line_naming_the_option(item, needle):
    with pytest.raises(BadInput, match=needle.replace("|", r"\|").replace("(", r"\(").replace(")", r"\)")):
        known_configuration(item, SPACE)


def test_enqueue_on_the_command_line_is_checked_before_anything_is_made(tmp_path, tiny_snli):
    toml = write_toml(tmp_path, tiny_snli, trials=2)
    r = sweep_in_process(tmp_path, toml, "--enqueue", "lr=9")
    assert r.exit_code == 2 and "lr=9 is outside the space" in r.output and len(r.output.strip().splitlines()) == 1
    r = sweep_in_process(tmp_path, toml, "--enqueue", "lr=1e-3", "--enqueue", "lr=2e-3", "--enqueue", "lr=3e-3")
    assert r.exit_code == 2 and "3 configurations to enqueue but --trials 2" in r.output
    r = sweep_in_process(tmp_path, toml, "--enqueue", "lr=1e-3", "--sampler", "random")
    assert r.exit_code == 2 and "--enqueue with --sampler random: chosen trials are no random draws" in r.output
    assert not (tmp_path / "journal.log").exists()


@pytest.mark.slow(60)  # starts a sweep twice
def test_known_configurations_run_first_and_once_across_a_kill_and_a_resume(tmp_path, tiny_snli, new_store):
    new_store(tmp_path / "mlflow.db")
    space = 'lr = {low = 1e-4, high = 5e-3, log = true}\nepochs = [1, 2]\ntruncation = ["longest_first", "ratio"]'
    extra = '[[sweep.enqueue]]\nlr = 0.002\nepochs = 2\ntruncation = "ratio"\n'
    toml = write_toml(tmp_path, tiny_snli, trials=4, space=space, extra="grace_s = 3600")
    text = toml.read_text()  # the array of tables goes after the [sweep] keys, before [sweep.space]
    toml.write_text(text.replace("\n\n[sweep.space]", f"\n{extra}\n[sweep.space]"))
    known = ("--enqueue", "lr=0.003,epochs=1")  # the sampler picks its truncation
    proc = subprocess.Popen(
        sweep_cmd(tmp_path, toml, *known), cwd=ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 300
    while not (tmp_path / "out" / "s" / "trial-001" / "mlflow_run.json").is_file():  # the second known one runs
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_until_no_trial_runs(tmp_path)
    run_sweep(tmp_path, toml, *known)  # the resume queues neither known configuration again
    st, _, _ = state(tmp_path)
    trials = ran(st.get_trials())
    assert sum(t.state in (S.COMPLETE, S.PRUNED) for t in trials) == 4
    first, second = st.get_trials()[:2]
    assert first.params == {"lr": 0.002, "epochs": 2, "truncation": "ratio"}
    assert (second.params["lr"], second.params["epochs"]) == (0.003, 1)
    for params in ({"lr": 0.002, "epochs": 2}, {"lr": 0.003, "epochs": 1}):  # once each, plus the retry of a kill
        tries = [t for t in trials if {k: t.params.get(k) for k in params} == params]
        assert sum(t.state in (S.COMPLETE, S.PRUNED) for t in tries) == 1, [(t.number, t.state) for t in tries]
    assert not any(t.state == S.WAITING for t in st.get_trials())


@pytest.mark.slow  # runs sweeps
def test_a_known_configuration_given_to_a_finished_study_is_not_left_waiting(tmp_path, tiny_snli, new_store):
    """Before: it was queued, the sweep ended at once (N trials done), and it waited in the study unrun, to run
    unasked in a later sweep. Now the sweep says so and queues nothing; with room (--trials N+1) it runs."""
    new_store(tmp_path / "mlflow.db")
    toml = write_toml(tmp_path, tiny_snli, trials=1, space="lr = {low = 1e-3, high = 3e-3}\nepochs = [1]")
    run_sweep(tmp_path, toml)
    r = run_sweep(tmp_path, toml, "--enqueue", "lr=0.002")
    assert "--enqueue: the study is complete (1/1 trials); 1 configuration not queued (raise --trials to run it)" in (
        r.stdout
    )
    st, _, _ = state(tmp_path)
    assert [t.state for t in st.get_trials()] == [S.COMPLETE]
    run_sweep(tmp_path, toml, "--enqueue", "lr=0.002", "--trials", "2")
    st, _, _ = state(tmp_path)
    assert [(t.state, t.params["lr"]) for t in st.get_trials()][1] == (S.COMPLETE, 0.002)
