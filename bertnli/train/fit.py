"""`fit`: one run around the loop: start or resume, an epoch at a time, select on dev, test once.

Selection is on dev: the best dev epoch's weights are kept (`best/`) and test is evaluated once,
on them, at the end. With `resume`, a run continues from `last.pt` at the exact step it was
written, with the same batches, optimizer state and random streams as an uninterrupted run.
Under `torchrun` training is data parallel (DDP; gloo on CPU, nccl on CUDA); every rank
evaluates the full dev/test set; rank 0 alone writes.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from bertnli import BadInput, BertnliError
from bertnli.config import TrainConfig
from bertnli.data.batches import train_batches
from bertnli.files import atomic_write
from bertnli.train.checkpoint import START_OVER, check_selected, load_last, load_selected, save_last, save_selected
from bertnli.train.cost import measure, peak_memory_mib, reset_peak_memory
from bertnli.train.evaluation import EvalResult, evaluate
from bertnli.train.loop import Loop, epoch_totals, train_epoch
from bertnli.train.optimizer import lr_at, make_optimizer
from bertnli.train.prepare import Prepared, prepare
from bertnli.train.runtime import (
    attention_context,
    attention_name,
    dist_info,
    gather_rng,
    grad_scaler,
    init_distributed,
    numeric_precision,
    rank_seed,
    resolve_device,
    restore_rng,
    seed_everything,
)
from bertnli.train.state import Callback, EpochMetrics, FitResult, TrainState, fresh_accum


def start_state(
    cfg: TrainConfig,
    prep: Prepared,
    device: torch.device,
    precision: str,
    out_dir: Path,
    resume: bool,
    rank: int,
    world: int,
) -> tuple[TrainState, bool]:
    """A fresh train state, or the one `out_dir/last.pt` holds when resuming (with every rank's random streams)."""
    model = prep.model.to(device)
    state = TrainState(model, make_optimizer(model, cfg, device), grad_scaler(device, precision))
    last_path = out_dir / "last.pt"
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / "config.json", json.dumps(asdict(cfg), indent=2))
    if not (resume and last_path.is_file()):
        return state, False
    ck = load_last(last_path)
    try:
        state.load_state_dict(ck)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise BertnliError(
            f"{last_path} does not match this model/config ({str(e).splitlines()[0][:120]}); resume with the same "
            f"config, or {START_OVER}"
        ) from None
    if state.best_epoch:
        check_selected(out_dir / "best", state.best_epoch)
    restore_rng(ck["rng"], device, rank, world, cfg.seed)
    if rank == 0:
        print(
            f"resuming from {last_path}: epoch {state.epoch}, step "
            f"{state.step_in_epoch}/{math.ceil(len(prep.train) / cfg.batch_size)}"
        )
    return state, True


def score_selected(
    cfg: TrainConfig,
    prep: Prepared,
    out_dir: Path,
    evaluate_on: Callable,
    distributed: bool,
    progress: bool,
    best_dev: EvalResult | None = None,
) -> tuple[EvalResult, EvalResult | None, torch.nn.Module | None]:
    """The weights selected on dev, scored on dev and, once, on test (read back from `best/`, as a user loads them),
    and the model read back, when it was (the cost measurement reuses it).

    `best_dev`, the selected epoch's own dev pass, saves a second pass over dev: a fixed cost per run
    that weighs most on short runs such as a multi-fidelity sweep's low rungs."""
    if distributed:
        dist.barrier()  # rank 0 has written best/ before anyone reads it
    wants_test = cfg.eval_test and prep.test is not None
    if best_dev is not None and not wants_test:  # the best epoch's own dev pass scored these very weights
        return best_dev, None, None
    selected = load_selected(out_dir / "best")[0].to(evaluate_on.keywords["device"])
    dev = (
        best_dev if best_dev is not None else evaluate_on(selected, prep.dev)
    )  # None after a resume past the best epoch
    test = evaluate_on(selected, prep.test, progress=progress, desc="test") if wants_test else None
    return dev, test, selected


