"""Device slots: each trial process sees only its own GPU(s), a GPU never holds more than
--trials-per-gpu trials, and a slot comes back however its trial ends.

This machine has no GPU: `BERTNLI_HOST_GPUS` stands in for what CUDA would list (the one seam);
everything else is the real sweep, whose trial processes record the CUDA_VISIBLE_DEVICES they got.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
from optuna.trial import TrialState as S
from tiny_sweeps import ran, retry_of, state, sweep_in_process, write_toml

from bertnli import BadInput
from bertnli.sweep.slots import Slots, parse_gpus, plan_groups, visible_devices


def test_groups_cover_the_gpus_given_in_order():
    assert plan_groups(None, 1, 4) == [(0,), (1,), (2,), (3,)]  # default: every GPU CUDA sees
    assert plan_groups(parse_gpus("0,1,3"), 1, 4) == [(0,), (1,), (3,)]
    assert plan_groups(None, 2, 4) == [(0, 1), (2, 3)]
    assert plan_groups(None, 1, 0) == [()]  # a CPU host: one group, the environment as it is
    assert plan_groups(None, 1, 4, device="cpu") == [()]
    assert plan_groups(None, 1, 4, device="cuda:1") == [()]  # a device the user pinned is left alone


@pytest.mark.parametrize(
    "gpus,per_trial,seen,device,needle",
    [
        ("4", 1, 4, "auto", "--gpus 4: CUDA on this host sees GPUs 0-3"),
        ("0", 1, 0, "auto", "--gpus 0: CUDA on this host sees no GPU"),
        ("0,1", 4, 4, "auto", "--gpus-per-trial 4 is more than the 2 GPU(s) given"),
        ("0,1,2", 2, 4, "auto", "--gpus-per-trial 2 does not divide the 3 GPUs given"),
        (None, 2, 0, "auto", "--gpus-per-trial 2: this sweep places no GPU"),
        ("0", 1, 4, "cpu", "--gpus with --device cpu"),
        ("0,x", 1, 4, "auto", "--gpus 0,x: give GPU indices separated by commas"),
        ("1,1", 1, 4, "auto", "--gpus 1,1: each index once"),
    ],
)
def test_impossible_gpu_settings_are_one_line_errors_naming_the_option(gpus, per_trial, seen, device, needle):
    with pytest.raises(BadInput) as e:
        plan_groups(parse_gpus(gpus), per_trial, seen, device)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_trial_sees_its_gpus_in_the_terms_of_the_scheduler_that_started_the_sweep():
    assert visible_devices((0, 2), None) == "0,2"
    assert visible_devices((0, 2), "4,5,6") == "4,6"  # SLURM gave the sweep GPUs 4-6: index 0 is GPU 4
    assert visible_devices((1,), "GPU-aa, GPU-bb") == "GPU-bb"
    assert visible_devices((), "4,5") is None


def test_slots_spread_then_pack_never_exceed_the_limit_and_come_back_after_an_error():
    slots = Slots([(0,), (1,)], per_group=2, inherited=None)
    assert slots.count == 4
    held = [slots.take() for _ in range(4)]
    placed = [cm.__enter__() for cm in held]
    assert [p.gpus for p in placed] == [(0,), (1,), (0,), (1,)]  # one per GPU before two per GPU
    assert all(p.shared and p.env({})["CUDA_VISIBLE_DEVICES"] in ("0", "1") for p in placed)
    got, kept = [], []  # the context managers are kept: one collected as garbage gives its slot back

    def wait_for_a_slot():
        kept.append(slots.take())
        got.append(kept[-1].__enter__())

    waiter = threading.Thread(target=wait_for_a_slot)
    waiter.start()
    time.sleep(0.3)
    assert not got  # a fifth trial waits: no GPU takes a third
    held[1].__exit__(None, None, None)  # a trial on GPU 1 ends
    waiter.join(timeout=5)
    assert [p.gpus for p in got] == [(1,)]
    held[0].__exit__(None, None, None)
    assert slots.free == {(0,): 1, (1,): 0}
    with pytest.raises(RuntimeError), slots.take() as p:  # a trial (or its worker) that crashed gives its slot back
        assert p.gpus == (0,)
        raise RuntimeError("trial crashed")
    assert slots.free == {(0,): 1, (1,): 0}


def test_a_trial_that_needs_a_gpu_alone_beats_while_it_waits_and_goes_before_plain_trials():
    slots = Slots([(0,), (1,)], per_group=2, inherited=None)
    held = [slots.take() for _ in range(3)]
    for cm in held:
        cm.__enter__()  # GPU 0 holds two trials, GPU 1 one
    beats, got, kept = [], [], []

    def wait(alone):
        kept.append(slots.take(alone=alone, beat=lambda: beats.append(time.time()) or True, beat_s=0.1))
        got.append((alone, kept[-1].__enter__()))

    alone = threading.Thread(target=wait, args=(True,))
    alone.start()
    time.sleep(0.5)
    plain = threading.Thread(target=wait, args=(False,))  # GPU 1 has room, but the waiting trial goes first
    plain.start()
    time.sleep(0.5)
    assert not got and len(beats) >= 3  # the asked trial keeps beating while it waits
    held[1].__exit__(None, None, None)  # GPU 1 is empty now
    alone.join(timeout=5)
    assert [(a, p.gpus, p.shared) for a, p in got] == [(True, (1,), False)]
    held[0].__exit__(None, None, None)  # GPU 0 has room: the plain trial goes there
    plain.join(timeout=5)
    assert [(a, p.gpus, p.shared) for a, p in got][1:] == [(False, (0,), True)]


def test_a_wait_for_a_gpu_alone_gives_up_when_the_sweep_stops_or_the_trial_is_lost():
    slots = Slots([(0,)], per_group=2, inherited=None)
    held = slots.take()
    held.__enter__()  # one trial on the only GPU: an alone trial has to wait
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    with slots.take(alone=True, beat=lambda: True, stop=stop, beat_s=0.05) as placement:
        assert placement is None  # stopped: nothing taken
    lost = iter([True, True, False])  # another process failed the trial at the third beat
    with slots.take(alone=True, beat=lambda: next(lost), beat_s=0.05) as placement:
        assert placement is None
    held.__exit__(None, None, None)
    assert slots.free == {(0,): 2} and slots.waiting_alone == 0  # nothing held, nobody counted as waiting


def _sweep_with_deadline(tmp_path, toml, *extra, timeout=300):
    """The in-process sweep, ended by SIGALRM if it hangs: a slot that never came back would hang it."""

    def hung(signum, frame):
        raise TimeoutError(f"the sweep did not end in {timeout} s: a slot was never given back")

    before = signal.signal(signal.SIGALRM, hung)
    signal.alarm(timeout)
    try:
        return sweep_in_process(tmp_path, toml, *extra)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


@pytest.mark.slow
def test_each_trial_process_sees_only_its_slot_and_crashed_trials_give_theirs_back(
    tmp_path, tiny_snli, new_store, monkeypatch
):
    monkeypatch.setenv("BERTNLI_HOST_GPUS", "Fake A,Fake B,Fake C")  # what CUDA would list on a 3-GPU host
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")  # as a scheduler sets it: the host's GPUs 4-6
    new_store(tmp_path / "mlflow.db")
    broken = tmp_path / "not-a-bert"  # passes the sweep's checks (a folder, a config) but has no weights: trials crash
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    toml = write_toml(
        tmp_path,
        tiny_snli,
        trials=3,
        space=f'model = ["hf:{broken}", "tiny-d2l-random"]\nlr = {{low = 1e-3, high = 3e-3}}',
        extra="max_retries = 1\nfail_limit = 20",
    )
    # --gpus 0,2: two slots (two workers by default); the broken cell's try and retry crash, and a slot
    # kept by a crashed trial would leave the sweep one worker short, then none.
    r = _sweep_with_deadline(tmp_path, toml, "--gpus", "0,2", "--no-progress")
    assert r.exit_code == 0, r.output[-3000:]
    st, parents, children = state(tmp_path)
    trials = ran(st.get_trials())
    failed = [t for t in trials if t.state == S.FAIL]
    assert len(failed) >= 2 and retry_of(failed[1]) == failed[0].number  # crashed, retried, crashed
    assert sum(t.state in (S.COMPLETE, S.PRUNED) for t in trials) == 3
    seen = {int(r.data.tags["optuna.trial"]): r.data.tags for r in children}
    assert set(seen) == {t.number for t in trials}  # every try, crashed ones too, has its run and placement
    for t in trials:
        tags = seen[t.number]
        assert (tags["bertnli.gpus"], tags["bertnli.cuda_visible_devices"]) in (("0", "4"), ("2", "6")), tags
        assert t.user_attrs["gpus"] == [int(tags["bertnli.gpus"])]
        assert tags["bertnli.host"]
    intervals = {}
    for t in trials:  # a GPU held one trial at a time (--trials-per-gpu 1)
        intervals.setdefault(tuple(t.user_attrs["gpus"]), []).append((t.datetime_start, t.datetime_complete))
    for spans in intervals.values():
        spans.sort()
        assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:])), spans


def test_more_workers_than_slots_is_refused_before_anything_is_made(tmp_path, tiny_snli, monkeypatch):
    monkeypatch.setenv("BERTNLI_HOST_GPUS", "Fake A,Fake B")
    toml = write_toml(tmp_path, tiny_snli, trials=2)
    r = sweep_in_process(tmp_path, toml, "--workers", "5", "--trials-per-gpu", "2")
    assert r.exit_code == 2
    assert "--workers 5 is more than this host's 4 slot(s)" in r.output
    r = sweep_in_process(tmp_path, toml, "--procs-per-trial", "2")
    assert r.exit_code == 2 and "--procs-per-trial 2 is for trials on the CPU; on GPUs" in r.output
    r = sweep_in_process(tmp_path, toml, "--procs-per-trial", "3", "--device", "cpu")  # batch_size 16
    assert r.exit_code == 2 and "--batch-size 16 does not split over the 3 processes" in r.output
    r = sweep_in_process(tmp_path, toml, "--procs-per-trial", "3", "--device", "cpu", "--space", "batch_size=12|16")
    assert (
        r.exit_code == 2
        and "--batch-size 16 does not split over the 3 processes of a trial; choose a multiple "
        "of 3 for every batch_size in the space"
        in r.output
    )
    assert not (tmp_path / "journal.log").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_trial_out_of_memory_beside_others_is_retried_with_the_gpu_to_itself_and_not_counted(
    tmp_path, tiny_snli, new_store, monkeypatch
):
    monkeypatch.setenv("BERTNLI_HOST_GPUS", "Fake A")
    monkeypatch.setenv("BERTNLI_STAND_IN_OOM", "1")  # where CUDA would run out: any trial sharing the GPU
    new_store(tmp_path / "mlflow.db")
    # No retries and a fail limit of one: a counted failure would not be retried, and would stop the sweep.
    toml = write_toml(
        tmp_path, tiny_snli, trials=2, space="lr = {low = 1e-3, high = 3e-3}", extra="max_retries = 0\nfail_limit = 1"
    )
    r = _sweep_with_deadline(tmp_path, toml, "--trials-per-gpu", "2", "--no-progress")  # two slots on one GPU
    assert r.exit_code == 0, r.output[-3000:]
    st, _, children = state(tmp_path)
    trials = ran(st.get_trials())
    failed = [t for t in trials if t.state == S.FAIL]
    done = [t for t in trials if t.state in (S.COMPLETE, S.PRUNED)]  # the median pruner may stop the second
    assert len(done) == 2 and len(failed) >= 2
    assert all(t.user_attrs.get("oom_beside_others") for t in failed)
    assert all("out of GPU memory beside other trials" in t.user_attrs["error"] for t in failed)
    assert {retry_of(t) for t in done} <= {t.number for t in failed} and all(t.user_attrs["gpu_alone"] for t in done)
    runs = {int(r.data.tags["optuna.trial"]): r for r in children}
    for t in failed:  # its run says what happened
        tags = runs[t.number].data.tags
        assert runs[t.number].info.status == "FAILED" and tags["bertnli.oom"] == "true"
        assert tags["bertnli.gpu_sharing"] == "shared"
    for t in done:  # the retry had the GPU to itself: no other trial's run overlapped its run
        alone = runs[t.number]
        assert alone.data.tags["bertnli.gpu_sharing"] == "alone after running out of memory"
        others = [r for n, r in runs.items() if n != t.number]
        assert all(r.info.end_time <= alone.info.start_time or r.info.start_time >= alone.info.end_time for r in others)
