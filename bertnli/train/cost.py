"""What a trained model costs besides its accuracy: its size, the memory training took, and how fast it answers.

A study that trades accuracy against cost (sweep --objective) reads these from every run, so they are
measured the same way for every run: on the selected weights, with the engine's own `evaluate`, after
training (they never slow an epoch).
"""

from __future__ import annotations

import resource
import time

import numpy as np
import torch

from bertnli.data.encode import EncodedSplit
from bertnli.train.evaluation import evaluate

LATENCY_BATCHES = (1, 256)  # one request at a time, and a batch job's throughput


def reset_peak_memory(device: torch.device) -> None:
    """At a run's start: on CUDA its peak is then its own, not that of a run before it in this process. A
    process's peak resident memory cannot be reset: on the CPU, a run after a bigger one in one process
    (`reproduce`, seed groups) reports the bigger one's peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """On CUDA the peak of tensors allocated on this process's GPU since `reset_peak_memory` (training, the dev
    passes and, where the run tests, the test pass); elsewhere this process's peak resident memory (Linux reports
    KiB), which includes the interpreter and libraries."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cycled(enc: EncodedSplit, n: int) -> EncodedSplit:
    """n rows of `enc`, repeating them when it holds fewer (a tiny dev split still fills a batch of 256)."""
    return enc.take(np.sort(np.arange(n) % len(enc)))


def _timed(call, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def latency_ms(
    model: torch.nn.Module,
    enc: EncodedSplit,
    device: torch.device,
    amp: bool = True,
    batches: tuple[int, ...] = LATENCY_BATCHES,
    requests: int = 16,
) -> dict[str, float]:
    """Milliseconds per batch of `evaluate` at each batch size: at batch 1 the mean over `requests` pairs, at
    larger batches the fastest of two batches, each after one warm-up call (kernel selection, allocator)."""
    out = {}
    for b in batches:
        sample = cycled(enc, requests if b == 1 else b)
        run = lambda s=sample, b=b: evaluate(model, s, batch_size=b, device=device, amp=amp)  # noqa: E731
        run()
        if b == 1:
            out["latency_ms_b1"] = 1000 * _timed(run, device) / requests
        else:
            out[f"latency_ms_b{b}"] = 1000 * min(_timed(run, device) for _ in range(2))
    return out


def measure(model: torch.nn.Module, dev: EncodedSplit, device: torch.device, amp: bool = True) -> dict[str, float]:
    """The selected model's size and latency, as recorded (MLflow metrics, result.json) and optimised by a study's
    --objective; `fit` adds the run's training time and peak memory, read before this loads and times anything."""
    return {"params": float(sum(p.numel() for p in model.parameters())), **latency_ms(model, dev, device, amp)}
