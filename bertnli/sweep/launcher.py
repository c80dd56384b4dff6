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
import signal
import subprocess
import sys
import threading
import uuid
from multiprocessing.connection import Connection, wait
from pathlib import Path

from bertnli.train.runtime import RENDEZVOUS

ROOT = Path(__file__).resolve().parents[2]  # the folder that holds this very bertnli
_CTX = multiprocessing.get_context("forkserver")
_START = threading.Lock()  # multiprocessing's start and its list of children are not thread-safe


def warm_up_for(how: str) -> None:
    """Start the forkserver now if trials will be forked (`how`, the sweep's `trial_start`): called by a sweep
    process that has trials to run, before it makes its parent run, so that the server's imports (seconds
    of CPU, in a process of their own) overlap that work instead of holding up the first trial."""
    if how == "fork" and forkable():
        warm_up()


def warm_up() -> None:
    """Start the forkserver if it is not running: it imports what a trial needs (about 10 s of CPU). Returns
    at once; a trial forked before the imports end waits for them.

    A sweep process that finds the study done never starts it (warm_up_for); one that others leave no
    trial to run pays for it in vain.

    It is started with this bertnli first on its PYTHONPATH (the environment it inherits), so that
    it imports the checkout the sweep runs, not another one that is installed."""
    _CTX.set_forkserver_preload(["bertnli.sweep.preload"])
    with _START:
        before = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = python_path(os.environ)
        try:
            multiprocessing.forkserver.ensure_running()  # the server copies the environment as it starts
        finally:
            if before is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = before


def python_path(env) -> str:
    """PYTHONPATH with this bertnli first: a trial runs the very bertnli its sweep imported."""
    return os.pathsep.join(dict.fromkeys(filter(None, [str(ROOT), *env.get("PYTHONPATH", "").split(os.pathsep)])))


def forkable() -> bool:
    """Whether a forked child may import this process's main module, as multiprocessing makes it do:
    none (python -c, a notebook), a module run with -m, or the bertnli-exp script guard their entry
    with `__name__ == "__main__"`; a user's script may not, and would run again in every trial."""
    main = sys.modules["__main__"]
    path = getattr(main, "__file__", None)
    return getattr(main, "__spec__", None) is not None or path is None or Path(path).name == "bertnli-exp"


def start_trial(how: str, args: list[str], env: dict[str, str], log_path: Path, append: bool, fds: tuple[int, int]):
    """`python -m bertnli.sweep trial ARGS` with its report/decide pipe ends `fds`, its output in `log_path`:
    forked ("fork") or a fresh interpreter ("exec"); either way a Popen-like handle. Closes `fds` here."""
    if how == "fork" and forkable():
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
        self._lock = threading.Lock()  # two threads reading one exit status from the forkserver: the second sees 255
        warm_up()
        with _START:
            self._p.start()
            # The worker ends its trials itself (kill, SIGTERM, the decide pipe), as with Popen:
            # multiprocessing must not join them when the sweep exits, nor poll them from other threads.
            multiprocessing.process._children.discard(self._p)
        for end in ends:
            end.close()
        self.pid = self._p.pid

    def poll(self) -> int | None:
        with self._lock:
            return self._p.exitcode

    def wait(self) -> int:
        wait([self._p.sentinel])
        return self.poll()

    def kill(self) -> None:
        with self._lock:
            if self._p.exitcode is None:  # the forkserver reaps at once: a pid it reaped may be reused
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
    torch = sys.modules.get("torch")
    if str(ROOT) != root or (torch is not None and torch.cuda.is_initialized()):
        # The server imported another checkout than the worker's (run the worker's), or initialised
        # CUDA, which a forked process cannot use: a fresh interpreter instead.
        os.set_inheritable(report_fd, True)
        os.set_inheritable(decide_fd, True)
        os.execve(sys.executable, [sys.executable, "-m", "bertnli.sweep", *argv], env)
    from bertnli.sweep.trial import run_and_exit

    run_and_exit(argv)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name
        return f"signal {number}"


def last_line(log: Path) -> str:
    """What a trial process wrote last ("" for no log): its error, where it failed."""
    lines = log.read_text()[-400:].strip().splitlines() if log.is_file() else []
    return lines[-1] if lines else ""


def rank_envs(ranks: int, folder: Path) -> list[dict[str, str]]:
    """torchrun's variables for each process of a trial over `ranks` processes ({} for one), meeting in a new file
    of `folder` (runtime.RENDEZVOUS) rather than on a port of this host: a port free a moment ago may be taken
    by another process before rank 0 listens on it."""
    if ranks <= 1:
        return [{}]
    meeting = folder.resolve() / f"rendezvous-{uuid.uuid4().hex}"  # the same file whatever a rank's directory
    common = {"WORLD_SIZE": str(ranks), "LOCAL_WORLD_SIZE": str(ranks), RENDEZVOUS: str(meeting)}
    if "OMP_NUM_THREADS" not in os.environ:  # torchrun's default for several processes per host
        common["OMP_NUM_THREADS"] = "1"
    return [{**common, "RANK": str(k), "LOCAL_RANK": str(k)} for k in range(ranks)]
