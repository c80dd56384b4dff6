"""Multi-fidelity sweeps (sweep --fidelity data): the plan that promotes, the guarantees under kills, MLflow records."""

import os
import signal
import subprocess
import time

import optuna
import pytest
from conftest import ROOT, run_env
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState as S
from optuna.trial import create_trial
from tiny_sweeps import run_sweep, state, sweep_cmd, sweep_in_process, write_toml

from bertnli.sweep.halving import Rungs as Schedule
from bertnli.sweep.halving import best_trial, config_key, excess, plan, rung_of

SCHED = Schedule((1 / 9, 1 / 3, 1.0), (9, 3, 1))
DIST = {"lr": FloatDistribution(1e-5, 1e-2, log=True), "rung": IntDistribution(0, 2)}


def study_with(rows):
    """An in-memory study holding trials (lr, rung, state, value)."""
    st = optuna.create_study(direction="maximize")
    for lr, rung, state_, value in rows:
        st.add_trial(
            create_trial(
                state=state_,
                value=value if state_ == S.COMPLETE else None,
                params={"lr": lr, "rung": rung},
                distributions=DIST,
            )
        )
    return st


def test_promotions_follow_eta():
    lrs = [1e-4 * (i + 1) for i in range(9)]
    scores = [0.50, 0.61, 0.55, 0.70, 0.40, 0.66, 0.52, 0.58, 0.45]
    st = study_with([(lr, 0, S.COMPLETE, v) for lr, v in zip(lrs, scores)])
    p = plan(st.get_trials(), SCHED, max_retries=2)
    assert p.action == "ask" and sorted(x["lr"] for x in p.enqueue) == sorted([lrs[3], lrs[5], lrs[1]])  # best 9/3
    assert all(x["rung"] == 1 for x in p.enqueue)
    rung1 = {lrs[3]: 0.72, lrs[5]: 0.75, lrs[1]: 0.64}
    for lr, v in rung1.items():
        st.add_trial(create_trial(state=S.COMPLETE, value=v, params={"lr": lr, "rung": 1}, distributions=DIST))
    p = plan(st.get_trials(), SCHED, max_retries=2)
    assert [x["lr"] for x in p.enqueue] == [lrs[5]] and p.enqueue[0]["rung"] == 2  # best 3/3, by its rung-1 score
    st.add_trial(create_trial(state=S.COMPLETE, value=0.8, params={"lr": lrs[5], "rung": 2}, distributions=DIST))
    assert plan(st.get_trials(), SCHED, max_retries=2).action == "done"
    assert best_trial(st.get_trials(), SCHED).params == {"lr": lrs[5], "rung": 2}  # the winner is chosen at full data


ASYNC = Schedule((1 / 9, 1 / 3, 1.0), (9, 3, 1), asynchronous=True, eta=3)


def test_async_promotes_the_best_third_of_what_has_finished_without_waiting_for_the_rung():
    lrs = [1e-4 * (i + 1) for i in range(9)]
    rows = [(lrs[0], 0, S.COMPLETE, 0.60), (lrs[1], 0, S.COMPLETE, 0.70), (lrs[2], 0, S.RUNNING, None)]
    assert plan(study_with(rows[:2]).get_trials(), ASYNC, 2).action == "ask"  # 2 finished: none yet; rung 0 grows
    rows += [(lrs[3], 0, S.COMPLETE, 0.65)]
    p = plan(study_with(rows).get_trials(), ASYNC, 2)  # 3 finished, one running: the best of the 3 goes up now
    assert [(x["lr"], x["rung"]) for x in p.enqueue] == [(lrs[1], 1)]
    assert (
        plan(study_with(rows).get_trials(), SCHED, 2).action == "ask"
        and not plan(  # sync: rung 0 first
            study_with(rows).get_trials(), SCHED, 2
        ).enqueue
    )
    rows += [(lrs[1], 1, S.RUNNING, None)] + [(lr, 0, S.COMPLETE, 0.1) for lr in lrs[4:7]]  # 6 finished at rung 0
    p = plan(study_with(rows).get_trials(), ASYNC, 2)
    assert [(x["lr"], x["rung"]) for x in p.enqueue] == [(lrs[3], 1)]  # the second best; the first is up already
    rows += [(lrs[3], 1, S.COMPLETE, 0.9)] + [(lr, 0, S.RUNNING, None) for lr in lrs[7:]]
    p = plan(study_with(rows).get_trials(), ASYNC, 2)
    assert p.action == "wait"  # rung 0 is full and its best 6 // 3 are up: nothing can start
    rows = [r for r in rows if r[0] not in (lrs[2], *lrs[7:])] + [(lr, 0, S.COMPLETE, 0.2) for lr in (lrs[2], *lrs[7:])]
    rows = [(lr, k, S.COMPLETE if lr == lrs[1] else st_, 0.8 if lr == lrs[1] else v) for lr, k, st_, v in rows]
    p = plan(study_with(rows).get_trials(), ASYNC, 2)  # rung 0 ended: rung 1 is filled with the best not yet up
    assert [(x["lr"], x["rung"]) for x in p.enqueue] == [(lrs[0], 1)]
    t = study_with(rows + [(lrs[0], 1, S.RUNNING, None), (lrs[2], 1, S.RUNNING, None)]).get_trials()
    assert excess(t, len(t) - 1, ASYNC, 2)  # a fourth at rung 1 (racing workers) steps aside
    assert not excess(t[:-1], len(t) - 2, ASYNC, 2)


