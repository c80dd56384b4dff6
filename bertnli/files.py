"""Files on disk: downloads, safe extraction, digests, atomic writes and the model cache.

Downloads stream through requests with a sha1 check, resume with an HTTP Range request after an
interruption and appear under their final name only once verified. Every file that another
process (or a later `--resume`) may read is written through `atomic_path`: it appears complete
under its final name, or not at all, and a failed write leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import zipfile
from pathlib import Path
from typing import Iterator

import requests
from tqdm import tqdm

from bertnli import BadInput, BertnliError
from bertnli.retry import policy


def cache_root() -> Path:
    """Downloaded archives live here; BERTNLI_CACHE moves it."""
    return Path(os.environ.get("BERTNLI_CACHE", Path.home() / ".cache" / "bertnli"))


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes: what the encoded-split cache, MLflow inputs and downloads key data by."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix, so numpy and torch keep the name) that replaces
    `path` when the block succeeds and is removed when it fails (a full disk leaves nothing behind).
    Named per process and thread, so two threads writing the same file never share a temporary."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Text or bytes under `path`, complete or not at all (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)


def replace_folder(tmp: Path, folder: Path) -> None:
    """Swap a completely written `tmp` folder in as `folder`; a crash between the two renames leaves
    `folder.old`, which the next swap clears."""
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)


class HTTPStatusError(Exception):
    """An HTTP error status worth another attempt (5xx, 429, ...); 404 is final."""


def _fetch_part(url: str, part: Path, timeout: float, progress: bool, desc: str) -> None:
    """One attempt: append what the server still has to send to `part` (an HTTP Range request)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url, stream=True, timeout=timeout, headers=headers) as r:
        if r.status_code == 416:  # we already hold every byte
            return
        if r.status_code == 404:
            raise BertnliError(f"download failed: {url} answered 404 Not Found; check the URL or give --mirror")
        if r.status_code >= 400:
            raise HTTPStatusError(f"HTTP {r.status_code}")
        if have and r.status_code != 206:  # server ignored Range: start over
            have = 0
        total = int(r.headers.get("Content-Length", 0)) + have or None
        with (
            open(part, "ab" if have else "wb") as f,
            tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=desc, disable=not progress, leave=False
            ) as bar,
        ):
            for block in r.iter_content(chunk_size=1 << 16):
                f.write(block)
                bar.update(len(block))


RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, HTTPStatusError)


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
    if dest.exists() and (sha1 is None or file_digest(dest, "sha1") == sha1):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempts = policy(RETRYABLE, attempts=retries + 1, first=backoff, cap=None)
    try:
        attempts(_fetch_part, url, part, timeout, progress, dest.name)
    except RETRYABLE as e:
        why = str(e) if isinstance(e, HTTPStatusError) else type(e).__name__
        raise BertnliError(
            f"download failed: {url} after {retries + 1} attempts ({why}); check the network or give --mirror"
        ) from None
    if sha1 is not None:
        got = file_digest(part, "sha1")
        if got != sha1:
            part.unlink(missing_ok=True)
            raise BertnliError(
                f"download failed: {dest.name} has sha1 {got}, expected {sha1}; the file was deleted, try again or use "
                "another mirror"
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
    replace_folder(tmp, folder)
    return folder
