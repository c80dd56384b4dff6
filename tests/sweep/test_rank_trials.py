"""A trial over several processes (`--gpus-per-trial` on GPUs, `--procs-per-trial` with gloo on the CPU): every
rank stops together on a prune, a rank that dies takes the others down with no hang, and a trial trains exactly
as `torchrun ... train` does with the same configuration."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage
from tiny_sweeps import ran, retry_of, state, sweep_cmd, write_toml

S = optuna.trial.TrialState
SPACE = "lr = [2e-3, 1e-6]\nbatch_size = [4]\nepochs = [2]"


def _queue(tmp_path, *configs):
    study = optuna.create_study(
        study_name="s", storage=JournalStorage(JournalFileBackend(str(tmp_path / "journal.log"))), direction="maximize"
    )
    for c in configs:
        study.enqueue_trial(c)


def _history(result_json):
    return [
        (h["epoch"], h["train_loss"], h["dev_loss"], h["dev_acc"])
        for h in json.loads(result_json.read_text())["history"]
    ]


@pytest.mark.slow(90)  # starts a sweep and torchrun
def test_two_process_trials_prune_together_and_train_as_torchrun_does(tmp_path, tiny_snli, new_store):
    new_store(tmp_path / "mlflow.db")
    toml = write_toml(tmp_path, tiny_snli, trials=2, space=SPACE)
    # one lr that learns the toy data and one that cannot, in that order: the median pruner stops the second at epoch 1
    _queue(tmp_path, {"lr": 2e-3, "batch_size": 4, "epochs": 2}, {"lr": 1e-6, "batch_size": 4, "epochs": 2})
    r = subprocess.run(
        sweep_cmd(tmp_path, toml, "--procs-per-trial", "2", "--device", "cpu", "--no-progress"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    st, _, children = state(tmp_path)
    done, pruned = st.get_trials()
    assert (done.state, pruned.state) == (S.COMPLETE, S.PRUNED)
    runs = {int(c.data.tags["optuna.trial"]): c for c in children}
    assert runs[0].data.tags["bertnli.world_size"] == "2" and runs[1].info.status == "KILLED"
    out = tmp_path / "out" / "s"
    assert "rank 1 of 2" in (out / "trial-000.rank1.log").read_text()
    # the prune reached rank 1 through rank 0, after the same epoch
    assert (
        "rank 0 ended the run after epoch 1 (Pruned: pruned after epoch 1" in (out / "trial-001.rank1.log").read_text()
    )

    # the same configuration as one run of `torchrun --nproc-per-node 2 train`
    train_toml = tmp_path / "train.toml"
    train_toml.write_text(toml.read_text().split("[sweep]")[0])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "bertnli.cli"]
    cmd += [
        "train",
        "--config",
        str(train_toml),
        "--lr",
        "2e-3",
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--device",
        "cpu",
    ]
    cmd += [
        "--out",
        str(tmp_path / "torchrun"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--no-progress",
    ]
    t = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert t.returncode == 0, t.stdout[-2000:] + t.stderr[-2000:]
    assert _history(out / "trial-000" / "result.json") == _history(tmp_path / "torchrun" / "result.json")


@pytest.mark.slow(60)  # starts a sweep
@pytest.mark.parametrize("killed,hung", [(1, False), (0, False), (1, True)], ids=["rank1", "rank0", "rank1-rank0-hung"])
def test_a_rank_killed_mid_trial_ends_its_siblings_and_the_trial_is_retried(
    tmp_path, tiny_snli, new_store, killed, hung
):
    """Either rank killed: the other fails at once of the lost connection, and the trial's error names the rank
    that was killed, not the other's error. Before, with rank 0 killed, the error was rank 0's last log line.
    `hung`: rank 0 is stopped first, as in a collective that never returns (NCCL): the worker kills it after
    its grace, and that kill is not named as a failure of rank 0."""
    new_store(tmp_path / "mlflow.db")
    toml = write_toml(tmp_path, tiny_snli, trials=1, space="lr = [2e-3]\nbatch_size = [4]\nepochs = [4]")
    sweep = subprocess.Popen(
        sweep_cmd(tmp_path, toml, "--procs-per-trial", "2", "--device", "cpu", "--no-progress", "--sampler", "random"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = tmp_path / "out" / "s"
    deadline = time.time() + 120
    while not ("epoch 1:" in _read(out / "trial-000.log") and "pid" in _read(out / "trial-000.rank1.log")):
        assert time.time() < deadline and sweep.poll() is None, _read(out / "trial-000.log")
        time.sleep(0.05)
    pids = [int(_read(out / log).split("pid ")[1].split()[0]) for log in ("trial-000.log", "trial-000.rank1.log")]
    if hung:
        os.kill(pids[0], signal.SIGSTOP)
    os.kill(pids[killed], signal.SIGKILL)  # in epoch 2: the other rank is in or near a collective with it
    killed_at = time.time()
    output, _ = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, output[-3000:]
    st, _, children = state(tmp_path)
    first, second = ran(st.get_trials())
    assert first.state == S.FAIL and second.state == S.COMPLETE and retry_of(second) == first.number
    assert first.user_attrs["error"] == f"rank {killed} of 2 was killed by SIGKILL; its siblings were ended"
    assert first.datetime_complete.timestamp() - killed_at < 15  # rank 0 did not wait in a collective
    runs = {int(c.data.tags["optuna.trial"]): c for c in children}
    assert runs[first.number].info.status == "FAILED"
    assert runs[first.number].data.tags["bertnli.rank_failure"] == first.user_attrs["error"]
    history = json.loads((out / f"trial-{second.number:03d}" / "result.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]  # the retry resumed from epoch 1's checkpoint


def _read(path):
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


@pytest.mark.slow(60)  # runs a sweep of two-process trials
def test_the_ranks_of_a_trial_meet_without_a_port_another_process_could_take(
    tmp_path, tiny_snli, new_store, monkeypatch
):
    """The ranks met on a TCP port that was free a moment before the trial started (torchrun's MASTER_PORT); a
    process that bound it first failed the trial, every retry too. Here a listener takes each such port as soon
    as it is chosen: the ranks must meet anyway."""
    import socket

    from tiny_runs import invoke
    from tiny_sweeps import sweep_args

    import bertnli.sweep.supervisor as supervisor

    real, held = supervisor.rank_envs, []

    def taken_at_once(*args, **kwargs):
        envs = real(*args, **kwargs)
        if "MASTER_PORT" in envs[0]:
            s = socket.socket()
            s.bind(("", int(envs[0]["MASTER_PORT"])))
            s.listen()
            held.append(s)
        return envs

    monkeypatch.setattr(supervisor, "rank_envs", taken_at_once)
    new_store(tmp_path / "mlflow.db")
    space = "lr = [2e-3]\nbatch_size = [4]\nepochs = [1]"
    toml = write_toml(tmp_path, tiny_snli, trials=1, space=space, extra="max_retries = 0\nfail_limit = 1")
    args = [*sweep_args(tmp_path, toml, "--procs-per-trial", "2", "--device", "cpu", "--no-progress")]
    args[args.index("--out") + 1] = "sweep out"  # relative, with a space: the default --out is relative too
    try:
        r = invoke(args, cwd=tmp_path)
    finally:
        for s in held:
            s.close()
    assert r.returncode == 0, r.stderr[-3000:]
    st, _, _ = state(tmp_path)
    assert [t.state for t in st.get_trials()] == [S.COMPLETE]
    assert not list((tmp_path / "sweep out").rglob("rendezvous-*"))  # the meeting file is gone with the trial


def test_the_ranks_meet_in_one_absolute_file_whatever_their_directory(tmp_path, monkeypatch):
    from bertnli.sweep.launcher import rank_envs
    from bertnli.train.runtime import RENDEZVOUS

    monkeypatch.chdir(tmp_path)
    envs = rank_envs(2, Path("sweep out") / "s")
    assert envs[0][RENDEZVOUS] == envs[1][RENDEZVOUS] and Path(envs[0][RENDEZVOUS]).is_absolute()
    assert Path(envs[0][RENDEZVOUS]).parent == tmp_path / "sweep out" / "s"
    assert rank_envs(2, tmp_path)[0][RENDEZVOUS] != rank_envs(2, tmp_path)[0][RENDEZVOUS]  # a fresh file per trial
    assert rank_envs(1, tmp_path) == [{}]
