"""The encoded-split cache: a split is tokenized and packed once per (file digest, tokenizer, max_len,
truncation) and kept on disk as `.npz`, so the runs of a sweep read it instead of tokenizing again."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np

from bertnli.data.encode import EncodedSplit, encode_pairs, split_texts
from bertnli.data.snli import Split, read_file
from bertnli.data.tokenize import Tokenizer
from bertnli.files import atomic_path, file_digest

CACHE_VERSION = "2"  # 2: example_ids stored


def _cache_path(
    cache_dir: str | Path, name: str, digest: str, tokenizer: Tokenizer, max_len: int, truncation: str
) -> Path:
    key = hashlib.sha256(
        f"{CACHE_VERSION}|{digest}|{tokenizer.fingerprint()}|{max_len}|{truncation}".encode()
    ).hexdigest()[:24]
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
    example_ids = enc.example_ids if enc.example_ids is not None else np.arange(len(enc)).astype(str)
    with atomic_path(path) as tmp:
        np.savez(
            tmp,
            ids=enc.ids,
            offsets=enc.offsets,
            seg1=enc.seg1,
            labels=enc.labels,
            pad_id=np.int64(enc.pad_id),
            example_ids=example_ids,
        )


def _through_cache(
    cache_dir: str | Path | None,
    name: str,
    digest: str,
    tokenizer: Tokenizer,
    max_len: int,
    truncation: str,
    load: Callable[[], Split],
) -> EncodedSplit:
    """The cached encoding if there is one; else `load()` the split (the only place it is read), encode, store."""
    path = None if cache_dir is None else _cache_path(cache_dir, name, digest, tokenizer, max_len, truncation)
    enc = None if path is None else _load_cached(path)
    if enc is None:
        split = load()
        enc = encode_pairs(
            *split_texts(split, tokenizer), split.labels, tokenizer, max_len, truncation, split.ids or None
        )
        if path is not None:
            _save_cached(enc, path)
    return enc


def encode_split(
    split: Split, tokenizer: Tokenizer, max_len: int, truncation: str, cache_dir: str | Path | None = None
) -> EncodedSplit:
    """Encode a whole split, through the on-disk cache keyed by file digest, tokenizer, max_len, truncation."""
    digest = "" if cache_dir is None else split.digest()
    return _through_cache(cache_dir, split.name, digest, tokenizer, max_len, truncation, lambda: split)


def encode_file(
    path: str | Path,
    name: str,
    tokenizer: Tokenizer,
    max_len: int,
    truncation: str,
    cache_dir: str | Path | None = None,
) -> tuple[EncodedSplit, str]:
    """A split file encoded, and its digest; a cache hit skips reading (parsing 550k JSON rows takes seconds)."""
    digest = file_digest(path)
    return _through_cache(
        cache_dir, name, digest, tokenizer, max_len, truncation, lambda: read_file(path, name)
    ), digest
