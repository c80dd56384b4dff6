"""SNLI on disk: download, safe extraction, readers, label map and digests.

Downloads stream through requests with a sha1 check, resume with an HTTP Range request
after an interruption and appear under their final name only once verified. Readers take
the original `.txt` (tab-separated) and `.jsonl` files, plain or gzip'd.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import requests
from tqdm import tqdm

from bertnli import BadInput, BertnliError

SNLI_URL = "https://nlp.stanford.edu/projects/snli/snli_1.0.zip"
SNLI_SHA1 = "9fcde07509c7e87ec61c640c1b2753d9041758e4"

LABELS = {"entailment": 0, "contradiction": 1, "neutral": 2}
LABEL_NAMES = ["entailment", "contradiction", "neutral"]
SPLITS = ("train", "dev", "test")


# ---------------------------------------------------------------- download and extraction


def sha1_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(
    url: str,
    dest: str | Path,
    sha1: str | None = None,
    retries: int = 3,
    timeout: float = 30.0,
    backoff: float = 1.0,
    progress: bool = True,
) -> Path:
    """Fetch `url` to `dest`, resuming a partial `dest.part`; verified before it is renamed.

    A file already at `dest` with the right sha1 is not fetched again. A sha1 mismatch
    deletes the partial file, so nothing that looks valid is left behind.
    """
    if not url.startswith(("http://", "https://")):
        raise BadInput(f"{url!r} is not an http(s) URL; give a URL such as https://host/snli_1.0.zip")
    dest = Path(dest)
    if dest.exists() and (sha1 is None or sha1_of(dest) == sha1):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with requests.get(url, stream=True, timeout=timeout, headers=headers) as r:
                if r.status_code == 416:  # we already hold every byte
                    break
                if r.status_code == 404:
                    raise BertnliError(f"download failed: {url} answered 404 Not Found; check the URL or give --mirror")
                if r.status_code >= 400:
                    last_error = f"HTTP {r.status_code}"
                    continue
                if have and r.status_code != 206:  # server ignored Range: start over
                    have = 0
                total = int(r.headers.get("Content-Length", 0)) + have or None
                mode = "ab" if have else "wb"
                with open(part, mode) as f, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True,
                    desc=dest.name, disable=not progress, leave=False,
                ) as bar:
                    for block in r.iter_content(chunk_size=1 << 16):
                        f.write(block)
                        bar.update(len(block))
            break
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
            last_error = type(e).__name__
    else:
        raise BertnliError(f"download failed: {url} after {retries + 1} attempts ({last_error}); check the network or give --mirror")
    if sha1 is not None:
        got = sha1_of(part)
        if got != sha1:
            part.unlink(missing_ok=True)
            raise BertnliError(
                f"download failed: {dest.name} has sha1 {got}, expected {sha1}; the file was deleted, try again or use another mirror"
            )
    os.replace(part, dest)
    return dest


def safe_extract(archive: str | Path, folder: str | Path) -> Path:
    """Unzip with every member checked to land inside `folder` (no `../`, no absolute paths)."""
    archive, folder = Path(archive), Path(folder)
    if not zipfile.is_zipfile(archive):
        raise BertnliError(f"{archive} is not a zip archive; delete it and download again")
    root = folder.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            target = (root / member.filename).resolve()
            if target != root and root not in target.parents:
                raise BertnliError(f"{archive}: member {member.filename!r} would escape {folder}; refusing to extract")
        tmp = folder.with_name(folder.name + ".extracting")
        shutil.rmtree(tmp, ignore_errors=True)
        zf.extractall(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def fetch_snli(dest: str | Path, url: str = SNLI_URL, sha1: str = SNLI_SHA1, source: str | None = None) -> Path:
    """SNLI 1.0 into `dest/snli_1.0/`, from the web, a mirror URL, a local zip or a folder."""
    dest = Path(dest)
    if source is not None and Path(source).is_dir():
        return Path(source)
    if source is not None and Path(source).is_file():
        archive = Path(source)
        if not zipfile.is_zipfile(archive):
            raise BadInput(f"--source {source} is neither a zip archive nor an SNLI folder; give snli_1.0.zip or its unpacked folder")
    else:
        archive = download(url, dest / "snli_1.0.zip", sha1=sha1)
    out = safe_extract(archive, dest / "snli_1.0.extracted")
    inner = out / "snli_1.0"
    return inner if inner.is_dir() else out


# ---------------------------------------------------------------- readers


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
    ids: list[str] = field(default_factory=list)  # SNLI pairID (else "line<N>"): what per-example predictions are keyed by

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> "Split":
        if n is None or n >= len(self):
            return self
        return Split(self.name, self.path, self.premises[:n], self.hypotheses[:n],
                     self.premises_parse[:n], self.hypotheses_parse[:n], self.labels[:n], self.dropped, self.ids[:n])

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
                        raise BertnliError(f"{path}:{n}: not a JSON object ({e.msg}); the file is damaged, download it again") from None
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
                        raise BertnliError(f"{path}:{n}: {len(cells)} columns, expected {len(header)}; the row is truncated")
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
        raise BadInput(f"data folder {folder} not found; give --data a folder with snli_1.0_*.jsonl[.gz] or run `bertnli-exp data download`")
    path = find_split(folder, split)
    if path is None:
        if required:
            raise BadInput(f"no {split} split in {folder} (looked for snli_1.0_{split}.jsonl[.gz] / .txt[.gz]); give --data a folder that has it")
        return None
    return path


def read_split(folder: str | Path, split: str, required: bool = True) -> Split | None:
    """Read `snli_1.0_<split>.*` from `folder`; a missing split is an error only if required."""
    path = split_path(folder, split, required)
    return None if path is None else read_file(path, split)


def read_file(path: str | Path, name: str = "") -> Split:
    path = Path(path)
    out = Split(name or path.name, path)
    for n, row in _rows(path):
        missing = [k for k in REQUIRED if not isinstance(row.get(k), str)]
        if missing:
            raise BertnliError(f"{path}:{n}: missing {', '.join(missing)}; the row is truncated or not SNLI")
        gold = row["gold_label"]
        if gold == "-":
            out.dropped += 1
            continue
        if gold not in LABELS:
            raise BertnliError(f"{path}:{n}: unknown gold_label {gold!r}; expected entailment, contradiction, neutral or -")
        out.premises.append(row["sentence1"])
        out.hypotheses.append(row["sentence2"])
        out.premises_parse.append(parse_to_text(row["sentence1_binary_parse"]))
        out.hypotheses_parse.append(parse_to_text(row["sentence2_binary_parse"]))
        out.labels.append(LABELS[gold])
        pair_id = row.get("pairID")
        out.ids.append(pair_id if isinstance(pair_id, str) and pair_id else f"line{n}")
    if not out.labels:
        raise BertnliError(f"{path}: no labelled rows; the file is empty or every gold_label is '-'")
    return out


def file_digest(path: str | Path) -> str:
    """sha256 of the file's bytes: what the encoded-split cache and MLflow key data by."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def split_summary(split: Split, token_lengths: list[int] | None = None) -> dict:
    counts = [split.labels.count(i) for i in range(3)]
    out = {
        "split": split.name,
        "path": str(split.path),
        "pairs": len(split),
        "dropped_no_gold": split.dropped,
        **{f"{name}_frac": round(c / len(split), 4) for name, c in zip(LABEL_NAMES, counts)},
    }
    lengths = token_lengths or [len(p.split()) + len(h.split()) for p, h in zip(split.premises_parse, split.hypotheses_parse)]
    lengths = sorted(lengths)
    for q in (50, 90, 99, 100):
        out[f"len_p{q}"] = lengths[min(len(lengths) - 1, int(len(lengths) * q / 100))]
    return out


