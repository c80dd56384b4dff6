"""The inner loop, read like nanoGPT's train.py: `train_step` is one optimisation step, `train_epoch` one
pass over an epoch's batches from wherever a resumed state stopped.

Under `torchrun` (WORLD_SIZE > 1) each global batch is split across ranks (`rank_batch`), so the
result matches one process with the same global batch. Where the tensors run (device, precision,
batches staged ahead by a thread) is runtime.py's decision.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from bertnli.config import TrainConfig
from bertnli.data.batches import collate
from bertnli.data.encode import EncodedSplit
from bertnli.train.evaluation import model_inputs
from bertnli.train.optimizer import lr_at
from bertnli.train.runtime import autocast, staged
from bertnli.train.state import TrainingDiverged, TrainState


@dataclass
class Loop:
    """How a run's steps execute; fixed for the run (device, precision, ranks, where checkpoints go)."""

    device: torch.device
    precision: str
    total_steps: int
    rank: int = 0
    world: int = 1
    callbacks: list = field(default_factory=list)
    checkpoint: Callable[[TrainState], None] = lambda state: None
    progress: bool = False
    sync_every: int = 50  # steps between reads of the device's running totals (each read waits for the GPU)


def rank_batch(
    enc: EncodedSplit,
    idx: np.ndarray,
    rank: int = 0,
    world: int = 1,
    pad_to: int | None = None,
    multiple: int = 1,
    cap: int | None = None,
) -> dict[str, Any]:
    """This rank's share of global batch `idx`, with per-example weights.

    A last batch smaller than the number of ranks leaves some rank with nothing: it takes one
    example at weight 0, so that it still joins the gradient all-reduce (an empty rank would
    hang the others) and adds nothing to it."""
    mine = idx[rank::world]
    weight = np.ones(len(mine), dtype=np.float32)
    if len(mine) == 0:
        mine, weight = idx[:1], np.zeros(1, dtype=np.float32)
    b = collate(enc, mine, pad_to, multiple, cap)
    b["weight"] = torch.from_numpy(weight)
    b["global_examples"] = len(idx)
    return b


