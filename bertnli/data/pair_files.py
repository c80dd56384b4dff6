"""Sentence pairs a user gives `predict --file`: TSV (premise<TAB>hypothesis) or JSONL (sentence1, sentence2).

Lines end at a newline only (`str.splitlines` would also cut at U+2028 or U+0085, which may sit inside
a sentence); a byte-order mark is dropped; a TSV's first line naming its columns is a header, not a pair.
"""

from __future__ import annotations

import json
from pathlib import Path

from bertnli import BadInput


def _jsonl_pair(path: str, n: int, line: str) -> tuple[str, str]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadInput(
            f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); "
            'each line must be one object such as {"sentence1": "...", "sentence2": "..."}'
        ) from None
    if not isinstance(row, dict):
        raise BadInput(f"{path}:{n}: a JSON {type(row).__name__}, not an object with sentence1 and sentence2")
    for key in ("sentence1", "sentence2"):
        if not isinstance(row.get(key), str):
            raise BadInput(
                f"{path}:{n}: "
                + (f"no {key!r} field" if key not in row else f"{key!r} is not text")
                + "; each line needs sentence1 (premise) and sentence2 (hypothesis)"
            )
    return row["sentence1"], row["sentence2"]


HEADER_WORDS = {"premise", "hypothesis", "sentence1", "sentence2"}


def is_header(cells: list[str]) -> bool:
    return {c.strip().lower() for c in cells[:2]} <= HEADER_WORDS


def read_pairs(path: str) -> tuple[list[str], list[str]]:
    """Pairs from TSV or JSONL; a bad line is one error naming the file and the line."""
    premises, hypotheses = [], []
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInput(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); give a UTF-8 TSV or JSONL file"
        ) from None
    for n, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        if path.endswith(".jsonl"):
            p, h = _jsonl_pair(path, n, line)
        else:
            cells = line.split("\t")
            if len(cells) < 2:
                raise BadInput(f"{path}:{n}: expected premise<TAB>hypothesis")
            if n == 1 and is_header(cells):
                continue
            p, h = cells[0], cells[1]
        premises.append(p)
        hypotheses.append(h)
    if not premises:
        raise BadInput(
            f"{path}: no sentence pairs in it; give premise<TAB>hypothesis lines or JSONL with sentence1/sentence2"
        )
    return premises, hypotheses