# ---------------------------------------------------------------- sentence pairs for predict


def _jsonl_pair(path: str, n: int, line: str) -> tuple[str, str]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadInput(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); "
                       'each line must be one object such as {"sentence1": "...", "sentence2": "..."}') from None
    if not isinstance(row, dict):
        raise BadInput(f"{path}:{n}: a JSON {type(row).__name__}, not an object with sentence1 and sentence2")
    for key in ("sentence1", "sentence2"):
        if not isinstance(row.get(key), str):
            raise BadInput(f"{path}:{n}: " + (f"no {key!r} field" if key not in row else f"{key!r} is not text")
                           + "; each line needs sentence1 (premise) and sentence2 (hypothesis)")
    return row["sentence1"], row["sentence2"]


def read_pairs(path: str) -> tuple[list[str], list[str]]:
    """Pairs from TSV or JSONL; a bad line is one error naming the file and the line."""
    premises, hypotheses = [], []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); give a UTF-8 TSV or JSONL file") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if path.endswith(".jsonl"):
            p, h = _jsonl_pair(path, n, line)
        else:
            cells = line.split("\t")
            if len(cells) < 2:
                raise BadInput(f"{path}:{n}: expected premise<TAB>hypothesis")
            p, h = cells[0], cells[1]
        premises.append(p)
        hypotheses.append(h)
    if not premises:
        raise BadInput(f"{path}: no sentence pairs in it; give premise<TAB>hypothesis lines or JSONL with sentence1/sentence2")
    return premises, hypotheses
