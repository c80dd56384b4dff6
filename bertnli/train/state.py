"""What a run is made of between steps: the train state a checkpoint holds, the per-epoch metrics, the
result, and the callback interface through which a run reports (tracking/run.py, the sweep's trials)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from bertnli import BertnliError
from bertnli.model.bert import NLIClassifier
from bertnli.train.evaluation import EvalResult


class TrainingDiverged(BertnliError):
    """The loss became NaN or infinite: the run is FAILED, never silently continued."""


@dataclass
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    dev_loss: float
    dev_acc: float
    examples_per_sec: float
    train_seconds: float
    lr: float


@dataclass
class FitResult:
    best_epoch: int
    best_dev_acc: float
    history: list[EpochMetrics]
    test: EvalResult | None
    dev: EvalResult | None  # the selected weights on dev
    out_dir: Path
    wall_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)  # train/cost.py: size, peak memory, latency


class Callback(Protocol):
    """What the loop reports. `on_step(global_step, losses)` is optional: `losses` are the step's per-example
    losses as a device tensor, so a callback that reads them makes the host wait for the GPU."""

    def on_fit_start(self, info: dict[str, Any]) -> None: ...
    def on_epoch_end(self, m: EpochMetrics) -> None: ...
    def on_fit_end(self, result: FitResult) -> None: ...


def fresh_accum() -> dict[str, float]:
    return {"loss": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0}


@dataclass
class TrainState:
    """What a checkpoint holds: enough to continue at the exact step, with the same batches and dropout."""

    model: NLIClassifier
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    epoch: int = 1  # the epoch being trained (1-based)
    step_in_epoch: int = 0  # steps of it already taken
    global_step: int = 0
    history: list[EpochMetrics] = field(default_factory=list)
    best_dev_acc: float = -1.0
    best_epoch: int = 0
    accum: dict[str, float] = field(default_factory=fresh_accum)  # this epoch's totals so far, on the host
    best_dev: EvalResult | None = (
        None  # the best epoch's dev pass, kept so the end need not run it again (not checkpointed)
    )

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "history": [asdict(h) for h in self.history],
            "best_dev_acc": self.best_dev_acc,
            "best_epoch": self.best_epoch,
            "accum": dict(self.accum),
        }

    def load_state_dict(self, ck: dict[str, Any]) -> None:
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.epoch, self.step_in_epoch, self.global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
        self.history = [EpochMetrics(**h) for h in ck["history"]]
        self.best_dev_acc, self.best_epoch = ck["best_dev_acc"], ck["best_epoch"]
        self.accum = {**fresh_accum(), **ck["accum"]}