def test_async_a_queued_promotion_that_later_results_outrank_still_runs_and_the_rung_above_fills():
    lrs = [1e-4 * (i + 1) for i in range(9)]
    rows = [(lr, 0, S.COMPLETE, 0.5 + i / 100) for i, lr in enumerate(lrs)]  # rung 0 ended; lrs[0] is the worst
    rows += [(lrs[8], 1, S.COMPLETE, 0.7), (lrs[7], 1, S.COMPLETE, 0.6), (lrs[0], 1, S.WAITING, None)]
    p = plan(study_with(rows).get_trials(), ASYNC, 2)  # promoted early, queued, now outranked: it still runs
    assert p.action == "ask" and not p.enqueue and not p.retries
    rows[-1] = (lrs[0], 1, S.COMPLETE, 0.65)
    p = plan(study_with(rows).get_trials(), ASYNC, 2)
    assert [(x["lr"], x["rung"]) for x in p.enqueue] == [(lrs[8], 2)]  # rung 1 ended: its best goes up


@pytest.mark.parametrize("schedule", [SCHED, ASYNC], ids=["sync", "async"])
def test_out_of_memory_beside_others_above_rung_0_is_resumed_not_counted(schedule):
    lrs = [1e-4 * (i + 1) for i in range(9)]
    st = study_with([(lr, 0, S.COMPLETE, 0.5 + i / 100) for i, lr in enumerate(lrs)])
    for lr in lrs[7:]:
        st.add_trial(create_trial(state=S.COMPLETE, value=0.7, params={"lr": lr, "rung": 1}, distributions=DIST))
    oom = create_trial(state=S.FAIL, params={"lr": lrs[6], "rung": 1}, distributions=DIST)
    oom.user_attrs["oom_beside_others"] = True
    st.add_trial(oom)
    p = plan(st.get_trials(), schedule, max_retries=0)  # no retries allowed: yet the out-of-memory try is resumed
    assert p.retries == [len(st.trials) - 1] and not p.enqueue


def test_a_rung_waits_for_every_member_and_queued_promotions_are_not_queued_twice():
    rows = [(1e-4 * (i + 1), 0, S.COMPLETE, 0.5 + i / 100) for i in range(8)] + [(9e-3, 0, S.RUNNING, None)]
    st = study_with(rows)
    assert plan(st.get_trials(), SCHED, 2).action == "wait"  # synchronous: promotion needs the whole rung
    st = study_with(rows[:8] + [(9e-3, 0, S.COMPLETE, 0.1)])
    first = plan(st.get_trials(), SCHED, 2)
    for params in first.enqueue:
        st.enqueue_trial(params)
    again = plan(st.get_trials(), SCHED, 2)
    assert again.action == "ask" and again.enqueue == []  # queued already: ask pops them


