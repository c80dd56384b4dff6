"""Batches of an encoded split: which rows go together (seeded, length-bucketed) and how they are padded."""

from __future__ import annotations

import numpy as np
import torch

from bertnli.data.encode import EncodedSplit, ragged_positions


def train_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, bucket: bool = True, pool: int = 50
) -> list[np.ndarray]:
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


def collate(
    enc: EncodedSplit, idx: np.ndarray, pad_to: int | None = None, multiple: int = 1, cap: int | None = None
) -> dict[str, torch.Tensor | bool]:
    """Pad a batch to its own longest row rounded up to `multiple` (or to `pad_to`, the seed-style static padding).

    `padded` says, from the host's copy of the lengths, whether any row is shorter than the batch:
    the model needs no mask otherwise, and nobody has to ask the device."""
    starts = enc.offsets[idx]
    lengths = (enc.offsets[idx + 1] - starts).astype(np.int64)
    width = int(pad_to) if pad_to else batch_width(int(lengths.max()), multiple, cap)
    ids = np.full((len(idx), width), enc.pad_id, dtype=np.int64)
    rows = np.repeat(np.arange(len(idx)), lengths)
    ids[rows, ragged_positions(np.zeros(len(idx), np.int64), lengths)] = enc.ids[ragged_positions(starts, lengths)]
    positions = np.arange(width)
    segments = (positions[None, :] >= enc.seg1[idx, None]) & (positions[None, :] < lengths[:, None])
    return {
        "input_ids": torch.from_numpy(ids),
        "token_type_ids": torch.from_numpy(segments.astype(np.int64)),
        "lengths": torch.from_numpy(lengths),
        "labels": torch.from_numpy(enc.labels[idx]),
        "padded": bool(lengths.min() < width),
    }
