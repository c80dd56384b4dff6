"""Fit, evaluate, predict: the training loop, its checkpoints and resume.

Read it like nanoGPT's train.py: `TrainState` is what a checkpoint holds, `train_step` is one
optimisation step, `train_epoch` one pass over the batches, `fit` the run around them. Where
and how tensors run (device, precision, attention backend, batches staged ahead by a thread)
is decided in runtime.py. No MLflow here: the loop reports to callbacks (`on_fit_start`, `on_epoch_end`,
`on_fit_end`), which tracking.py and sweep/trial.py implement. Selection is on dev: the best
dev epoch's weights are kept and test is evaluated once, on them, at the end.

Under `torchrun` (WORLD_SIZE > 1) training is data parallel (DDP; gloo on CPU, nccl on
CUDA): each global batch is split across ranks, so results match one process with the
same global batch. Every rank evaluates the full dev/test set; rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from bertnli import BadInput, BertnliError
from bertnli.checkpoint import atomic_torch_save, load_last, load_selected, save_selected
from bertnli.config import TrainConfig
from bertnli.evaluation import EvalResult, evaluate, model_inputs, predict  # noqa: F401 - predict re-exported
from bertnli.model import NLIClassifier
from bertnli.pairs import EncodedSplit, collate, train_batches
from bertnli.prepare import Prepared, prepare  # noqa: F401 - re-exported for callers of engine.prepare
from bertnli.runtime import (attention_context, attention_name, autocast, cpu_has_native_bf16, dist_info, gather_rng,  # noqa: F401
                             grad_scaler, init_distributed, numeric_precision, rank_seed, resolve_device, restore_rng,
                             seed_everything, staged)


class TrainingDiverged(BertnliError):
    """The loss became NaN or infinite: the run is FAILED, never silently continued."""


# ---------------------------------------------------------------- results and callbacks


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


class Callback(Protocol):
    """What the loop reports. `on_step(global_step, losses)` is optional: `losses` are the step's per-example
    losses as a device tensor, so a callback that reads them makes the host wait for the GPU."""

    def on_fit_start(self, info: dict[str, Any]) -> None: ...
    def on_epoch_end(self, m: EpochMetrics) -> None: ...
    def on_fit_end(self, result: FitResult) -> None: ...


# ---------------------------------------------------------------- training


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Constant, or linear warmup over `warmup` of the steps then linear decay to 0."""
    if cfg.schedule == "constant":
        return cfg.lr
    warm = int(total * cfg.warmup)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * max(0.0, (total - step) / max(1, total - warm))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """BERT's recipe: weight decay on the weight matrices only, not on biases, LayerNorms or embeddings."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embeddings" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embeddings" not in n)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, fused: bool | None = None) -> torch.optim.Optimizer:
    """Fused kernels on CUDA and on the CPU (fused=None): one pass over all parameters.

    On the CPU, PyTorch's default is a Python loop over the tensors; the fused step over minilm-l6
    is several times faster and training at batch 32 about 1.1x (`benchmarks/optimizer.py`); the
    update is the same up to float rounding (tests/test_engine.py). A run resumed from a checkpoint
    written before session 6 keeps that checkpoint's unfused setting (load_state_dict restores it).
    """
    if fused is None:
        fused = device.type in ("cuda", "cpu")
    kw = {"fused": True} if fused else {}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, **kw)
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, **kw)


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
    best_dev: EvalResult | None = None  # the best epoch's dev pass, kept so the end need not run it again (not checkpointed)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "history": [asdict(h) for h in self.history], "best_dev_acc": self.best_dev_acc,
                "best_epoch": self.best_epoch, "accum": dict(self.accum)}

    def load_state_dict(self, ck: dict[str, Any]) -> None:
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.epoch, self.step_in_epoch, self.global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
        self.history = [EpochMetrics(**h) for h in ck["history"]]
        self.best_dev_acc, self.best_epoch = ck["best_dev_acc"], ck["best_epoch"]
        self.accum = {**fresh_accum(), **ck["accum"]}


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


def rank_batch(enc: EncodedSplit, idx: np.ndarray, rank: int = 0, world: int = 1, pad_to: int | None = None,
               multiple: int = 1, cap: int | None = None) -> dict[str, Any]:
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


def train_step(state: TrainState, train_model: torch.nn.Module, b: dict[str, Any], lr: float, cfg: TrainConfig,
               loop: Loop) -> tuple[torch.Tensor, torch.Tensor]:
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


def train_epoch(state: TrainState, train_model: torch.nn.Module, enc: EncodedSplit, batches: list[np.ndarray],
                cfg: TrainConfig, loop: Loop, max_steps: int | None = None) -> None:
    """Train `batches` from `state.step_in_epoch` on; this epoch's totals accumulate in `state.accum`.

    Loss, accuracy and divergence are tracked on the device and read every `loop.sync_every`
    steps, at checkpoints and at the end, so the host never waits for the GPU in between. A
    non-finite loss is reported with the epoch and step where it first appeared."""
    first = state.step_in_epoch
    last = len(batches) if max_steps is None else min(len(batches), first + max_steps)
    make = functools.partial(rank_batch, enc, rank=loop.rank, world=loop.world, pad_to=None if cfg.bucket else cfg.max_len,
                             multiple=cfg.pad_multiple, cap=cfg.max_len)
    totals = torch.zeros(3, dtype=torch.float64, device=loop.device)  # loss sum, correct, examples
    recent, recent_steps = torch.zeros(loop.sync_every, device=loop.device), []
    t0 = time.perf_counter()
    bar = tqdm(total=len(batches), initial=first, desc=f"epoch {state.epoch}/{cfg.epochs}", disable=not loop.progress, leave=False)

    def sync() -> None:
        nonlocal t0
        losses = recent[: len(recent_steps)].tolist()
        first_bad = next(((step, v) for step, v in zip(recent_steps, losses) if not math.isfinite(v)), None)
        elsewhere = loop.world > 1 and not all_finite_everywhere(losses, loop.device)  # every rank asks, so all leave together
        if first_bad:
            raise TrainingDiverged(f"loss became {first_bad[1]} at epoch {state.epoch} step {first_bad[0] + 1}; "
                                   "lower the learning rate or check the data")
        if elsewhere:
            raise TrainingDiverged(f"loss became non-finite on another process in epoch {state.epoch}; lower the learning rate")
        recent_steps.clear()
        loss_sum, correct, seen = totals.tolist()
        totals.zero_()
        now = time.perf_counter()
        state.accum = {"loss": state.accum["loss"] + loss_sum, "correct": state.accum["correct"] + correct,
                       "seen": state.accum["seen"] + seen, "seconds": state.accum["seconds"] + now - t0}
        t0 = now
        if state.accum["seen"]:
            bar.set_postfix(loss=f"{state.accum['loss'] / state.accum['seen']:.3f}", acc=f"{state.accum['correct'] / state.accum['seen']:.3f}")

    with contextlib.closing(staged(make, batches[first:last], loop.device)) as stream:  # the staging thread stops however the loop ends
        for step, b in enumerate(stream, start=first):
            per_example, logits = train_step(state, train_model, b, lr_at(state.global_step, loop.total_steps, cfg), cfg, loop)
            w = b["weight"]
            totals += torch.stack([per_example.sum(), ((logits.argmax(1) == b["labels"]) * w).sum(), w.sum()]).double()
            recent[len(recent_steps)] = per_example.sum() / w.sum().clamp(min=1)
            recent_steps.append(step)
            state.global_step += 1
            state.step_in_epoch = step + 1
            bar.update(1)
            checkpoint_now = cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < len(batches)
            if checkpoint_now or len(recent_steps) == loop.sync_every or step + 1 == last:
                sync()
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
    """(mean loss, accuracy, examples, seconds) of the epoch over all ranks (reduced on the run's device: NCCL takes no CPU tensors)."""
    t = torch.tensor([state.accum["loss"], state.accum["correct"], state.accum["seen"]], dtype=torch.float64, device=device)
    if distributed:
        dist.all_reduce(t)
    seen = max(1.0, t[2].item())
    return t[0].item() / seen, t[1].item() / seen, seen, state.accum["seconds"]


def start_state(cfg: TrainConfig, prep: Prepared, device: torch.device, precision: str, out_dir: Path, resume: bool,
                rank: int, world: int) -> tuple[TrainState, bool]:
    """A fresh train state, or the one `out_dir/last.pt` holds when resuming (with every rank's random streams)."""
    model = prep.model.to(device)
    state = TrainState(model, make_optimizer(model, cfg, device), grad_scaler(device, precision))
    last_path = out_dir / "last.pt"
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    if not (resume and last_path.is_file()):
        return state, False
    ck = load_last(last_path)
    try:
        state.load_state_dict(ck)
    except (RuntimeError, ValueError, KeyError) as e:
        raise BertnliError(f"{last_path} does not match this model/config ({str(e).splitlines()[0][:120]}); resume with the same config or delete it") from None
    restore_rng(ck["rng"], device, rank, world, cfg.seed)
    if rank == 0:
        print(f"resuming from {last_path}: epoch {state.epoch}, step {state.step_in_epoch}/{math.ceil(len(prep.train) / cfg.batch_size)}")
    return state, True


def score_selected(cfg: TrainConfig, prep: Prepared, out_dir: Path, evaluate_on: Callable, distributed: bool,
                  progress: bool, best_dev: EvalResult | None = None) -> tuple[EvalResult, EvalResult | None]:
    """The weights selected on dev, scored on dev and, once, on test (read back from `best/`, as a user would load them).

    `best_dev`, the selected epoch's own dev pass, saves a second pass over dev: a fixed cost per run
    that weighs most on short runs such as a multi-fidelity sweep's low rungs."""
    if distributed:
        dist.barrier()  # rank 0 has written best/ before anyone reads it
    wants_test = cfg.eval_test and prep.test is not None
    if best_dev is not None and not wants_test:  # the best epoch's own dev pass scored these very weights
        return best_dev, None
    selected = load_selected(out_dir / "best")[0].to(evaluate_on.keywords["device"])
    dev = best_dev if best_dev is not None else evaluate_on(selected, prep.dev)  # None after a resume past the best epoch
    test = evaluate_on(selected, prep.test, progress=progress, desc="test") if wants_test else None
    return dev, test


def run_info(cfg: TrainConfig, prep: Prepared, state: TrainState, device: torch.device, world: int, out_dir: Path,
             resumed: bool, precision: str) -> dict[str, Any]:
    """What the run's callbacks are told at its start (tracking.py records it as `bertnli.*` tags)."""
    return {"device": str(device), "world_size": world, "train_examples": len(prep.train), "dev_examples": len(prep.dev),
            "test_examples": len(prep.test) if prep.test is not None else 0,
            "steps_per_epoch": math.ceil(len(prep.train) / cfg.batch_size),
            "parameters": sum(p.numel() for p in state.model.parameters()), "digests": prep.digests, "out_dir": str(out_dir),
            "resumed": resumed, "precision": precision, "attention": attention_name(device),
            "history": [asdict(h) for h in state.history]}  # epochs a resumed checkpoint holds (tracking logs any MLflow lacks)


def training_forward(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, distributed: bool) -> torch.nn.Module:
    """The module the steps call: DDP around the model under torchrun, compiled when asked."""
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model, dynamic=True) if cfg.compile else model