def test_a_duplicate_promotion_steps_aside_and_a_full_rung_takes_no_more():
    rows = [(1e-4 * (i + 1), 0, S.COMPLETE, 0.5 + i / 100) for i in range(9)]
    st = study_with(rows + [(1e-4 * 9, 1, S.RUNNING, None), (1e-4 * 9, 1, S.RUNNING, None)])
    trials = st.get_trials()
    # Two copies of one configuration at rung 1 (two processes queued the same promotion): each, checking
    # after the other exists, steps aside; the plan then queues the configuration once more.
    assert excess(trials, 9, SCHED, 2) and excess(trials, 10, SCHED, 2)
    st = study_with(rows + [(1e-4 * 9, 1, S.COMPLETE, 0.8), (1e-4 * 9, 1, S.RUNNING, None)])
    assert excess(st.get_trials(), 10, SCHED, 2)  # a configuration that finished its rung is not trained there again
    st = study_with(rows + [(2e-3, 0, S.RUNNING, None)])
    assert excess(st.get_trials(), 9, SCHED, 2)  # a tenth configuration at rung 0


def test_only_what_the_plan_chose_runs_at_a_rung_and_an_ended_rung_takes_nothing():
    lr = [1e-4 * (i + 1) for i in range(9)]
    rows = [(lr[i], 0, S.COMPLETE, 0.5 + i / 100) for i in range(9)]
    st = study_with(rows + [(lr[0], 1, S.RUNNING, None)])  # the worst of rung 0 at rung 1 (a stray queued trial)
    assert excess(st.get_trials(), 9, SCHED, 2)
    st = study_with(
        rows
        + [
            (lr[8], 1, S.COMPLETE, 0.7),
            (lr[7], 1, S.COMPLETE, 0.6),
            (lr[6], 1, S.COMPLETE, 0.65),
            (lr[8], 2, S.RUNNING, None),
            (2e-3, 0, S.RUNNING, None),
        ]
    )
    assert excess(st.get_trials(), 13, SCHED, 2)  # rung 0 ended when rung 1 began: a leftover retry does not train


def test_a_promoted_configuration_that_fails_is_resumed_by_the_plan_then_replaced_when_it_fails_every_try():
    from bertnli.config import TrainConfig
    from bertnli.sweep.reaping import retry
    from bertnli.sweep.space import SweepConfig

    lr = [1e-4 * (i + 1) for i in range(9)]
    rows = [(lr[i], 0, S.COMPLETE, 0.5 + i / 100) for i in range(9)]
    st = study_with(rows + [(lr[8], 1, S.COMPLETE, 0.7), (lr[7], 1, S.COMPLETE, 0.6), (lr[6], 1, S.FAIL, None)])
    cfg = SweepConfig(base=TrainConfig(), space=(), max_retries=1)
    retry(st, st.get_trials()[11], cfg)  # what a worker does after a failure: above rung 0 it leaves it to the plan
    assert not [t for t in st.get_trials() if t.state == S.WAITING]
    p = plan(st.get_trials(), SCHED, max_retries=1)
    assert p.enqueue == [] and p.retries == [11]  # queued again as a retry of the failed attempt (it resumes)
    retry(st, st.get_trials()[11], cfg, always=True, by_plan=True)
    waiting = [t for t in st.get_trials() if t.state == S.WAITING]
    assert (
        len(waiting) == 1
        and waiting[0].params == {"lr": lr[6], "rung": 1}
        and waiting[0].system_attrs["failed_trial"] == 11
    )
    assert plan(st.get_trials(), SCHED, max_retries=1).enqueue == []  # queued once, not twice
    st = study_with(
        rows
        + [(lr[8], 1, S.COMPLETE, 0.7), (lr[7], 1, S.COMPLETE, 0.6), (lr[6], 1, S.FAIL, None), (lr[6], 1, S.FAIL, None)]
    )
    p = plan(st.get_trials(), SCHED, max_retries=1)
    assert [x["lr"] for x in p.enqueue] == [lr[5]]  # lr[6] failed every try: the next best of rung 0 takes its place


