"""Nested, label-stratified training subsets (bertnli.data.subsets): what a multi-fidelity rung trains on."""

import numpy as np
import pytest

from bertnli.config import TrainConfig
from bertnli.data.encode import EncodedSplit
from bertnli.data.subsets import nested_order, subset_rows
from bertnli.train.prepare import prepare


@pytest.mark.parametrize("counts", [(50, 30, 20), (4570, 4571, 4572), (7, 1, 3)])
def test_every_prefix_is_stratified(counts):
    labels = np.repeat(np.arange(3), counts)[np.random.default_rng(1).permutation(sum(counts))]
    order = nested_order(labels)
    assert sorted(order) == list(range(len(labels)))  # a permutation: every row once
    share = np.array(counts) / sum(counts)
    for m in range(1, len(labels) + 1, max(1, len(labels) // 97)):
        got = np.bincount(labels[order[:m]], minlength=3)
        assert np.all(np.abs(got - m * share) <= 1.0 + 1e-9), (m, got, m * share)


def test_subsets_are_nested_prefixes_and_the_same_every_time():
    labels = np.random.default_rng(0).integers(0, 3, 13_713)
    small, mid, full = (subset_rows(labels, f) for f in (1 / 9, 1 / 3, 1.0))
    assert len(small) == round(13_713 / 9) and len(mid) == round(13_713 / 3) and len(full) == 13_713
    assert set(small) <= set(mid) <= set(full)
    assert np.array_equal(small, subset_rows(labels, 1 / 9))  # every configuration of a rung sees the same rows
    assert not np.array_equal(small, np.arange(len(small)))  # a shuffled subset, not the file's first rows
    with pytest.raises(ValueError):
        subset_rows(labels, 0)


def test_take_keeps_rows_intact():
    ids = np.arange(20, dtype=np.int32)
    split = EncodedSplit(
        ids,
        np.array([0, 3, 8, 12, 20]),
        np.array([1, 2, 1, 3], dtype=np.int32),
        np.array([0, 1, 2, 0]),
        0,
        np.array(["p0", "p1", "p2", "p3"]),
    )
    sub = split.take(np.array([1, 3]))
    assert len(sub) == 2 and sub.row(0) == split.row(1) and sub.row(1) == split.row(3)
    assert list(sub.example_ids) == ["p1", "p3"] and list(sub.labels) == [1, 0]


def test_a_run_trains_on_its_fraction(tiny_snli, tmp_path):
    cfg = TrainConfig(model="tiny-d2l-random", data=str(tiny_snli), max_len=32, cache_dir=str(tmp_path / "enc"))
    full = prepare(cfg).train
    third = prepare(cfg.replace(train_fraction=1 / 3)).train
    assert len(third) == round(len(full) / 3)
    assert set(third.example_ids) < set(full.example_ids)
    assert np.bincount(third.labels, minlength=3).tolist() == pytest.approx(
        np.bincount(full.labels, minlength=3) / 3, abs=1
    )
