"""d2l's BERT archives: the two published ones (downloaded once into the cache) and local ones.

d2l publishes `bert.small.torch.zip` / `bert.base.torch.zip`; each unpacks to a single
`bert.*` folder holding `pretrained.params` and `vocab.json`. A user may hand over the zip,
the folder it unpacked into, or the inner folder: all three load the same weights.
"""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from pathlib import Path

from bertnli import BadInput, BertnliError
from bertnli.files import cache_root, download, file_digest, safe_extract

D2L_HUB = "http://d2l-data.s3-accelerate.amazonaws.com/"


D2L_ARCHIVES = {
    # name: (file, sha1, heads) from d2l's DATA_HUB; heads are not recoverable from weights
    "d2l-bert-small": ("bert.small.torch.zip", "c72329e68a732bef0452e4b96a1c341c8910f81f", 4),
    "d2l-bert-base": ("bert.base.torch.zip", "225d66f04cae318b841a13d32af3acc165f253ac", 12),
}


def fetch_d2l_archive(name: str, hub: str | None = None) -> Path:
    file, sha1, _ = D2L_ARCHIVES[name]
    folder = cache_root() / name
    if (folder / "pretrained.params").is_file() and (folder / "vocab.json").is_file():
        return folder
    hub = hub or os.environ.get("BERTNLI_D2L_HUB", D2L_HUB)
    archive = download(hub.rstrip("/") + "/" + file, cache_root() / file, sha1=sha1)
    extracted = safe_extract(archive, cache_root() / f"{name}.extracted")
    inner = next((p.parent for p in extracted.rglob("pretrained.params")), None)
    if inner is None or not (inner / "vocab.json").is_file():
        raise BertnliError(f"{archive} has no pretrained.params + vocab.json; it is not a d2l BERT archive")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(inner, folder)
    return folder


D2L_FORMS = (
    "a folder with pretrained.params and vocab.json, a folder holding a single bert.* folder, "
    "or a d2l .zip archive such as bert.small.torch.zip"
)


_WARNED: set[str] = set()


def _is_archive_folder(folder: Path) -> bool:
    return (folder / "pretrained.params").is_file() and (folder / "vocab.json").is_file()


def _inner_bert_folder(folder: Path) -> Path | None:
    """The one `bert.*` subfolder of an unpacked d2l zip, if the folder holds exactly one."""
    inner = [p for p in folder.glob("bert.*") if p.is_dir()]
    return inner[0] if len(inner) == 1 and _is_archive_folder(inner[0]) else None


def _unpacked(archive: Path) -> Path:
    """Unpack a d2l zip once into the model cache, keyed by its bytes (a changed zip unpacks anew)."""
    dest = cache_root() / "d2l-local" / f"{archive.stem}-{file_digest(archive)[:12]}"
    return dest if dest.is_dir() else safe_extract(archive, dest)


def check_d2l_path(path: Path) -> None:
    """Refuse a path that is none of the d2l forms before any work starts."""
    if path.is_file() and zipfile.is_zipfile(path):
        return
    if path.is_dir() and (_is_archive_folder(path) or _inner_bert_folder(path)):
        return
    what = "does not exist" if not path.exists() else "is not a d2l BERT archive"
    raise BadInput(f"d2l:{path} {what}; d2l: takes {D2L_FORMS}")


def resolve_d2l_path(path: Path) -> Path:
    """The folder holding pretrained.params + vocab.json, for any of the accepted forms."""
    check_d2l_path(path)
    folder = _unpacked(path) if path.is_file() else path
    if _is_archive_folder(folder):
        return folder
    inner = _inner_bert_folder(folder)
    if inner is None:
        raise BadInput(
            f"d2l:{path} unpacks to no single bert.* folder with pretrained.params and vocab.json; "
            f"d2l: takes {D2L_FORMS}"
        )
    return inner


def warn_guessed_heads(folder: Path, given: str, hidden: int, heads: int) -> None:
    """One line, once per archive and process: a wrong head count loads without error but computes garbage.
    `given` is what the user named (`d2l:archive.zip`), `folder` where it was unpacked."""
    key = str(Path(folder).resolve())
    if key in _WARNED:
        return
    _WARNED.add(key)
    print(
        f"warning: {given} does not store its attention head count; guessing {heads} (hidden {hidden} / 64); "
        f"give --num-heads N (num_heads in the TOML) if the archive was trained with another",
        file=sys.stderr,
    )
