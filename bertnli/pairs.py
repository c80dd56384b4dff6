"""From sentence pairs to model batches: truncate, pack, cache, bucket, pad.

Small pure functions do the transformations (DESIGN.md pins `longest_first` and `ratio`);
an encoded split is a few flat numpy arrays, cached on disk so a sweep tokenizes once.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bertnli.data import Split
from bertnli.tokenize import Tokenizer

CACHE_VERSION = "1"


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

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def head(self, n: int | None) -> "EncodedSplit":
        if n is None or n >= len(self):
            return self
        return EncodedSplit(self.ids[: self.offsets[n]], self.offsets[: n + 1], self.seg1[:n], self.labels[:n], self.pad_id)

    def row(self, i: int) -> tuple[list[int], list[int]]:
        ids = self.ids[self.offsets[i] : self.offsets[i + 1]].tolist()
        return ids, [0] * int(self.seg1[i]) + [1] * (len(ids) - int(self.seg1[i]))


def _unique_encode(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """SNLI repeats each premise about three times: tokenize each distinct text once."""
    index: dict[str, int] = {}
    slots = [index.setdefault(t, len(index)) for t in texts]
    encoded = tokenizer.encode_batch(list(index))
    return [encoded[s] for s in slots]


def encode_pairs(
    premises: list[str], hypotheses: list[str], labels: list[int], tokenizer: Tokenizer, max_len: int, truncation: str
) -> EncodedSplit:
    truncate = TRUNCATE[truncation]
    cls_id, sep_id = tokenizer.cls_id, tokenizer.sep_id
    p_ids, h_ids = _unique_encode(tokenizer, premises), _unique_encode(tokenizer, hypotheses)
    n = len(labels)
    lengths = np.empty(n, dtype=np.int64)
    seg1 = np.empty(n, dtype=np.int32)
    flat: list[int] = []
    extend = flat.extend
    for i, (p, h) in enumerate(zip(p_ids, h_ids)):
        if len(p) + len(h) > max_len - 3:
            p, h = truncate(p, h, max_len)
        extend((cls_id, *p, sep_id, *h, sep_id))
        lengths[i] = len(p) + len(h) + 3
        seg1[i] = len(p) + 2
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return EncodedSplit(np.asarray(flat, dtype=np.int32), offsets, seg1, np.asarray(labels, dtype=np.int64), tokenizer.pad_id)


def split_texts(split: Split, tokenizer: Tokenizer) -> tuple[list[str], list[str]]:
    if tokenizer.text_field == "parse":
        return split.premises_parse, split.hypotheses_parse
    return split.premises, split.hypotheses


def encode_split(split: Split, tokenizer: Tokenizer, max_len: int, truncation: str, cache_dir: str | Path | None = None) -> EncodedSplit:
    """Encode a whole split, through the on-disk cache keyed by data, tokenizer, max_len, truncation."""
    if cache_dir is None:
        return encode_pairs(*split_texts(split, tokenizer), split.labels, tokenizer, max_len, truncation)
    key = hashlib.sha256(
        f"{CACHE_VERSION}|{split.digest()}|{tokenizer.fingerprint()}|{max_len}|{truncation}".encode()
    ).hexdigest()[:24]
    path = Path(cache_dir) / f"{split.name}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return EncodedSplit(z["ids"], z["offsets"], z["seg1"], z["labels"], int(z["pad_id"]))
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a damaged cache entry is rebuilt, never trusted
    enc = encode_pairs(*split_texts(split, tokenizer), split.labels, tokenizer, max_len, truncation)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, ids=enc.ids, offsets=enc.offsets, seg1=enc.seg1, labels=enc.labels, pad_id=np.int64(enc.pad_id))
    os.replace(tmp, path)
    return enc


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


def collate(enc: EncodedSplit, idx: np.ndarray, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a batch to its own longest row (or to `pad_to`, the seed-style static padding)."""
    lengths = (enc.offsets[idx + 1] - enc.offsets[idx]).astype(np.int64)
    width = int(pad_to or lengths.max())
    ids = np.full((len(idx), width), enc.pad_id, dtype=np.int64)
    positions = np.arange(width)
    segments = (positions[None, :] >= enc.seg1[idx, None]) & (positions[None, :] < lengths[:, None])
    for r, i in enumerate(idx):
        ids[r, : lengths[r]] = enc.ids[enc.offsets[i] : enc.offsets[i + 1]]
    return {
        "input_ids": torch.from_numpy(ids),
        "token_type_ids": torch.from_numpy(segments.astype(np.int64)),
        "lengths": torch.from_numpy(lengths),
        "labels": torch.from_numpy(enc.labels[idx]),
    }
