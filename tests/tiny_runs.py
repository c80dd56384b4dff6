"""Helpers shared by tests: a tiny run's config, engine callbacks, `bertnli-exp` in this process or as a subprocess,
a free port."""

import os
import socket
import subprocess
import sys
import traceback
import warnings

from conftest import ROOT, run_env

from bertnli.config import TrainConfig


def tiny_cfg(data, tmp_path, **kw):
    base = dict(
        model="tiny-d2l-random",
        data=str(data),
        epochs=3,
        batch_size=16,
        lr=2e-3,
        max_len=32,
        schedule="constant",
        optimizer="adam",
        dropout=0.0,
        cache_dir=str(tmp_path / "enc"),
        checkpoint_every=0,
    )
    return TrainConfig(**{**base, **kw})


class Quiet:
    def on_fit_start(self, info):
        pass

    def on_epoch_end(self, m):
        pass

    def on_fit_end(self, r):
        pass


class StopAt(Quiet):
    """Raise at a global step, as a kill would: state after the last checkpoint is lost."""

    def __init__(self, step):
        self.step = step

    def on_step(self, global_step, loss):
        if global_step == self.step:
            raise KeyboardInterrupt


def cli(*args, timeout=300, cwd=ROOT, fresh=False, **env):
    """`bertnli-exp ARGS` in `cwd` with the test's environment plus `env`: in this process unless `fresh` asks for
    a process of its own (a new interpreter costs seconds of imports, and a sweep's forkserver as many again).
    `timeout` bounds a process of its own; pytest-timeout bounds the rest."""
    if not fresh:
        return invoke([str(a) for a in args], env, cwd)
    return subprocess.run(
        [sys.executable, "-m", "bertnli.cli", *map(str, args)],
        cwd=cwd,
        env=run_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def in_process(args: list[str], env: dict | None = None, cwd=ROOT):
    """`bertnli-exp ARGS` through click's runner, as a user's shell would run it: in `cwd`, its warnings under
    Python's default filters and printed to its stderr (pytest would record them instead). Click's Result."""
    from click.testing import CliRunner

    from bertnli.cli import main

    before = os.getcwd()
    os.chdir(cwd)
    try:
        with warnings.catch_warnings():
            warnings.resetwarnings()  # Python's defaults: shown once per place, deprecations hidden
            warnings.simplefilter("default")
            for hidden in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", hidden)
            warnings.showwarning = _to_stderr
            return CliRunner().invoke(main, args, env=env, prog_name="bertnli-exp")
    finally:
        os.chdir(before)


def _to_stderr(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def invoke(args: list[str], env: dict | None = None, cwd=ROOT) -> subprocess.CompletedProcess:
    """What `subprocess.run(..., capture_output=True, text=True)` of the CLI returns, from `in_process`: the exit
    code, stdout and stderr apart (an exception the CLI let out is its exit 1 and its traceback on stderr). A run
    that hangs is ended by pytest-timeout."""
    r = in_process(args, env, cwd)
    stderr = r.stderr
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        stderr += "".join(traceback.format_exception(r.exception))
    return subprocess.CompletedProcess(["bertnli-exp", *args], r.exit_code, r.stdout, stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
