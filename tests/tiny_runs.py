"""Helpers shared by tests: a tiny run's config, engine callbacks, `bertnli-exp` as a subprocess, a free port."""

import socket
import subprocess
import sys

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


def cli(*args, timeout=300, cwd=ROOT, **env):
    return subprocess.run(
        [sys.executable, "-m", "bertnli.cli", *map(str, args)],
        cwd=cwd,
        env=run_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
