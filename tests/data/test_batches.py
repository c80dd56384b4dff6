"""Batches: every example once, reproducible order, dynamic and static padding."""

import numpy as np
import torch
from conftest import small_vocabulary

from bertnli.data.batches import collate, eval_batches, train_batches
from bertnli.data.encode import encode_pairs


def test_batches_cover_every_example_once_and_are_reproducible():
    lengths = np.random.default_rng(0).integers(5, 60, size=1000)
    b1 = train_batches(lengths, 32, seed=3, epoch=1)
    assert sorted(np.concatenate(b1).tolist()) == list(range(1000))
    assert all(np.array_equal(x, y) for x, y in zip(b1, train_batches(lengths, 32, seed=3, epoch=1)))
    assert not all(np.array_equal(x, y) for x, y in zip(b1, train_batches(lengths, 32, seed=3, epoch=2)))
    pad_bucketed = sum(lengths[b].max() * len(b) for b in b1)
    pad_random = sum(lengths[b].max() * len(b) for b in train_batches(lengths, 32, 3, 1, bucket=False))
    assert pad_bucketed < 0.8 * pad_random  # bucketing is what removes padding
    assert sorted(np.concatenate(eval_batches(lengths, 50)).tolist()) == list(range(1000))


def test_collate_pads_dynamically_or_statically():
    tok = small_vocabulary()
    enc = encode_pairs(["a man", "two dogs on the street"], ["a woman", "a man"], [0, 2], tok, 32, "ratio")
    b = collate(enc, np.array([0, 1]))
    assert b["input_ids"].shape == (2, int(enc.lengths.max()))
    assert b["input_ids"][0, enc.lengths[0] :].eq(tok.pad_id).all()
    assert b["token_type_ids"][0].tolist()[: enc.lengths[0]] == enc.row(0)[1]
    assert b["token_type_ids"][0, enc.lengths[0] :].eq(0).all()
    assert collate(enc, np.array([0, 1]), pad_to=32)["input_ids"].shape == (2, 32)
    assert b["labels"].tolist() == [0, 2] and b["lengths"].dtype == torch.int64