def test_per_parameter_plots_read_the_first_rung_without_the_rung_as_a_hyperparameter():
    """Higher rungs score higher and hold only promoted configurations: plotted together with rung 0,
    the budget would pass for the hyperparameters' effect (and the rung would top the importances)."""
    from bertnli.sweep.parent import first_rung, searched_params

    study = optuna.create_study(direction="maximize")
    dists = {
        "lr": FloatDistribution(1e-5, 1e-3, log=True),
        "epochs": IntDistribution(1, 3),
        "rung": IntDistribution(0, 3),
    }
    for i in range(6):
        study.add_trial(
            create_trial(
                params={"lr": 1e-4 * (i + 1), "epochs": 1 + i % 3, "rung": i % 2},
                distributions=dists,
                value=0.5 + 0.1 * (i % 2),
            )
        )
    study.add_trial(
        create_trial(
            params={"lr": 1e-4, "dropout": 0.1, "rung": 0},
            state=S.FAIL,
            distributions={"lr": dists["lr"], "rung": dists["rung"], "dropout": FloatDistribution(0, 0.5)},
        )
    )
    view = first_rung(study)
    assert [t.params["rung"] for t in view.trials] == [0, 0, 0] and {t.value for t in view.trials} == {0.5}
    assert searched_params(view) == ["epochs", "lr"]  # not the rung, not a FAIL trial's own param
    plain = optuna.create_study(direction="maximize")
    plain.add_trial(create_trial(params={"lr": 1e-4}, distributions={"lr": dists["lr"]}, value=0.5))
    assert first_rung(plain) is plain


def test_a_study_keeps_its_fidelity_settings(tmp_path, tiny_snli):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    toml = write_toml(tmp_path, tiny_snli, trials=4, space=SPACE, extra=MF)
    st = optuna.create_study(
        study_name="s", storage=JournalStorage(JournalFileBackend(str(tmp_path / "journal.log"))), direction="maximize"
    )
    st.set_user_attr("bertnli.fidelity", {"fidelity": "data", "eta": 2, "min_fraction": 0.25, "trials": 4})
    r = sweep_in_process(tmp_path, toml, "--trials", "8")
    assert r.exit_code == 2 and "was created with fidelity=data eta=2 min_fraction=0.25 trials=4, not" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_fidelity_settings_are_one_line(tmp_path, tiny_snli):
    toml = write_toml(tmp_path, tiny_snli, trials=4)
    r = sweep_in_process(tmp_path, toml, "--fidelity", "data", "--eta", "3", "--min-fraction", "0.5")
    assert r.exit_code == 2 and "min_fraction <= 1/eta" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    for args, says in (
        (["--eta", "3"], "add --fidelity data"),
        (["--fidelity", "data", "--trials", "2"], "need at least 9 configurations"),
    ):
        r = sweep_in_process(tmp_path, toml, *args)
        assert r.exit_code == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


MF = 'fidelity = "data"\neta = 2\nmin_fraction = 0.25'  # rungs 1/4, 1/2, 1: 4 -> 2 -> 1 configurations, 7 trials
SPACE = "lr = {low = 1e-4, high = 5e-3, log = true}\nepochs = [2]"


def by_rung(st):
    trials = [t for t in st.get_trials() if not t.user_attrs.get("stepped_aside")]
    out = {}
    for t in trials:
        out.setdefault((rung_of(t), config_key(t.params)), []).append(t)
    return out


