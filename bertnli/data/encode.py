"""From sentence pairs to packed token rows: truncate, pack, encode a whole split at once.

Small pure functions define the transformations (`truncate_longest_first`, `truncate_ratio`,
`pack`); `encode_pairs` computes the same result for a whole split with numpy, without a Python
loop over pairs, and is tested equal to them. An encoded split is a few flat arrays.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from bertnli.data.snli import Split
from bertnli.data.tokenize import Tokenizer


def truncate_longest_first(p: list[int], h: list[int], max_len: int) -> tuple[list[int], list[int]]:
    """d2l's `_truncate_pair_of_tokens`: drop the last token of the longer one (of h on a tie)."""
    budget = max_len - 3
    p, h = list(p), list(h)
    while len(p) + len(h) > budget:
        if len(p) > len(h):
            p.pop()
        else:
            h.pop()
    return p, h


def truncate_ratio(p: list[int], h: list[int], max_len: int) -> tuple[list[int], list[int]]:
    """Keep prefixes in proportion to the two lengths: kp = round(B * |p| / (|p| + |h|))."""
    budget = max_len - 3
    total = len(p) + len(h)
    if total <= budget:
        return list(p), list(h)
    kp = round(budget * len(p) / total)
    return list(p[:kp]), list(h[: budget - kp])


TRUNCATE = {"longest_first": truncate_longest_first, "ratio": truncate_ratio}


def pack(p: list[int], h: list[int], cls_id: int, sep_id: int) -> tuple[list[int], list[int]]:
    """`<cls> p <sep> h <sep>` with segment 0 for `<cls> p <sep>` and 1 for `h <sep>`."""
    ids = [cls_id, *p, sep_id, *h, sep_id]
    segments = [0] * (len(p) + 2) + [1] * (len(h) + 1)
    return ids, segments


@dataclass
class EncodedSplit:
    """Packed pairs as flat arrays: row i is ids[offsets[i]:offsets[i+1]]; segment 1 starts at seg1[i]."""

    ids: np.ndarray  # int32, all rows concatenated
    offsets: np.ndarray  # int64, len n+1
    seg1: np.ndarray  # int32, index of the first segment-1 token in each row
    labels: np.ndarray  # int64
    pad_id: int
    example_ids: np.ndarray | None = None  # str, the SNLI pairID of each row: paired comparisons join on it

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def head(self, n: int | None) -> "EncodedSplit":
        if n is None or n >= len(self):
            return self
        ids = None if self.example_ids is None else self.example_ids[:n]
        return EncodedSplit(
            self.ids[: self.offsets[n]], self.offsets[: n + 1], self.seg1[:n], self.labels[:n], self.pad_id, ids
        )

    def take(self, rows: np.ndarray) -> "EncodedSplit":
        """The given rows (ascending), e.g. a multi-fidelity subset (fidelity.subset_rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = self.ids[ragged_positions(self.offsets[rows], lengths)] if len(rows) else self.ids[:0]
        ex = None if self.example_ids is None else self.example_ids[rows]
        return EncodedSplit(ids, offsets, self.seg1[rows], self.labels[rows], self.pad_id, ex)

    def row(self, i: int) -> tuple[list[int], list[int]]:
        ids = self.ids[self.offsets[i] : self.offsets[i + 1]].tolist()
        return ids, [0] * int(self.seg1[i]) + [1] * (len(ids) - int(self.seg1[i]))


def truncated_lengths(lp: np.ndarray, lh: np.ndarray, max_len: int, truncation: str) -> tuple[np.ndarray, np.ndarray]:
    """What `truncate_longest_first` / `truncate_ratio` keep, for all pairs at once (tested equal to them)."""
    budget = max_len - 3
    lp, lh = lp.astype(np.int64), lh.astype(np.int64)
    over = lp + lh > budget
    if truncation == "longest_first":
        # The pop loop trims the longer side to the shorter, then alternates (h on a tie): the shorter
        # side keeps all it has if that leaves room, else h keeps floor(B/2) and p the rest.
        kh = np.where(over, np.minimum(lh, np.maximum(budget // 2, budget - lp)), lh)
    else:
        kp_ratio = np.round(budget * lp / np.maximum(lp + lh, 1)).astype(np.int64)  # round half to even, as round()
        kh = np.where(over, budget - kp_ratio, lh)
    kp = np.where(over, budget - kh, lp)
    return kp, kh


def ragged_positions(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """starts[i], starts[i]+1, ..., starts[i]+counts[i]-1 for every i, concatenated."""
    counts = counts.astype(np.int64)
    shift = np.repeat(starts.astype(np.int64) - (np.cumsum(counts) - counts), counts)
    return shift + np.arange(int(counts.sum()), dtype=np.int64)


class _WordCache:
    """Tokenizes each distinct whitespace-separated word once; a text's ids are its words' ids in order.

    Valid only for tokenizers whose `words_are_independent` (BERT's WordPiece, d2l's vocabulary).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.index: dict[str, int] = {}  # word -> its row in pieces/piece_len
        self.pieces = np.zeros(0, dtype=np.int32)  # every known word's ids, concatenated
        self.piece_len = np.zeros(0, dtype=np.int64)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        split = list(map(str.split, texts))
        flat = list(itertools.chain.from_iterable(split))
        new = [w for w in set(flat) if w not in self.index]
        if new:
            encoded = self.tokenizer.encode_batch(new)
            self.index.update(zip(new, range(len(self.index), len(self.index) + len(new))))
            self.pieces = np.concatenate(
                [self.pieces, np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int32)]
            )
            self.piece_len = np.concatenate(
                [self.piece_len, np.fromiter(map(len, encoded), dtype=np.int64, count=len(new))]
            )
        piece_start = np.cumsum(self.piece_len) - self.piece_len
        word = np.fromiter(map(self.index.__getitem__, flat), dtype=np.int64, count=len(flat))
        ids = self.pieces[ragged_positions(piece_start[word], self.piece_len[word])]
        text_of_word = np.repeat(np.arange(len(texts)), np.fromiter(map(len, split), dtype=np.int64, count=len(split)))
        lengths = np.bincount(text_of_word, weights=self.piece_len[word], minlength=len(texts)).astype(np.int64)
        return ids, lengths


