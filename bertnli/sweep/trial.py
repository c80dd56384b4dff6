"""One trial, in its own process: shaped like Optuna's `objective`, but without Optuna.

The worker that asked for the trial keeps the Optuna `Trial` (ask/report/should_prune/tell);
this process trains with the trial's params and, after each epoch, writes its dev accuracy to
the `report` pipe and reads the worker's decision ("go" or "prune") from the `decide` pipe.
So a trial process needs no storage connection and no private Optuna API, and one trial's
crash, NaN or OOM ends that process only and frees all its memory.

Exit codes: 0 trained (summary in `trial.json`), PRUNED_EXIT pruned, DIVERGED_EXIT the loss
became NaN/inf (a property of the configuration: told to the sampler, not retried),
INTERRUPTED_EXIT Ctrl-C/SIGTERM (resumable), OOM_EXIT out of GPU memory (on a shared GPU the
worker retries it alone), ORPHANED_EXIT its worker closed the decide pipe (the worker is gone, or
it ended the trial's other ranks), anything else failed.

A trial over several GPUs (or several CPU processes) is one such process per rank, with torchrun's
variables (RANK, WORLD_SIZE, LOCAL_RANK...) and a file to meet in (runtime.RENDEZVOUS) instead of
torchrun's MASTER_ADDR/MASTER_PORT. Rank 0 is the trial process above; the others train
their share of each batch, write nothing, and exit 0 when they ended with rank 0.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

import torch

from bertnli import BertnliError
from bertnli.config import TrackingConfig
from bertnli.files import atomic_write
from bertnli.sweep.checkpoint_store import EpochUpload, store_uri
from bertnli.sweep.halving import config_key, rungs_of
from bertnli.sweep.reaping import host_name, storage_key, trial_identity
from bertnli.sweep.rungs import RUNG
from bertnli.sweep.space import spec_from_json
from bertnli.tracking.run import default_classify, train_run
from bertnli.train.fit import StoppedWithRankZero, fit
from bertnli.train.state import TrainingDiverged

PRUNED_EXIT, DIVERGED_EXIT, INTERRUPTED_EXIT, OOM_EXIT, ORPHANED_EXIT = 3, 4, 5, 6, 7
STAND_IN_OOM = "BERTNLI_STAND_IN_OOM"  # set: a trial on a shared GPU runs out of memory at once (CPU tests)


class Pruned(Exception):
    """The worker's pruner said stop: the run ends KILLED with `optuna.state=PRUNED`."""


class Diverged(Exception):
    """The loss became NaN/inf: the configuration diverges; it is recorded as such, not retried."""


class PruneRelay:
    """Engine callback: each epoch's dev accuracy to the worker, its decision back."""

    def __init__(self, report_fd: int, decide_fd: int, epochs: int):
        self.report = os.fdopen(report_fd, "w", buffering=1)
        self.decide = os.fdopen(decide_fd, "r")
        self.epochs = epochs

    def on_fit_start(self, info):
        pass

    def on_step(self, step, loss):
        pass

    def on_epoch_end(self, m):
        self.report.write(json.dumps({"epoch": m.epoch, "dev_acc": m.dev_acc}) + "\n")
        if m.epoch >= self.epochs:  # after the last epoch there is nothing left to prune: do not wait
            return
        answer = self.decide.readline().strip()
        if not answer:  # the worker closed its end: it is gone
            os._exit(ORPHANED_EXIT)
        if answer == "prune":
            raise Pruned(f"pruned after epoch {m.epoch} (dev_acc {m.dev_acc:.4f})")

    def on_fit_end(self, result):
        pass


def classify(exc: BaseException) -> tuple[str, dict[str, str]]:
    """A sweep trial's end -> MLflow status and tags that agree with the state the worker tells Optuna."""
    if isinstance(exc, Pruned):
        return "KILLED", {"optuna.state": "PRUNED", "bertnli.end": str(exc)}
    if isinstance(exc, TrainingDiverged):
        return "KILLED", {"optuna.state": "PRUNED", "bertnli.end": f"diverged: {exc}", "bertnli.diverged": "true"}
    if isinstance(exc, torch.OutOfMemoryError):
        return "FAILED", {"optuna.state": "FAIL", "bertnli.end": "out of GPU memory", "bertnli.oom": "true"}
    status, tags = default_classify(exc)
    return status, {**tags, "optuna.state": "FAIL"}