@pytest.mark.slow(90)
@pytest.mark.parametrize("promotion", ["sync", "async"])
def test_a_kill_in_the_middle_of_a_rung_trains_each_configuration_once_per_rung_and_mlflow_records_the_rungs(
    tmp_path, tiny_snli, new_store, promotion
):
    new_store(tmp_path / "mlflow.db")
    toml = write_toml(
        tmp_path, tiny_snli, trials=4, space="lr = {low = 1e-4, high = 5e-3, log = true}\nepochs = [12]", extra=MF
    )
    with open(tmp_path / "first.log", "w") as log:
        p = subprocess.Popen(
            sweep_cmd(tmp_path, toml, "--sampler", "random", "--promotion", promotion),
            cwd=ROOT,
            env=run_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline, hit = time.time() + 300, None
    while time.time() < deadline and p.poll() is None and hit is None:
        time.sleep(0.1)
        try:  # the journal only: opening the MLflow store here would race the sweep's own schema migration
            st = optuna.load_study(
                study_name="s", storage=JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
            )
        except Exception:  # noqa: BLE001 - the study is not there yet
            continue
        # Mid-trial: an epoch done (a checkpoint to resume from) and most of its 12 still to go (a second or two of
        # training on a fast CPU: the journal is polled every 0.1 s).
        hit = next(
            (
                t
                for t in st.get_trials()
                if t.state == S.RUNNING and rung_of(t) == 1 and 0 < len(t.intermediate_values) < 9
            ),
            None,
        )
    assert hit is not None, (
        "never saw a rung-1 trial with an epoch done: " + (tmp_path / "first.log").read_text()[-2000:]
    )
    os.killpg(p.pid, signal.SIGKILL)  # the sweep, its worker and its trial process, mid-rung, with no warning
    p.wait()
    r = run_sweep(tmp_path, toml, "--sampler", "random", "--promotion", promotion)
    assert "rungs at 0.25, 0.5, 1 of the train split, 4 -> 2 -> 1 configurations" in r.stdout
    st, parents, children = state(tmp_path)
    groups = by_rung(st)
    assert sorted(k for k, _ in groups) == [0, 0, 0, 0, 1, 1, 2]
    for (k, c), ts in groups.items():
        done = [t for t in ts if t.state == S.COMPLETE]
        assert len(done) == 1, (k, c, [(t.number, t.state) for t in ts])  # once per rung, whatever the kill hit
    killed = [t for t in groups[(1, config_key(hit.params))] if t.state == S.FAIL]
    assert killed and killed[0].number == hit.number
    retry = next(t for t in groups[(1, config_key(hit.params))] if t.state == S.COMPLETE)
    log = (tmp_path / "out" / "s" / f"trial-{retry.number:03d}.log").read_text()
    assert "resuming from" in log  # it went on from the killed attempt's checkpoint, not from zero
    assert not [t for t in st.get_trials() if t.state in (S.RUNNING, S.WAITING)]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # Promotion: sync, the best half of each rung by dev accuracy went up; async (ASHA), each went up from its rung
    # when it was in the best half of what had finished there (later results may rank above it).
    for k in (0, 1):
        ranked = sorted(
            (t.value, -t.number, c) for (kk, c), ts in groups.items() if kk == k for t in ts if t.state == S.COMPLETE
        )
        up = {c for (kk, c) in groups if kk == k + 1}
        final_top = {c for _, _, c in ranked[-[2, 1][k] :]}
        if promotion == "sync":
            assert up == final_top
            continue
        assert len(up) == [2, 1][k]
        for c in up:  # ASHA: in the best half (eta 2) of what had finished when it went up, or a fill at the end
            went_up = min(t.datetime_start for t in groups[(k + 1, c)])
            then = sorted(
                (t.value, -t.number, cc)
                for (kk, cc), ts in groups.items()
                if kk == k
                for t in ts
                if t.state == S.COMPLETE and t.datetime_complete <= went_up
            )
            best_then = {cc for _, _, cc in then[len(then) - len(then) // 2 :]} if len(then) // 2 else set()
            assert c in best_then | final_top, (k, c, then)
    # Nested fractions: each rung trained on its share of the train split.
    done = [t for t in st.get_trials() if t.state == S.COMPLETE]
    sizes = {k: {t.user_attrs["train_examples"] for t in done if rung_of(t) == k} for k in range(3)}
    full = sizes[2].pop()
    assert sizes[0] == {round(full / 4)} and sizes[1] == {round(full / 2)}
    # MLflow: each trial's run records its fidelity; test only where the winner is chosen; the parent shows the rungs.
    runs = {r.data.tags["optuna.trial"]: r for r in children}
    for t in st.get_trials():
        if t.user_attrs.get("stepped_aside"):
            continue
        run = runs[str(t.number)]
        assert run.data.tags["rung"] == str(rung_of(t))
        assert float(run.data.params["train_fraction"]) == pytest.approx([0.25, 0.5, 1.0][rung_of(t)])
        if t.state == S.COMPLETE:
            assert ("test_acc" in run.data.metrics) == (rung_of(t) == 2)
    assert "| rung | train_fraction |" in parents[0].data.tags["mlflow.note.content"]
    top = next(t for t in done if rung_of(t) == 2)
    assert parents[0].data.tags["best.trial"] == str(top.number) and parents[0].data.tags["best.rung"] == "2"
