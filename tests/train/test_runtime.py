"""Per-device policy: devices per rank, precision, attention backend, batches staged ahead by a thread."""

import threading

import numpy as np
import pytest
import torch

from bertnli import BadInput
from bertnli.train.runtime import (
    attention_name,
    autocast,
    grad_scaler,
    numeric_precision,
    rank_seed,
    resolve_device,
    staged,
)


def test_staged_batches_keep_order_and_content_in_a_thread():
    made = []

    def make(idx):
        made.append(threading.current_thread().name)
        return {"x": torch.from_numpy(idx.copy()), "padded": bool(idx[0] % 2)}

    batches = [np.arange(i, i + 3) for i in range(20)]
    out = list(staged(make, batches, torch.device("cpu"), ahead=2, threaded=True))
    assert [b["x"].tolist() for b in out] == [b.tolist() for b in batches]
    assert [b["padded"] for b in out] == [bool(i % 2) for i in range(20)]
    assert set(made) == {"bertnli-batches"}  # made in the background thread, not in line


def test_staged_raises_the_workers_error_and_stops_it_when_abandoned():
    def make(idx):
        if idx[0] == 3:
            raise ValueError("bad batch 3")
        return {"x": torch.from_numpy(idx)}

    with pytest.raises(ValueError, match="bad batch 3"):
        list(staged(make, [np.array([i]) for i in range(10)], torch.device("cpu"), threaded=True))
    gen = staged(
        lambda idx: {"x": torch.from_numpy(idx)},
        [np.array([i]) for i in range(1000)],
        torch.device("cpu"),
        ahead=2,
        threaded=True,
    )
    next(gen)
    gen.close()
    assert not any(t.name == "bertnli-batches" and t.is_alive() for t in threading.enumerate())


def test_cpu_precision_attention_and_device_names():
    cpu = torch.device("cpu")
    assert numeric_precision(cpu, False) == "fp32"
    assert attention_name(cpu) == "sdpa:default"
    assert not grad_scaler(cpu, "bf16-autocast").is_enabled() and grad_scaler(cpu, "fp16-autocast").is_enabled()
    with autocast(cpu, "fp16-autocast"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16
    with autocast(cpu, "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(BadInput, match="use auto, cpu or cuda"):
        resolve_device("tpu")


def test_rank_seeds_differ_and_rank_0_keeps_the_run_seed():
    assert rank_seed(7, 0) == 7
    assert len({rank_seed(7, r) for r in range(8)}) == 8


def test_each_rank_gets_its_own_gpu(monkeypatch):
    """Under torchrun a bare `cuda` (or `auto`) is this rank's GPU: `cuda` with no index put every rank on GPU 0."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda", cuda_available=True) == torch.device("cuda", 1)
    assert resolve_device("auto", cuda_available=True) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", cuda_available=True) == torch.device("cuda", 0)  # an explicit index is kept
    assert resolve_device("auto", cuda_available=False) == torch.device("cpu")
    with pytest.raises(BadInput, match="no CUDA GPU"):
        resolve_device("cuda", cuda_available=False)