def _die_with_worker() -> None:
    """Linux: this process gets SIGKILL when the process that started it ends (set here, after exec
    or fork: a `preexec_fn` would run between fork and exec in a threaded parent, which Python
    calls unsafe), and is named `bertnli-trial` in ps and top."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        libc.prctl(15, b"bertnli-trial")  # PR_SET_NAME
    except OSError:
        pass


def _exit_when_the_worker_is_gone(decide_fd: int) -> None:
    """End this process the moment its worker's end of the decide pipe closes (the worker's
    process died, even by SIGKILL). PDEATHSIG alone does not cover it: a forked trial's parent is
    the forkserver, which every trial keeps alive."""

    own = os.dup(decide_fd)  # its own descriptor: the relay closing its file must not leave a reused number here

    def watch():
        poller = select.poll()
        poller.register(own, 0)  # no events asked: poll reports only the hang-up
        while True:
            if any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll()):
                os._exit(ORPHANED_EXIT)

    threading.Thread(target=watch, daemon=True, name="worker-lifeline").start()


class StandInOutOfMemory:
    """Engine callback for tests on a machine without CUDA: CUDA running out of memory on a shared GPU."""

    def on_fit_start(self, info):
        raise torch.OutOfMemoryError("CUDA out of memory (a stand-in: BERTNLI_STAND_IN_OOM is set)")

    def on_step(self, step, loss):
        pass

    def on_epoch_end(self, m):
        pass

    def on_fit_end(self, result):
        pass


def placement_tags(gpus: str | None, sharing: str | None) -> dict[str, str]:
    """Where this trial runs: the host, its slot's GPU indices (as the sweep numbers them), whether other
    trials share them, and the CUDA_VISIBLE_DEVICES this process received, with the names of the GPUs it
    shows where CUDA answers."""
    tags = {"bertnli.host": host_name(), **({"bertnli.gpus": gpus} if gpus else {})}
    if sharing:
        tags["bertnli.gpu_sharing"] = sharing
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return tags
    tags["bertnli.cuda_visible_devices"] = visible
    if torch.cuda.is_available():
        tags["bertnli.gpu_names"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return tags


def trial_tags(cfg, a: argparse.Namespace) -> dict[str, str]:
    """The run's tags that tie it to its study and trial, and where it runs."""
    return {
        "optuna.trial": str(a.number),
        "optuna.study": cfg.study_name,
        "bertnli.role": "sweep-trial",
        "bertnli.study_storage": storage_key(cfg),
        **placement_tags(a.gpus, a.gpu_sharing),
    }


def trial_config(cfg, params: dict):
    """The trial's TrainConfig and the tags of its rung: in a multi-fidelity study, the rung's share of the
    train split, and test only where the winner is chosen."""
    params = dict(params)
    rung = params.pop(RUNG, None)
    train_cfg = cfg.base.replace(**params)
    if rung is None:
        return train_cfg, {}
    rungs = rungs_of(cfg)
    test_here = cfg.base.eval_test and rung == rungs.top
    train_cfg = train_cfg.replace(train_fraction=rungs.fractions[rung], eval_test=test_here)
    return train_cfg, {RUNG: str(rung), "bertnli.config": config_key(params)}


