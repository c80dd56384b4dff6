"""Where and how the tensors run: device, ranks, numeric precision, attention backend, batches staged ahead.

Kept apart from the training loop because every choice here is a per-device policy, decided
once per run and recorded with it (run tags `bertnli.precision`, `bertnli.attention`). No
MLflow or Optuna: the GPU machines run this module without them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import random
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from bertnli import BadInput

# ---------------------------------------------------------------- devices and ranks


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str, cuda_available: bool | None = None) -> torch.device:
    """`auto` and a bare `cuda` mean this process's own GPU under torchrun (`cuda:LOCAL_RANK`), never all on GPU 0.

    `cuda_available` defaults to asking torch; tests pass True to check the mapping on a CPU machine."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if name == "auto":
        return torch.device("cuda", local_rank()) if cuda_available else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BadInput(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type not in ("cpu", "cuda"):
        raise BadInput(f"device {name!r} is not supported; use auto, cpu or cuda[:N]")
    if device.type == "cuda":
        if not cuda_available:
            raise BadInput(f"device {name!r} asked for, but this machine has no CUDA GPU; use --device cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank())
    return device


RENDEZVOUS = "BERTNLI_RENDEZVOUS"  # a file no rank has opened yet, where a trial's ranks meet (torch's FileStore)


def init_distributed(device: torch.device) -> bool:
    """Whether this run is data parallel; the process group is joined once per process (a second fit, as
    `train --seeds` runs them, uses the same group instead of silently training alone)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if dist.is_initialized():
        return True
    if device.type == "cuda":
        torch.cuda.set_device(device)  # nccl binds each rank to the device current at init
    backend = "nccl" if device.type == "cuda" else "gloo"
    meeting = os.environ.get(RENDEZVOUS)
    if meeting:  # a sweep's trial: its ranks meet in a file, not on a port another process could take first
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(backend, store=dist.FileStore(meeting, world), rank=rank, world_size=world)
    else:  # torchrun's variables (MASTER_ADDR, MASTER_PORT, ...)
        dist.init_process_group(backend)
    return True


def dist_info() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed for a rank's dropout masks: rank 0 keeps `seed` (so one process matches rank 0),
    the others get their own streams (the same seed everywhere would drop the same units on every rank)."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """What dropout draws from: the CPU generator, and the GPU's own when training there."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor] | torch.Tensor, device: torch.device) -> None:
    if isinstance(state, torch.Tensor):  # checkpoints written before the GPU state was kept
        state = {"cpu": state}
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_rng(device: torch.device, distributed: bool) -> list[dict[str, torch.Tensor]]:
    """Every rank's generator state, in rank order (each rank draws its own dropout masks)."""
    mine = rng_state(device)
    if not distributed:
        return [mine]
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, {k: v.cpu() for k, v in mine.items()})
    return states


def restore_rng(saved: Any, device: torch.device, rank: int, world: int, seed: int) -> None:
    if isinstance(saved, list) and len(saved) == world:
        set_rng_state(saved[rank], device)
    elif rank == 0:
        set_rng_state(saved[0] if isinstance(saved, list) else saved, device)
    else:  # resumed with another number of processes: the batches stay exact, dropout draws anew
        torch.manual_seed(rank_seed(seed, rank) + 1)


# ---------------------------------------------------------------- precision


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run 2-4x faster than fp32 there (elsewhere they are emulated, slower)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Ampere and later; older GPUs emulate bf16 slowly, so they get fp16 with a loss scaler instead."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def numeric_precision(device: torch.device, amp: bool) -> str:
    """`bf16-autocast` where the hardware does bf16 natively, `fp16-autocast` (with a GradScaler) on a GPU
    that does not, else `fp32`. Recorded with the run: it changes the numbers in the 4th decimal."""
    if not amp:
        return "fp32"
    if device.type == "cuda":
        return "bf16-autocast" if cuda_has_native_bf16(device) else "fp16-autocast"
    return "bf16-autocast" if cpu_has_native_bf16() else "fp32"


AUTOCAST_DTYPES = {"bf16-autocast": torch.bfloat16, "fp16-autocast": torch.float16}


def autocast(device: torch.device, precision: str):
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Only fp16 needs loss scaling (bf16 has fp32's range); a disabled scaler is a no-op with the same API."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16-autocast")


# ---------------------------------------------------------------- attention backend


def attention_backends(device: torch.device) -> list | None:
    """SDPA backends allowed on this device, or None for PyTorch's own choice (the CPU path).

    On CUDA, cuDNN attention is excluded on purpose: with a key-padding mask PyTorch prefers it on
    Hopper, and it pays a large set-up cost for every new (batch, width) shape (measured on an H200:
    4,294 ex/s on a first pass over 24 widths against 47,762 without it; benchmarks/gpu.py). The
    memory-efficient kernel takes the mask; flash serves batches without padding."""
    if device.type != "cuda":
        return None
    from torch.nn.attention import SDPBackend

    return [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]


def attention_name(device: torch.device) -> str:
    backends = attention_backends(device)
    return (
        "sdpa:default"
        if backends is None
        else "sdpa:" + ",".join(b.name.lower().removesuffix("_attention") for b in backends)
    )


def attention_context(device: torch.device):
    backends = attention_backends(device)
    if backends is None:
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(backends)


# ---------------------------------------------------------------- batches staged ahead


def staged(
    make: Callable[[np.ndarray], dict[str, torch.Tensor]],
    batches: Iterable[np.ndarray],
    device: torch.device,
    ahead: int = 3,
    threaded: bool | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """On CUDA, collate batches in a background thread while the GPU works on earlier ones.

    Each batch is pinned there and copied with `non_blocking=True`, so neither collation nor the
    copy holds the GPU back. On a CPU, batches are made in line (measured: a thread there gains
    nothing on 2 cores). Order and content are exactly those of `batches`.
    """
    if not (
        device.type == "cuda" if threaded is None else threaded
    ):  # on a CPU a thread competes with the model for the cores
        yield from map(make, batches)
        return
    pin = device.type == "cuda"
    q: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    done = object()

    def hand_over(item) -> bool:
        """Put unless the consumer has gone (a full queue would otherwise block this thread for ever)."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for idx in batches:
                b = {k: (v.pin_memory() if pin and isinstance(v, torch.Tensor) else v) for k, v in make(idx).items()}
                if not hand_over(b):
                    return
            hand_over(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            hand_over(e)

    worker = threading.Thread(target=produce, daemon=True, name="bertnli-batches")
    worker.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in item.items()}
    finally:
        stop.set()
        worker.join(timeout=5)
