"""From sentence pairs to model batches: truncate, pack, cache, bucket, pad.

Small pure functions do the transformations (DESIGN.md pins `longest_first` and `ratio`);
an encoded split is a few flat numpy arrays, cached on disk so a sweep tokenizes once.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bertnli.data import Split, file_digest, read_file
from bertnli.tokenize import Tokenizer

CACHE_VERSION = "2"  # 2: example_ids stored


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
        return EncodedSplit(self.ids[: self.offsets[n]], self.offsets[: n + 1], self.seg1[:n], self.labels[:n], self.pad_id, ids)

    def take(self, rows: np.ndarray) -> "EncodedSplit":
        """The given rows (ascending), e.g. a multi-fidelity subset (fidelity.subset_rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = self.ids[_ragged_positions(self.offsets[rows], lengths)] if len(rows) else self.ids[:0]
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


def _ragged_positions(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
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
            self.pieces = np.concatenate([self.pieces, np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int32)])
            self.piece_len = np.concatenate([self.piece_len, np.fromiter(map(len, encoded), dtype=np.int64, count=len(new))])
        piece_start = np.cumsum(self.piece_len) - self.piece_len
        word = np.fromiter(map(self.index.__getitem__, flat), dtype=np.int64, count=len(flat))
        ids = self.pieces[_ragged_positions(piece_start[word], self.piece_len[word])]
        text_of_word = np.repeat(np.arange(len(texts)), np.fromiter(map(len, split), dtype=np.int64, count=len(split)))
        lengths = np.bincount(text_of_word, weights=self.piece_len[word], minlength=len(texts)).astype(np.int64)
        return ids, lengths


def _encode_texts(tokenizer: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Text by text through the tokenizer: (flat ids, ids per text)."""
    encoded = tokenizer.encode_batch(texts)
    return np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int32), np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))


def _unique_encode(tokenizer: Tokenizer, texts: list[str], chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each distinct text tokenized once (SNLI repeats each premise about three times), in chunks
    so that the tokenizer's per-text objects never exist for all texts at once.

    Returns (flat ids of the distinct texts, their offsets, the distinct-text slot of every input text)."""
    index: dict[str, int] = {}
    slots = np.fromiter((index.setdefault(t, len(index)) for t in texts), dtype=np.int64, count=len(texts))
    distinct = list(index)
    del index
    encode = _WordCache(tokenizer).encode if tokenizer.words_are_independent else functools.partial(_encode_texts, tokenizer)
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
    premises: list[str], hypotheses: list[str], labels: list[int], tokenizer: Tokenizer, max_len: int, truncation: str,
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
    flat[_ragged_positions(row + 1, kp)] = p_ids[_ragged_positions(p_start, kp)]
    flat[row + 1 + kp] = tokenizer.sep_id
    flat[_ragged_positions(row + 2 + kp, kh)] = h_ids[_ragged_positions(h_start, kh)]
    flat[offsets[1:] - 1] = tokenizer.sep_id
    ids = None if example_ids is None else np.asarray(example_ids, dtype=str)
    return EncodedSplit(flat, offsets, (kp + 2).astype(np.int32), np.asarray(labels, dtype=np.int64), tokenizer.pad_id, ids)


def split_texts(split: Split, tokenizer: Tokenizer) -> tuple[list[str], list[str]]:
    if tokenizer.text_field == "parse":
        return split.premises_parse, split.hypotheses_parse
    return split.premises, split.hypotheses


def _cache_path(cache_dir: str | Path, name: str, digest: str, tokenizer: Tokenizer, max_len: int, truncation: str) -> Path:
    key = hashlib.sha256(f"{CACHE_VERSION}|{digest}|{tokenizer.fingerprint()}|{max_len}|{truncation}".encode()).hexdigest()[:24]
    return Path(cache_dir) / f"{name}-{key}.npz"


def _load_cached(path: Path) -> EncodedSplit | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return EncodedSplit(z["ids"], z["offsets"], z["seg1"], z["labels"], int(z["pad_id"]), z["example_ids"])
    except (OSError, ValueError, KeyError, EOFError):
        path.unlink(missing_ok=True)  # a damaged cache entry is rebuilt, never trusted
        return None


def _save_cached(enc: EncodedSplit, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    example_ids = enc.example_ids if enc.example_ids is not None else np.arange(len(enc)).astype(str)
    np.savez(tmp, ids=enc.ids, offsets=enc.offsets, seg1=enc.seg1, labels=enc.labels, pad_id=np.int64(enc.pad_id), example_ids=example_ids)
    os.replace(tmp, path)


def _through_cache(cache_dir: str | Path | None, name: str, digest: str, tokenizer: Tokenizer, max_len: int, truncation: str,
                   load: Callable[[], Split]) -> EncodedSplit:
    """The cached encoding if there is one; else `load()` the split (the only place it is read), encode, store."""
    path = None if cache_dir is None else _cache_path(cache_dir, name, digest, tokenizer, max_len, truncation)
    enc = None if path is None else _load_cached(path)
    if enc is None:
        split = load()
        enc = encode_pairs(*split_texts(split, tokenizer), split.labels, tokenizer, max_len, truncation, split.ids or None)
        if path is not None:
            _save_cached(enc, path)
    return enc


def encode_split(split: Split, tokenizer: Tokenizer, max_len: int, truncation: str, cache_dir: str | Path | None = None) -> EncodedSplit:
    """Encode a whole split, through the on-disk cache keyed by file digest, tokenizer, max_len, truncation."""
    digest = "" if cache_dir is None else split.digest()
    return _through_cache(cache_dir, split.name, digest, tokenizer, max_len, truncation, lambda: split)


def encode_file(path: str | Path, name: str, tokenizer: Tokenizer, max_len: int, truncation: str,
                cache_dir: str | Path | None = None) -> tuple[EncodedSplit, str]:
    """A split file encoded, and its digest; a cache hit skips reading (parsing 550k JSON rows takes seconds)."""
    digest = file_digest(path)
    return _through_cache(cache_dir, name, digest, tokenizer, max_len, truncation, lambda: read_file(path, name)), digest


# ---------------------------------------------------------------- batching


def train_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, bucket: bool = True, pool: int = 50) -> list[np.ndarray]:
    """Shuffled batches; with `bucket`, similar lengths share a batch (pools of `pool` batches).

    The order depends only on (seed, epoch), so a resumed run sees the same batches.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if not bucket:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches = []
    chunk = batch_size * pool
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(lengths: np.ndarray, batch_size: int, bucket: bool = True) -> list[np.ndarray]:
    order = np.argsort(lengths, kind="stable") if bucket else np.arange(len(lengths))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def batch_width(longest: int, multiple: int = 1, cap: int | None = None) -> int:
    """`longest` rounded up to a multiple of `multiple`, never past `cap` (max_len) when it fits under it.

    Fewer distinct widths mean fewer kernel set-ups on a GPU and less allocator churn on a CPU;
    the attention mask makes the extra padding inert."""
    width = -(-longest // multiple) * multiple
    return min(width, cap) if cap is not None and cap >= longest else width


def collate(enc: EncodedSplit, idx: np.ndarray, pad_to: int | None = None, multiple: int = 1,
            cap: int | None = None) -> dict[str, torch.Tensor | bool]:
    """Pad a batch to its own longest row rounded up to `multiple` (or to `pad_to`, the seed-style static padding).

    `padded` says, from the host's copy of the lengths, whether any row is shorter than the batch:
    the model needs no mask otherwise, and nobody has to ask the device."""
    starts = enc.offsets[idx]
    lengths = (enc.offsets[idx + 1] - starts).astype(np.int64)
    width = int(pad_to) if pad_to else batch_width(int(lengths.max()), multiple, cap)
    ids = np.full((len(idx), width), enc.pad_id, dtype=np.int64)
    rows = np.repeat(np.arange(len(idx)), lengths)
    ids[rows, _ragged_positions(np.zeros(len(idx), np.int64), lengths)] = enc.ids[_ragged_positions(starts, lengths)]
    positions = np.arange(width)
    segments = (positions[None, :] >= enc.seg1[idx, None]) & (positions[None, :] < lengths[:, None])
    return {
        "input_ids": torch.from_numpy(ids),
        "token_type_ids": torch.from_numpy(segments.astype(np.int64)),
        "lengths": torch.from_numpy(lengths),
        "labels": torch.from_numpy(enc.labels[idx]),
        "padded": bool(lengths.min() < width),
    }
