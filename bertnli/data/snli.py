"""SNLI files: the label map, the readers (`.jsonl` and `.txt`, plain or gzip'd), and the download.

The readers keep SNLI's pairID with every row (what per-example predictions are keyed by) and
drop rows whose gold label is `-`.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from bertnli import BadInput, BertnliError
from bertnli.files import download, file_digest, safe_extract

SNLI_URL = "https://nlp.stanford.edu/projects/snli/snli_1.0.zip"


SNLI_SHA1 = "9fcde07509c7e87ec61c640c1b2753d9041758e4"


LABEL_IDS = {"entailment": 0, "contradiction": 1, "neutral": 2}  # d2l's order


LABEL_NAMES = ["entailment", "contradiction", "neutral"]


SPLITS = ("train", "dev", "test")


def fetch_snli(
    dest: str | Path, url: str = SNLI_URL, sha1: str = SNLI_SHA1, source: str | None = None, progress: bool = True
) -> Path:
    """SNLI 1.0 into `dest/snli_1.0/`, from the web, a mirror URL, a local zip or a folder."""
    dest = Path(dest)
    if source is not None and Path(source).is_dir():
        return Path(source)
    if source is not None and Path(source).is_file():
        archive = Path(source)
        if not zipfile.is_zipfile(archive):
            raise BadInput(
                f"--source {source} is neither a zip archive nor an SNLI folder; give snli_1.0.zip or its unpacked "
                "folder"
            )
    else:
        archive = download(url, dest / "snli_1.0.zip", sha1=sha1, progress=progress)
    out = safe_extract(archive, dest / "snli_1.0.extracted")
    inner = out / "snli_1.0"
    return inner if inner.is_dir() else out


@dataclass
class Split:
    """One SNLI split, column-wise: raw sentences, d2l-style token text, labels."""

    name: str
    path: Path
    premises: list[str] = field(default_factory=list)  # raw sentence1 (WordPiece input)
    hypotheses: list[str] = field(default_factory=list)
    premises_parse: list[str] = field(default_factory=list)  # d2l text from the binary parse
    hypotheses_parse: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    dropped: int = 0  # rows with gold label '-'
    ids: list[str] = field(
        default_factory=list
    )  # SNLI pairID (else "line<N>"): what per-example predictions are keyed by

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> "Split":
        if n is None or n >= len(self):
            return self
        return Split(
            self.name,
            self.path,
            self.premises[:n],
            self.hypotheses[:n],
            self.premises_parse[:n],
            self.hypotheses_parse[:n],
            self.labels[:n],
            self.dropped,
            self.ids[:n],
        )

    def digest(self) -> str:
        return file_digest(self.path)


def parse_to_text(binary_parse: str) -> str:
    """d2l's reader: parentheses removed, runs of spaces collapsed (case kept; tokenizers lower it).

    d2l does it with three regular expressions; str methods give the same words 5x faster,
    which is most of reading 550k rows.
    """
    return " ".join(binary_parse.replace("(", "").replace(")", "").split())


def _open_text(path: Path):
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict")


def _rows(path: Path):
    """Yield (line_number, dict) for `.jsonl` and `.txt` files, plain or gzip'd."""
    is_jsonl = ".jsonl" in path.name
    with _open_text(path) as f:
        try:
            header = None
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                if is_jsonl:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise BertnliError(
                            f"{path}:{n}: not a JSON object ({e.msg}); the file is damaged, download it again"
                        ) from None
                    if not isinstance(row, dict):
                        raise BertnliError(f"{path}:{n}: not a JSON object; the file is damaged, download it again")
                    yield n, row
                else:
                    cells = line.rstrip("\n").rstrip("\r").split("\t")
                    if header is None:
                        header = cells
                        if "gold_label" not in header:
                            raise BertnliError(f"{path}:{n}: no header row with gold_label; is this an SNLI .txt file?")
                        continue
                    if len(cells) < len(header) - 5:  # label1..5 may be blank-trimmed
                        raise BertnliError(
                            f"{path}:{n}: {len(cells)} columns, expected {len(header)}; the row is truncated"
                        )
                    yield n, dict(zip(header, cells))
        except UnicodeDecodeError as e:
            raise BertnliError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); SNLI files are UTF-8") from None
        except (EOFError, gzip.BadGzipFile, OSError) as e:
            raise BertnliError(f"{path}: cannot read ({e}); the file is damaged, download it again") from None