def _encode_texts(tokenizer: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Text by text through the tokenizer: (flat ids, ids per text)."""
    encoded = tokenizer.encode_batch(texts)
    return np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int32), np.fromiter(
        map(len, encoded), dtype=np.int64, count=len(encoded)
    )


def _unique_encode(
    tokenizer: Tokenizer, texts: list[str], chunk: int = 1 << 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each distinct text tokenized once (SNLI repeats each premise about three times), in chunks
    so that the tokenizer's per-text objects never exist for all texts at once.

    Returns (flat ids of the distinct texts, their offsets, the distinct-text slot of every input text)."""
    index: dict[str, int] = {}
    slots = np.fromiter((index.setdefault(t, len(index)) for t in texts), dtype=np.int64, count=len(texts))
    distinct = list(index)
    del index
    encode = (
        _WordCache(tokenizer).encode if tokenizer.words_are_independent else functools.partial(_encode_texts, tokenizer)
    )
    ids, lengths = [], []
    for start in range(0, len(distinct), chunk):
        chunk_ids, chunk_lengths = encode(distinct[start : start + chunk])
        ids.append(chunk_ids)
        lengths.append(chunk_lengths)
    lengths_all = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    offsets = np.zeros(len(lengths_all) + 1, dtype=np.int64)
    np.cumsum(lengths_all, out=offsets[1:])
    return (np.concatenate(ids) if ids else np.zeros(0, np.int32)), offsets, slots


def encode_pairs(
    premises: list[str],
    hypotheses: list[str],
    labels: list[int],
    tokenizer: Tokenizer,
    max_len: int,
    truncation: str,
    example_ids: list[str] | None = None,
) -> EncodedSplit:
    """Tokenize, truncate and pack every pair into flat arrays, without a Python loop over pairs."""
    if truncation not in TRUNCATE:
        raise ValueError(f"unknown truncation {truncation!r}")
    p_ids, p_off, p_slot = _unique_encode(tokenizer, premises)
    h_ids, h_off, h_slot = _unique_encode(tokenizer, hypotheses)
    p_start, h_start = p_off[p_slot], h_off[h_slot]
    kp, kh = truncated_lengths(p_off[p_slot + 1] - p_start, h_off[h_slot + 1] - h_start, max_len, truncation)
    lengths = kp + kh + 3
    offsets = np.zeros(len(labels) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    row = offsets[:-1]
    flat = np.empty(int(offsets[-1]), dtype=np.int32)
    flat[row] = tokenizer.cls_id  # <cls> p <sep> h <sep>, as pack()
    flat[ragged_positions(row + 1, kp)] = p_ids[ragged_positions(p_start, kp)]
    flat[row + 1 + kp] = tokenizer.sep_id
    flat[ragged_positions(row + 2 + kp, kh)] = h_ids[ragged_positions(h_start, kh)]
    flat[offsets[1:] - 1] = tokenizer.sep_id
    ids = None if example_ids is None else np.asarray(example_ids, dtype=str)
    return EncodedSplit(
        flat, offsets, (kp + 2).astype(np.int32), np.asarray(labels, dtype=np.int64), tokenizer.pad_id, ids
    )


def split_texts(split: Split, tokenizer: Tokenizer) -> tuple[list[str], list[str]]:
    if tokenizer.text_field == "parse":
        return split.premises_parse, split.hypotheses_parse
    return split.premises, split.hypotheses