def run_costs(
    cfg: TrainConfig,
    prep: Prepared,
    state: TrainState,
    out_dir: Path,
    device: torch.device,
    selected: torch.nn.Module | None,
) -> dict[str, float]:
    """What the run cost (train/cost.py), on the selected weights. `selected` is the model `score_selected` read
    back to test: reading `best/` again would add a fixed cost to every run, and to every trial's overhead.
    The peak memory is read first, before anything more is loaded or timed."""
    costs = {"train_seconds": sum(m.train_seconds for m in state.history), "peak_mem_mib": peak_memory_mib(device)}
    selected = selected if selected is not None else load_selected(out_dir / "best")[0].to(device)
    return costs | measure(selected, prep.dev, device, cfg.amp)


def run_info(
    cfg: TrainConfig,
    prep: Prepared,
    state: TrainState,
    device: torch.device,
    world: int,
    out_dir: Path,
    resumed: bool,
    precision: str,
) -> dict[str, Any]:
    """What the run's callbacks are told at its start (tracking/run.py records it as `bertnli.*` tags)."""
    return {
        "device": str(device),
        "world_size": world,
        "train_examples": len(prep.train),
        "dev_examples": len(prep.dev),
        "test_examples": len(prep.test) if prep.test is not None else 0,
        "steps_per_epoch": math.ceil(len(prep.train) / cfg.batch_size),
        "parameters": sum(p.numel() for p in state.model.parameters()),
        "digests": prep.digests,
        "out_dir": str(out_dir),
        "resumed": resumed,
        "start_epoch": state.epoch,  # a resumed run trains from here: the epochs before it came from the checkpoint
        "precision": precision,
        "attention": attention_name(device),
        "history": [asdict(h) for h in state.history],
    }  # epochs a resumed checkpoint holds (tracking logs any MLflow lacks)


def training_forward(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device, distributed: bool
) -> torch.nn.Module:
    """The module the steps call: DDP around the model under torchrun, compiled when asked."""
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model, dynamic=True) if cfg.compile else model


def join_processes(cfg: TrainConfig) -> tuple[torch.device, bool, int, int]:
    """This process's device, whether the run is data parallel (torchrun), its rank and the world size."""
    device = resolve_device(cfg.device)
    distributed = init_distributed(device)
    return (device, distributed, *dist_info())


def check_trainable(cfg: TrainConfig, prep: Prepared, world: int) -> None:
    if prep.train is None:
        raise BadInput(f"no train split in {cfg.data}; training needs snli_1.0_train.*")
    if cfg.batch_size % world:
        raise BadInput(f"batch_size {cfg.batch_size} is not divisible by {world} processes; choose a multiple")


def evaluator(cfg: TrainConfig, device: torch.device) -> Callable:
    """`evaluate` with the run's batch size, device, bucketing, precision and padding."""
    return functools.partial(
        evaluate,
        batch_size=cfg.eval_batch_size,
        device=device,
        bucket=cfg.bucket,
        amp=cfg.amp,
        pad_multiple=cfg.pad_multiple,
    )


def write_result(out_dir: Path, result: FitResult) -> None:
    """`result.json` beside the checkpoints: what a sweep's trial and a later reader take the run's outcome from."""
    summary = {
        "best_epoch": result.best_epoch,
        "best_dev_acc": result.best_dev_acc,
        "test_acc": result.test.acc if result.test else None,
        "history": [asdict(h) for h in result.history],
        "wall_seconds": result.wall_seconds,
        "costs": result.costs,
    }
    atomic_write(out_dir / "result.json", json.dumps(summary, indent=2))


