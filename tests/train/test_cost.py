"""A run's costs: what a study trading accuracy against cost (sweep --objective) reads from every run."""

import json

import torch
from tiny_runs import tiny_cfg

from bertnli.train.checkpoint import load_selected
from bertnli.train.cost import cycled, latency_ms
from bertnli.train.fit import fit
from bertnli.train.prepare import prepare


def test_every_run_records_its_size_peak_memory_and_latency_on_the_selected_weights(tiny_snli, tmp_path):
    r = fit(tiny_cfg(tiny_snli, tmp_path, epochs=1), tmp_path / "run", progress=False)
    model = load_selected(tmp_path / "run" / "best")[0]
    assert r.costs["params"] == sum(p.numel() for p in model.parameters())
    assert r.costs["peak_mem_mib"] > 50  # this process's peak resident memory on the CPU: torch alone is more
    assert 0 < r.costs["latency_ms_b1"] < r.costs["latency_ms_b256"]  # a batch of 256 pairs takes longer than one
    assert json.loads((tmp_path / "run" / "result.json").read_text())["costs"] == r.costs


def test_latency_batches_fill_up_from_a_small_split(tiny_snli, tmp_path):
    dev = prepare(tiny_cfg(tiny_snli, tmp_path)).dev  # 80 pairs
    assert len(cycled(dev, 256)) == 256
    assert sorted(set(cycled(dev, 256).example_ids)) == sorted(set(dev.example_ids))
    model = load_selected(
        fit(tiny_cfg(tiny_snli, tmp_path, epochs=1), tmp_path / "run", progress=False).out_dir / "best"
    )[0]
    assert set(latency_ms(model, dev, torch.device("cpu"), batches=(1, 32))) == {"latency_ms_b1", "latency_ms_b32"}
