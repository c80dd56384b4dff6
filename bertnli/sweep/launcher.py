"""Trial processes forked from a server that imported torch and MLflow once.

A fresh interpreter spends about 7 s of its trial's time importing torch, MLflow, pandas and
matplotlib (benchmarks/trial_start.py). With short trials (a small model on a GPU, a data
subset, the test suite) that is a large share of a sweep. Python's forkserver is itself
started by exec, never forked from the sweep's threads, so forking it is safe. Each trial
still gets its own process, memory, exit code, log file and SIGTERM handling, as a
`python -m bertnli.sweep trial` process would.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import multiprocessing.process
import os
import subprocess
import sys
import threading
from multiprocessing.connection import Connection, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the folder that holds this very bertnli
_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(["bertnli.sweep.preload"])
# multiprocessing's Process bookkeeping is not thread-safe: two threads polling one process can
# both read its exit status from the forkserver, and the second then sees 255.
_LOCK = threading.Lock()


def warm_up() -> None:
    """Start the forkserver now: it imports (about 10 s of CPU) while the sweep does other work."""
    multiprocessing.forkserver.ensure_running()


def start_trial(how: str, args: list[str], env: dict[str, str], log_path: Path, append: bool, fds: tuple[int, int]):
    """`python -m bertnli.sweep trial ARGS` with its report/decide pipe ends `fds`, its output in `log_path`:
    forked ("fork") or a fresh interpreter ("exec"); either way a Popen-like handle. Closes `fds` here."""
    if how == "fork":
        return ForkedTrial(args, env, log_path, append, fds)
    ends = ["--report-fd", str(fds[0]), "--decide-fd", str(fds[1])]
    cmd = [sys.executable, "-m", "bertnli.sweep", "trial", *args, "--parent-pid", str(os.getpid()), *ends]
    with open(log_path, "a" if append else "w") as log_handle:
        # No preexec_fn: forking from a threaded process may only exec; the trial sets its own PDEATHSIG.
        proc = subprocess.Popen(cmd, stdout=log_handle, stderr=subprocess.STDOUT, env=env, pass_fds=fds)
    for fd in fds:
        os.close(fd)
    return proc


class ForkedTrial:
    """The part of `subprocess.Popen` the worker uses (pid, poll, wait, kill, returncode)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, append: bool, fds: tuple[int, int]):
        ends = [Connection(fd) for fd in fds]  # how multiprocessing passes a file descriptor to a child
        self._p = _CTX.Process(
            target=_forked, args=(str(ROOT), args, env, str(log_path), append, *ends), name="bertnli-trial"
        )
        with _LOCK:
            self._p.start()
            # The worker ends its trials itself (kill, SIGTERM, PDEATHSIG), as with Popen:
            # multiprocessing must not join them when the sweep exits, nor poll them from other threads.
            multiprocessing.process._children.discard(self._p)
        for end in ends:
            end.close()
        self.pid = self._p.pid

    def poll(self) -> int | None:
        with _LOCK:
            return self._p.exitcode

    def wait(self) -> int:
        wait([self._p.sentinel])
        return self.poll()

    def kill(self) -> None:
        with _LOCK:
            self._p.kill()

    @property
    def returncode(self) -> int | None:
        return self.poll()


def _forked(
    root: str, args: list[str], env: dict[str, str], log_path: str, append: bool, report: Connection, decide: Connection
):
    """In the forked child: the worker's environment and log, then the trial's own `main`."""
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    report_fd, decide_fd = os.dup(report.fileno()), os.dup(decide.fileno())
    report.close()
    decide.close()
    argv = ["trial", *args, "--parent-pid", str(os.getppid()), "--report-fd", str(report_fd)]
    argv += ["--decide-fd", str(decide_fd)]
    if str(ROOT) != root:  # the server imported another checkout than the worker's: run the worker's
        os.set_inheritable(report_fd, True)
        os.set_inheritable(decide_fd, True)
        os.execve(sys.executable, [sys.executable, "-m", "bertnli.sweep", *argv], env)
    from bertnli.sweep.trial import run_and_exit

    run_and_exit(argv)