REQUIRED = ("gold_label", "sentence1", "sentence2", "sentence1_binary_parse", "sentence2_binary_parse")


def find_split(folder: str | Path, split: str) -> Path | None:
    folder = Path(folder)
    for suffix in (".jsonl", ".jsonl.gz", ".txt", ".txt.gz"):
        p = folder / f"snli_1.0_{split}{suffix}"
        if p.is_file():
            return p
    return None


def split_path(folder: str | Path, split: str, required: bool = True) -> Path | None:
    """The file holding `snli_1.0_<split>.*` in `folder`; a missing split is an error only if required."""
    if split not in SPLITS:
        raise BadInput(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(
            f"data folder {folder} not found; give --data a folder with snli_1.0_*.jsonl[.gz] or run `bertnli-exp data "
            "download`"
        )
    path = find_split(folder, split)
    if path is None:
        if required:
            raise BadInput(
                f"no {split} split in {folder} (looked for snli_1.0_{split}.jsonl[.gz] / .txt[.gz]); give --data a "
                "folder that has it"
            )
        return None
    return path


def read_split(folder: str | Path, split: str, required: bool = True) -> Split | None:
    """Read `snli_1.0_<split>.*` from `folder`; a missing split is an error only if required."""
    path = split_path(folder, split, required)
    return None if path is None else read_file(path, split)


def read_file(path: str | Path, name: str = "") -> Split:
    path = Path(path)
    out, lines = Split(name or path.name, path), []
    for n, row in _rows(path):
        missing = [k for k in REQUIRED if not isinstance(row.get(k), str)]
        if missing:
            raise BertnliError(f"{path}:{n}: missing {', '.join(missing)}; the row is truncated or not SNLI")
        gold = row["gold_label"]
        if gold == "-":
            out.dropped += 1
            continue
        if gold not in LABEL_IDS:
            raise BertnliError(
                f"{path}:{n}: unknown gold_label {gold!r}; expected entailment, contradiction, neutral or -"
            )
        out.premises.append(row["sentence1"])
        out.hypotheses.append(row["sentence2"])
        out.premises_parse.append(parse_to_text(row["sentence1_binary_parse"]))
        out.hypotheses_parse.append(parse_to_text(row["sentence2_binary_parse"]))
        out.labels.append(LABEL_IDS[gold])
        pair_id = row.get("pairID")
        out.ids.append(pair_id if isinstance(pair_id, str) and pair_id else f"line{n}")
        lines.append(n)
    if not out.labels:
        raise BertnliError(f"{path}: no labelled rows; the file is empty or every gold_label is '-'")
    warn_repeated_ids(path, out.ids, lines)
    return out


def warn_repeated_ids(path: Path, ids: list[str], lines: list[int]) -> None:
    """One line naming the first repeated pairID and its lines: per-example predictions are keyed by pairID."""
    seen: dict[str, list[int]] = {}
    for i, n in zip(ids, lines):
        seen.setdefault(i, []).append(n)
    repeated = [(i, ns) for i, ns in seen.items() if len(ns) > 1]
    if repeated:
        first, at = repeated[0]
        print(
            f"warning: {path}: pairID {first!r} on lines {', '.join(map(str, at))} ({len(repeated)} id"
            f"{'s' if len(repeated) > 1 else ''} repeated); paired comparisons between runs need unique pairIDs",
            file=sys.stderr,
        )


def split_summary(split: Split, token_lengths: list[int] | None = None) -> dict:
    counts = [split.labels.count(i) for i in range(3)]
    out = {
        "split": split.name,
        "path": str(split.path),
        "pairs": len(split),
        "dropped_no_gold": split.dropped,
        **{f"{name}_frac": round(c / len(split), 4) for name, c in zip(LABEL_NAMES, counts)},
    }
    lengths = token_lengths or [
        len(p.split()) + len(h.split()) for p, h in zip(split.premises_parse, split.hypotheses_parse)
    ]
    lengths = sorted(lengths)
    for q in (50, 90, 99, 100):
        out[f"len_p{q}"] = lengths[min(len(lengths) - 1, int(len(lengths) * q / 100))]
    return out