def fit(cfg: TrainConfig, out_dir: str | Path, callbacks: list[Callback] | None = None, resume: bool = False,
        prepared: Prepared | None = None, progress: bool = True) -> FitResult:
    """Train `cfg`, selecting the best dev epoch; writes checkpoints under `out_dir`.

    With `resume`, continues from `out_dir/last.pt` at the exact step it was written,
    with the same batches, optimizer state and RNG state as an uninterrupted run.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    last_path = out_dir / "last.pt"
    device = resolve_device(cfg.device)
    distributed = init_distributed(device)
    rank, world = dist_info()
    is_main = rank == 0
    seed_everything(cfg.seed)
    prep = prepared or prepare(cfg)
    if prep.train is None:
        raise BadInput(f"no train split in {cfg.data}; training needs snli_1.0_train.*")
    if cfg.batch_size % world:
        raise BadInput(f"batch_size {cfg.batch_size} is not divisible by {world} processes; choose a multiple")
    if rank:
        torch.manual_seed(rank_seed(cfg.seed, rank))
    precision = numeric_precision(device, cfg.amp)
    state, resumed = start_state(cfg, prep, device, precision, out_dir, resume, rank, world)

    def checkpoint(s: TrainState) -> None:
        rngs = gather_rng(device, distributed)
        if is_main:
            atomic_torch_save({**s.state_dict(), "rng": rngs}, last_path)

    steps_per_epoch = math.ceil(len(prep.train) / cfg.batch_size)
    loop = Loop(device, precision, steps_per_epoch * cfg.epochs, rank, world, (callbacks or []) if is_main else [], checkpoint,
                progress and is_main)
    info = run_info(cfg, prep, state, device, world, out_dir, resumed, precision)
    for cb in loop.callbacks:
        cb.on_fit_start(info)
    model, train_model = state.model, training_forward(state.model, cfg, device, distributed)

    evaluate_on = functools.partial(evaluate, batch_size=cfg.eval_batch_size, device=device, bucket=cfg.bucket, amp=cfg.amp,
                                    pad_multiple=cfg.pad_multiple)
    with attention_context(device):
        while state.epoch <= cfg.epochs:
            model.train()
            batches = train_batches(prep.train.lengths, cfg.batch_size, cfg.seed, state.epoch, cfg.bucket)
            train_epoch(state, train_model, prep.train, batches, cfg, loop)
            end_epoch(state, evaluate_on(model, prep.dev, progress=progress and is_main, desc="dev"), distributed, is_main,
                      prep, out_dir, cfg)
            checkpoint(state)
            for cb in loop.callbacks:
                cb.on_epoch_end(state.history[-1])  # may raise (a sweep's pruner): the checkpoint above is already safe

    dev_sel, test = score_selected(cfg, prep, out_dir, evaluate_on, distributed, progress and is_main, state.best_dev)  # test once
    result = FitResult(state.best_epoch, state.best_dev_acc, state.history, test, dev_sel, out_dir, time.perf_counter() - t_start, info)
    if is_main:
        (out_dir / "result.json").write_text(json.dumps({
            "best_epoch": state.best_epoch, "best_dev_acc": state.best_dev_acc, "test_acc": test.acc if test else None,
            "history": [asdict(h) for h in state.history], "wall_seconds": result.wall_seconds}, indent=2))
    for cb in loop.callbacks:
        cb.on_fit_end(result)
    return result


def end_epoch(state: TrainState, dev: EvalResult, distributed: bool, is_main: bool, prep: Prepared, out_dir: Path,
              cfg: TrainConfig) -> None:
    """Record the finished epoch, keep its weights if dev says they are the best so far, move to the next."""
    loss, acc, seen, seconds = epoch_totals(state, distributed, next(state.model.parameters()).device)
    m = EpochMetrics(state.epoch, loss, acc, dev.loss, dev.acc, seen / max(seconds, 1e-9), seconds,
                     lr_at(max(state.global_step - 1, 0), math.ceil(len(prep.train) / cfg.batch_size) * cfg.epochs, cfg))
    state.history.append(m)
    if is_main:
        print(f"epoch {m.epoch}: train_loss {m.train_loss:.4f} train_acc {m.train_acc:.4f} dev_loss {m.dev_loss:.4f} "
              f"dev_acc {m.dev_acc:.4f} ({m.examples_per_sec:.1f} ex/s)", flush=True)
    if dev.acc > state.best_dev_acc:
        state.best_dev_acc, state.best_epoch, state.best_dev = dev.acc, state.epoch, dev
        if is_main:
            save_selected(state.model, prep.tokenizer, out_dir / "best", {"epoch": state.epoch, "dev_acc": dev.acc, "config": asdict(cfg)})
    state.epoch, state.step_in_epoch, state.accum = state.epoch + 1, 0, fresh_accum()
