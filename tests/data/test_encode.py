"""Truncation, packing, the encoded-split cache, bucketing and collate."""

import numpy as np
import pytest
from conftest import small_vocabulary

from bertnli.data.cache import encode_split
from bertnli.data.encode import encode_pairs, pack, truncate_longest_first, truncate_ratio, truncated_lengths
from bertnli.data.snli import read_split
from bertnli.data.tokenize import D2LTokenizer


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


def test_encoded_rows_equal_pack_of_truncation():
    tok = small_vocabulary()
    ps, hs = (
        ["a man is sitting on the street .", "two dogs"],
        ["a man is not running .", "a woman is sitting on the street ."],
    )
    enc = encode_pairs(ps, hs, [0, 1], tok, 12, "longest_first")
    for i in range(2):
        p, h = tok.encode_batch([ps[i]])[0], tok.encode_batch([hs[i]])[0]
        assert enc.row(i) == pack(*truncate_longest_first(p, h, 12), tok.cls_id, tok.sep_id)
    assert enc.lengths.max() <= 12


@pytest.mark.parametrize("truncation", ["longest_first", "ratio"])
def test_vectorised_truncation_equals_the_reference_loops(truncation):
    ref = {"longest_first": truncate_longest_first, "ratio": truncate_ratio}[truncation]
    rng = np.random.default_rng(0)
    for max_len in (8, 9, 16, 33, 128):
        lp, lh = rng.integers(0, 90, 3000), rng.integers(0, 90, 3000)
        kp, kh = truncated_lengths(lp, lh, max_len, truncation)
        for a, b, x, y in zip(lp, lh, kp, kh):
            p, h = ref(list(range(a)), list(range(b)), max_len)
            assert (len(p), len(h)) == (x, y), (a, b, max_len)


@pytest.mark.parametrize("truncation", ["longest_first", "ratio"])
def test_every_packed_row_equals_pack_of_the_reference_truncation(truncation):
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(50)]
    tok = D2LTokenizer(["<unk>", "<pad>", "<cls>", "<sep>", *words])
    text = lambda: " ".join(rng.choice(words, rng.integers(0, 30)))  # noqa: E731
    ps = [text() for _ in range(300)]
    ps += ps[:100]  # repeated premises, as in SNLI
    hs = [text() for _ in range(400)]
    enc = encode_pairs(ps, hs, [0] * 400, tok, 24, truncation)
    ref = {"longest_first": truncate_longest_first, "ratio": truncate_ratio}[truncation]
    for i in range(400):
        p, h = tok.encode_batch([ps[i]])[0], tok.encode_batch([hs[i]])[0]
        assert enc.row(i) == pack(*ref(p, h, 24), tok.cls_id, tok.sep_id)


def test_word_cache_gives_the_ids_of_text_by_text_wordpiece(real_snli):
    """The fast path (each distinct word tokenized once) against the library on whole texts, real SNLI."""
    from bertnli.data.tokenize import WordPieceTokenizer
    from bertnli.model.presets import minilm_folder

    if minilm_folder() is None:
        pytest.skip("MiniLM package not installed")
    split = read_split(real_snli, "dev")
    tok = WordPieceTokenizer(minilm_folder())
    assert tok.words_are_independent
    fast = encode_split(split, tok, 48, "longest_first")
    tok.words_are_independent = False
    slow = encode_split(split, tok, 48, "longest_first")
    assert np.array_equal(fast.ids, slow.ids) and np.array_equal(fast.offsets, slow.offsets)
    tok.words_are_independent = True
    odd = ["  two  spaces", "tab\there", "naïve café", "", "中文 text", "don't stop-me now!!"]
    assert (
        encode_pairs(odd, odd[::-1], [0] * 6, tok, 32, "ratio").ids.tolist()
        == encode_pairs(odd, odd[::-1], [0] * 6, _Texts(tok), 32, "ratio").ids.tolist()
    )


class _Texts:
    """A tokenizer that only encodes whole texts: the reference for the word cache."""

    def __init__(self, tok):
        self.tok, self.words_are_independent = tok, False
        self.cls_id, self.sep_id, self.pad_id = tok.cls_id, tok.sep_id, tok.pad_id

    def encode_batch(self, texts):
        return self.tok.encode_batch(texts)
