"""Truncation, packing, the encoded-split cache, bucketing and collate."""

import numpy as np
import pytest
import torch

from bertnli.data import read_split
from bertnli.pairs import (collate, encode_pairs, encode_split, eval_batches, pack, train_batches,
                           truncate_longest_first, truncate_ratio)
from bertnli.tokenize import D2LTokenizer


def d2l_truncate_pair_of_tokens(p_tokens, h_tokens, max_len):
    """Verbatim logic of d2l's SNLIBERTDataset._truncate_pair_of_tokens (the reference)."""
    while len(p_tokens) + len(h_tokens) > max_len:
        if len(p_tokens) > len(h_tokens):
            p_tokens.pop()
        else:
            h_tokens.pop()


@pytest.mark.parametrize("lp,lh,max_len", [(10, 10, 8), (30, 3, 16), (3, 30, 16), (7, 7, 17), (0, 20, 10), (5, 5, 128)])
def test_longest_first_is_d2l(lp, lh, max_len):
    p, h = list(range(lp)), list(range(100, 100 + lh))
    ref_p, ref_h = list(p), list(h)
    d2l_truncate_pair_of_tokens(ref_p, ref_h, max_len - 3)
    assert truncate_longest_first(p, h, max_len) == (ref_p, ref_h)


def test_longest_first_tie_drops_hypothesis():
    assert truncate_longest_first([1, 2, 3], [4, 5, 6], 8) == ([1, 2, 3], [4, 5])


@pytest.mark.parametrize("lp,lh,max_len", [(40, 10, 23), (10, 40, 23), (25, 25, 13), (3, 4, 20)])
def test_ratio_keeps_prefixes_in_proportion(lp, lh, max_len):
    p, h = list(range(lp)), list(range(100, 100 + lh))
    tp, th = truncate_ratio(p, h, max_len)
    budget = max_len - 3
    if lp + lh <= budget:
        assert (tp, th) == (p, h)
    else:
        assert len(tp) + len(th) == budget
        assert len(tp) == round(budget * lp / (lp + lh))
        assert tp == p[: len(tp)] and th == h[: len(th)]


def test_methods_differ_where_it_matters():
    p, h = list(range(40)), list(range(100, 110))  # B = 20: longest_first keeps 10+10, ratio 16+4
    assert [len(x) for x in truncate_longest_first(p, h, 23)] == [10, 10]
    assert [len(x) for x in truncate_ratio(p, h, 23)] == [16, 4]


def test_pack_segments():
    ids, seg = pack([7, 8], [9], cls_id=1, sep_id=2)
    assert ids == [1, 7, 8, 2, 9, 2] and seg == [0, 0, 0, 0, 1, 1]


def _tok():
    words = "a man woman is not sitting running on the street . two dogs".split()
    return D2LTokenizer(["<unk>", "<pad>", "<cls>", "<sep>", *words])


def test_encoded_rows_equal_pack_of_truncation():
    tok = _tok()
    ps, hs = ["a man is sitting on the street .", "two dogs"], ["a man is not running .", "a woman is sitting on the street ."]
    enc = encode_pairs(ps, hs, [0, 1], tok, 12, "longest_first")
    for i in range(2):
        p, h = tok.encode_batch([ps[i]])[0], tok.encode_batch([hs[i]])[0]
        assert enc.row(i) == pack(*truncate_longest_first(p, h, 12), tok.cls_id, tok.sep_id)
    assert enc.lengths.max() <= 12


def test_cache_round_trip_and_keying(tiny_snli, tmp_path):
    tok = _tok()
    split = read_split(tiny_snli, "dev")
    a = encode_split(split, tok, 16, "ratio", tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    b = encode_split(split, tok, 16, "ratio", tmp_path)  # from the cache
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("ids", "offsets", "seg1", "labels"))
    encode_split(split, tok, 16, "longest_first", tmp_path)
    encode_split(split, tok, 20, "ratio", tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 3  # truncation and max_len are part of the key
    files[0].write_bytes(b"garbage")  # a damaged entry is rebuilt, not trusted
    c = encode_split(split, tok, 16, "ratio", tmp_path)
    assert np.array_equal(a.ids, c.ids)


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
    tok = _tok()
    enc = encode_pairs(["a man", "two dogs on the street"], ["a woman", "a man"], [0, 2], tok, 32, "ratio")
    b = collate(enc, np.array([0, 1]))
    assert b["input_ids"].shape == (2, int(enc.lengths.max()))
    assert b["input_ids"][0, enc.lengths[0]:].eq(tok.pad_id).all()
    assert b["token_type_ids"][0].tolist()[: enc.lengths[0]] == enc.row(0)[1]
    assert b["token_type_ids"][0, enc.lengths[0]:].eq(0).all()
    assert collate(enc, np.array([0, 1]), pad_to=32)["input_ids"].shape == (2, 32)
    assert b["labels"].tolist() == [0, 2] and b["lengths"].dtype == torch.int64