def run_trial(a: argparse.Namespace) -> int:
    """Train with the trial's params; the exit code says how it ended (see the module docstring)."""
    cfg = spec_from_json(json.loads(Path(a.spec).read_text()))
    train_cfg, rung_tags = trial_config(cfg, json.loads(a.params))
    out = Path(a.out)
    tags = trial_tags(cfg, a) | rung_tags
    if a.retry_of is not None:
        tags["bertnli.retry_of"] = str(a.retry_of)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        print(f"rank {rank} of {world}, pid {os.getpid()}", flush=True)
    if rank:
        return run_rank(train_cfg, out, a.resume)
    tracking = TrackingConfig(
        cfg.tracking.tracking_uri, cfg.tracking.experiment or cfg.study_name, f"trial-{a.number:03d}", tags
    )
    relay = PruneRelay(a.report_fd, a.decide_fd, train_cfg.epochs)
    stand_in = [StandInOutOfMemory()] if os.environ.get(STAND_IN_OOM) and a.gpu_sharing == "shared" else []
    upload = EpochUpload(lambda run_id: store_uri(cfg, a.number, run_id), out, cfg.tracking.tracking_uri)
    try:
        result, run_id = train_run(
            train_cfg,
            out,
            tracking,
            resume=a.resume,
            parent_run_id=a.parent_run,
            callbacks=[relay, upload, *stand_in],  # a pruned epoch is not uploaded
            classify=classify,
            keep_checkpoint=cfg.keep_checkpoints == "all",
            progress=False,
        )
    except (Pruned, *ENDS) as e:
        return end_code(e)
    summary = {
        "value": result.best_dev_acc,
        "test_acc": result.test.acc if result.test else None,
        "best_epoch": result.best_epoch,
        "run_id": run_id,
        "wall_seconds": result.wall_seconds,
        "train_seconds": sum(h.train_seconds for h in result.history),
        "train_examples": result.info.get("train_examples"),
        "epochs_trained": len(result.history),
        "costs": result.costs,
        **trial_identity(cfg, a.number, json.loads(a.params)),
    }
    atomic_write(out / "trial.json", json.dumps(summary))
    return 0


def run_rank(train_cfg, out: Path, resume: bool) -> int:
    """A trial's data-parallel rank other than 0: it trains its share and says nothing; rank 0 talks to the
    worker and MLflow, and its callbacks' end (a prune) reaches this rank through the engine."""
    try:
        fit(train_cfg, out, resume=resume, progress=False)
    except StoppedWithRankZero as e:
        print(e, flush=True)
    except ENDS as e:  # a divergence every rank sees (the check is all-reduced), a signal, its own GPU's memory
        return end_code(e)
    return 0


ENDS = (TrainingDiverged, KeyboardInterrupt, torch.OutOfMemoryError)  # ends of training that are no crash


def end_code(e: BaseException) -> int:
    """The exit code of a trial process (any rank) whose training ended by `e` (Pruned or one of ENDS)."""
    if isinstance(e, Pruned):
        return PRUNED_EXIT
    if isinstance(e, KeyboardInterrupt):
        return INTERRUPTED_EXIT
    if isinstance(e, TrainingDiverged):
        print(f"diverged: {e}", flush=True)
        return DIVERGED_EXIT
    print(f"out of GPU memory: {str(e).splitlines()[0]}", flush=True)
    return OOM_EXIT


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bertnli.sweep trial")
    ap.add_argument("command", choices=["trial"])
    for name in ("--spec", "--params", "--out", "--parent-run"):
        ap.add_argument(name, required=True)
    for name in ("--number", "--parent-pid", "--report-fd", "--decide-fd"):
        ap.add_argument(name, type=int, required=True)
    ap.add_argument("--retry-of", type=int, default=None)
    ap.add_argument("--gpus", default=None)
    ap.add_argument("--gpu-sharing", choices=["shared", "alone after running out of memory"], default=None)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args(argv)
    _die_with_worker()
    if os.getppid() != a.parent_pid:  # the process that started us died before PDEATHSIG was set
        return 1
    _exit_when_the_worker_is_gone(a.decide_fd)
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) != torch.get_num_threads():  # forked: torch read it in the forkserver
        torch.set_num_threads(int(threads))
    # Both end the run KILLED (resumable). SIGINT is set explicitly: a process started in the
    # background of a non-interactive shell inherits SIGINT ignored, and Python keeps it so.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return run_trial(a)
    except BertnliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def run_and_exit(argv: list[str]) -> NoReturn:
    """`main`, then exit at once, forked or exec'ed alike.

    By now the trial's MLflow run has ended (its status set, system metrics flushed), trial.json
    is written where it trained to the end, and its report lines are sent. The interpreter's
    teardown (torch, MLflow, SQLAlchemy) took ~1.3 s of each trial's wall time on the 2-core CPU,
    a fifth of the sweep's overhead per trial (benchmarks/sweep_overhead.py): skip it. A signal
    from here on could only turn this exit code into a traceback."""
    code = main(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))