def train_step(
    state: TrainState, train_model: torch.nn.Module, b: dict[str, Any], lr: float, cfg: TrainConfig, loop: Loop
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; returns (per-example losses, logits), detached and still on the device.

    The loss is the weighted sum over this rank's examples divided by the *global* batch size
    (times the world size, which DDP's gradient averaging divides out): every example of the
    global batch weighs the same, however unevenly the last batch splits across ranks."""
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    with autocast(loop.device, loop.precision):
        logits = train_model(*model_inputs(b)).float()
    per_example = F.cross_entropy(logits, b["labels"], reduction="none") * b["weight"]
    loss = per_example.sum() * (loop.world / b["global_examples"])
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if cfg.grad_clip > 0:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    return per_example.detach(), logits.detach()


class DeviceTotals:
    """An epoch's loss sum, correct count, examples and recent per-step losses, kept on the device.

    The host reads them only in `sync` (a read waits for the GPU): every `sync_every` steps, at
    checkpoints and at the end of the epoch. A non-finite loss is reported with the epoch and step
    where it first appeared, on every rank at once."""

    def __init__(self, device: torch.device, sync_every: int):
        self.device = device
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, examples
        self.recent = torch.zeros(sync_every, device=device)
        self.recent_steps: list[int] = []
        self.t0 = time.perf_counter()

    @property
    def due(self) -> bool:
        return len(self.recent_steps) == len(self.recent)

    def add(self, step: int, per_example: torch.Tensor, logits: torch.Tensor, b: dict[str, Any]) -> None:
        w = b["weight"]
        self.sums += torch.stack([per_example.sum(), ((logits.argmax(1) == b["labels"]) * w).sum(), w.sum()]).double()
        self.recent[len(self.recent_steps)] = per_example.sum() / w.sum().clamp(min=1)
        self.recent_steps.append(step)

    def sync(self, state: TrainState, world: int) -> None:
        """Fold the device's totals into `state.accum`; stop the run if a recent loss was not finite."""
        losses = self.recent[: len(self.recent_steps)].tolist()
        first_bad = next(((step, v) for step, v in zip(self.recent_steps, losses) if not math.isfinite(v)), None)
        elsewhere = world > 1 and not all_finite_everywhere(losses, self.device)  # every rank asks: all leave together
        if first_bad:
            raise TrainingDiverged(
                f"loss became {first_bad[1]} at epoch {state.epoch} step {first_bad[0] + 1}; "
                "lower the learning rate or check the data"
            )
        if elsewhere:
            raise TrainingDiverged(
                f"loss became non-finite on another process in epoch {state.epoch}; lower the learning rate"
            )
        self.recent_steps.clear()
        loss_sum, correct, seen = self.sums.tolist()
        self.sums.zero_()
        now = time.perf_counter()
        a = state.accum
        state.accum = {
            "loss": a["loss"] + loss_sum,
            "correct": a["correct"] + correct,
            "seen": a["seen"] + seen,
            "seconds": a["seconds"] + now - self.t0,
        }
        self.t0 = now


def train_epoch(
    state: TrainState,
    train_model: torch.nn.Module,
    enc: EncodedSplit,
    batches: list[np.ndarray],
    cfg: TrainConfig,
    loop: Loop,
    max_steps: int | None = None,
) -> None:
    """Train `batches` from `state.step_in_epoch` on; this epoch's totals accumulate in `state.accum`
    (read from the device only now and then: `DeviceTotals`)."""
    first = state.step_in_epoch
    last = len(batches) if max_steps is None else min(len(batches), first + max_steps)
    pad_to = None if cfg.bucket else cfg.max_len
    make = functools.partial(
        rank_batch, enc, rank=loop.rank, world=loop.world, pad_to=pad_to, multiple=cfg.pad_multiple, cap=cfg.max_len
    )
    totals = DeviceTotals(loop.device, loop.sync_every)
    desc = f"epoch {state.epoch}/{cfg.epochs}"
    bar = tqdm(total=len(batches), initial=first, desc=desc, disable=not loop.progress, leave=False)
    with contextlib.closing(
        staged(make, batches[first:last], loop.device)
    ) as stream:  # the thread stops however we end
        for step, b in enumerate(stream, start=first):
            lr = lr_at(state.global_step, loop.total_steps, cfg)
            per_example, logits = train_step(state, train_model, b, lr, cfg, loop)
            totals.add(step, per_example, logits, b)
            state.global_step += 1
            state.step_in_epoch = step + 1
            bar.update(1)
            checkpoint_now = cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < len(batches)
            if checkpoint_now or totals.due or step + 1 == last:
                totals.sync(state, loop.world)
                seen = max(state.accum["seen"], 1)
                bar.set_postfix(loss=f"{state.accum['loss'] / seen:.3f}", acc=f"{state.accum['correct'] / seen:.3f}")
            if checkpoint_now:
                loop.checkpoint(state)
            for cb in loop.callbacks:
                if hasattr(cb, "on_step"):
                    cb.on_step(state.global_step, per_example)
    bar.close()


def all_finite_everywhere(losses: list[float], device: torch.device) -> bool:
    """Whether every rank's recent losses are finite: all ranks leave together when one diverges."""
    bad = torch.tensor([float(not all(map(math.isfinite, losses)))], device=device)
    dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bad.item() == 0


def epoch_totals(state: TrainState, distributed: bool, device: torch.device) -> tuple[float, float, float, float]:
    """(mean loss, accuracy, examples, seconds) of the epoch over all ranks (reduced on the run's device: NCCL takes no
    CPU tensors).
    """
    t = torch.tensor(
        [state.accum["loss"], state.accum["correct"], state.accum["seen"]], dtype=torch.float64, device=device
    )
    if distributed:
        dist.all_reduce(t)
    seen = max(1.0, t[2].item())
    return t[0].item() / seen, t[1].item() / seen, seen, state.accum["seconds"]
