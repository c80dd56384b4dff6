"""A run's costs: what a study trading accuracy against cost (sweep --objective) reads from every run."""

import json

import pytest
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


@pytest.mark.parametrize("eval_test", [True, False])
def test_a_run_reads_its_selected_weights_once_for_test_and_costs(tiny_snli, tmp_path, monkeypatch, eval_test):
    """A second read of best/ is a fixed cost in every run (a bigger one the bigger the model), and in every trial."""
    import bertnli.train.fit as fit_module

    reads = []

    def counted(folder, *args, **kwargs):
        reads.append(folder)
        return load_selected(folder, *args, **kwargs)

    monkeypatch.setattr(fit_module, "load_selected", counted)
    r = fit(tiny_cfg(tiny_snli, tmp_path, epochs=1, eval_test=eval_test), tmp_path / "run", progress=False)
    assert (r.test is not None) == eval_test and r.costs["latency_ms_b1"] > 0
    assert reads == [tmp_path / "run" / "best"]


def test_latency_batches_fill_up_from_a_small_split(tiny_snli, tmp_path):
    dev = prepare(tiny_cfg(tiny_snli, tmp_path)).dev  # 80 pairs
    assert len(cycled(dev, 256)) == 256
    assert sorted(set(cycled(dev, 256).example_ids)) == sorted(set(dev.example_ids))
    model = load_selected(
        fit(tiny_cfg(tiny_snli, tmp_path, epochs=1), tmp_path / "run", progress=False).out_dir / "best"
    )[0]
    assert set(latency_ms(model, dev, torch.device("cpu"), batches=(1, 32))) == {"latency_ms_b1", "latency_ms_b32"}