def fit(
    cfg: TrainConfig,
    out_dir: str | Path,
    callbacks: list[Callback] | None = None,
    resume: bool = False,
    prepared: Prepared | None = None,
    progress: bool = True,
) -> FitResult:
    """Train `cfg`, selecting the best dev epoch; checkpoints under `out_dir`, from which `resume` continues."""
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    device, distributed, rank, world = join_processes(cfg)
    reset_peak_memory(device)
    is_main = rank == 0
    seed_everything(cfg.seed)
    prep = prepared or prepare(cfg)
    check_trainable(cfg, prep, world)
    if rank:
        torch.manual_seed(rank_seed(cfg.seed, rank))
    precision = numeric_precision(device, cfg.amp)
    state, resumed = start_state(cfg, prep, device, precision, out_dir, resume, rank, world)

    def checkpoint(s: TrainState) -> None:
        rngs = gather_rng(device, distributed)
        if is_main:
            save_last({**s.state_dict(), "rng": rngs}, out_dir / "last.pt")

    total_steps = math.ceil(len(prep.train) / cfg.batch_size) * cfg.epochs
    reporting = (callbacks or []) if is_main else []
    loop = Loop(device, precision, total_steps, rank, world, reporting, checkpoint, progress and is_main)
    info = run_info(cfg, prep, state, device, world, out_dir, resumed, precision)
    callbacks_agreed(lambda: [cb.on_fit_start(info) for cb in loop.callbacks], distributed, is_main, "at its start")
    model, train_model = state.model, training_forward(state.model, cfg, device, distributed)
    evaluate_on = evaluator(cfg, device)
    with attention_context(device):
        while state.epoch <= cfg.epochs:
            model.train()
            batches = train_batches(prep.train.lengths, cfg.batch_size, cfg.seed, state.epoch, cfg.bucket)
            train_epoch(state, train_model, prep.train, batches, cfg, loop)
            dev = evaluate_on(model, prep.dev, progress=progress and is_main, desc="dev")
            end_epoch(state, dev, distributed, is_main, prep, out_dir, cfg)
            checkpoint(state)  # a callback may end the run here (a sweep's pruner): the checkpoint is already safe
            m = state.history[-1]
            callbacks_agreed(
                lambda: [cb.on_epoch_end(m) for cb in loop.callbacks], distributed, is_main, f"after epoch {m.epoch}"
            )

    test_progress = progress and is_main
    dev_sel, test, selected = score_selected(
        cfg, prep, out_dir, evaluate_on, distributed, test_progress, state.best_dev
    )
    wall = time.perf_counter() - t_start
    costs = run_costs(cfg, prep, state, out_dir, device, selected) if is_main else {}
    del selected  # a second copy of the model (on the GPU too) need not live through the callbacks' logging
    result = FitResult(state.best_epoch, state.best_dev_acc, state.history, test, dev_sel, out_dir, wall, info, costs)
    if is_main:
        write_result(out_dir, result)
    for cb in loop.callbacks:
        cb.on_fit_end(result)
    return result


class StoppedWithRankZero(BertnliError):
    """Rank 0's callback ended the run; this rank ends with it."""


def callbacks_agreed(call: Callable[[], None], distributed: bool, is_main: bool, where: str) -> None:
    """`call` (rank 0's callbacks) on rank 0; under DDP every rank then learns whether it ended the run (a
    pruner's answer, an MLflow outage, a GPU out of memory), so all ranks stop together instead of the
    others waiting in the next collective for a rank that has gone."""
    error: BaseException | None = None
    try:
        call()
    except BaseException as e:  # re-raised below, once every rank knows
        error = e
    if distributed:
        verdict = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(verdict, src=0)
        if verdict[0] is not None and not is_main:
            raise StoppedWithRankZero(f"rank 0 ended the run {where} ({verdict[0]})")
    if error is not None:
        raise error


def end_epoch(
    state: TrainState,
    dev: EvalResult,
    distributed: bool,
    is_main: bool,
    prep: Prepared,
    out_dir: Path,
    cfg: TrainConfig,
) -> None:
    """Record the finished epoch, keep its weights if dev says they are the best so far, move to the next."""
    loss, acc, seen, seconds = epoch_totals(state, distributed, next(state.model.parameters()).device)
    m = EpochMetrics(
        state.epoch,
        loss,
        acc,
        dev.loss,
        dev.acc,
        seen / max(seconds, 1e-9),
        seconds,
        lr_at(max(state.global_step - 1, 0), math.ceil(len(prep.train) / cfg.batch_size) * cfg.epochs, cfg),
    )
    state.history.append(m)
    if is_main:
        print(
            f"epoch {m.epoch}: train_loss {m.train_loss:.4f} train_acc {m.train_acc:.4f} dev_loss {m.dev_loss:.4f} "
            f"dev_acc {m.dev_acc:.4f} ({m.examples_per_sec:.1f} ex/s)",
            flush=True,
        )
    if dev.acc > state.best_dev_acc:
        state.best_dev_acc, state.best_epoch, state.best_dev = dev.acc, state.epoch, dev
        if is_main:
            save_selected(
                state.model,
                prep.tokenizer,
                out_dir / "best",
                {"epoch": state.epoch, "dev_acc": dev.acc, "config": asdict(cfg)},
            )
    state.epoch, state.step_in_epoch, state.accum = state.epoch + 1, 0, fresh_accum()
