"""Checkpoint files: the selected weights as a self-contained folder, and the resumable `last.pt`.

Both are read as untrusted files: safetensors for weights, `torch.load(weights_only=True)` for
the training state, so a crafted file cannot run code. Both are written atomically: a crash
mid-write leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from bertnli import BadInput, BertnliError
from bertnli.data.tokenize import Tokenizer, load_tokenizer
from bertnli.files import atomic_path, replace_folder
from bertnli.model.bert import NLIClassifier, model_config_dict, model_from_config_dict
from bertnli.model.weights import read_state_file


def save_last(state: dict[str, Any], path: Path) -> None:
    """The train state a resume continues from (`load_last` reads it back).

    Written through a file object of ours, so a full disk surfaces as the OS's error (torch's own writer
    reports it as "unexpected pos"); the previous `last.pt` stays as it was."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as e:
        cause = e
        while cause is not None and not isinstance(cause, OSError):  # torch wraps the OS error in its own
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise BertnliError(
            f"{cause.strerror or cause} writing {path}; free space there (or move the run folder) and continue with "
            "--resume"
        ) from None


def save_selected(model: NLIClassifier, tokenizer: Tokenizer, folder: Path, meta: dict[str, Any]) -> None:
    """The selected weights as a self-contained folder: safetensors + model config + tokenizer."""
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    (tmp / "model_config.json").write_text(json.dumps(model_config_dict(model.config), indent=2))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    tokenizer.save(tmp)
    replace_folder(tmp, folder)


def load_selected(folder: str | Path) -> tuple[NLIClassifier, Tokenizer, dict[str, Any]]:
    """Load a folder written by save_selected (a run's `best/`, or its MLflow artifact copy)."""
    folder = Path(folder)
    cfg_path = folder / "model_config.json"
    if not cfg_path.is_file() or not (folder / "model.safetensors").is_file():
        raise BadInput(f"{folder} is not a bertnli checkpoint (needs model.safetensors and model_config.json)")
    try:
        model = model_from_config_dict(json.loads(cfg_path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise BertnliError(f"{cfg_path} is damaged: {e}") from None
    state = read_state_file(folder / "model.safetensors")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise BertnliError(
            f"{folder}: weights do not fit the model config ({str(e).splitlines()[1].strip()[:160]})"
        ) from None
    meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").is_file() else {}
    model.eval()
    return model, load_tokenizer(folder), meta


LAST_KEYS = (
    "model",
    "optimizer",
    "epoch",
    "step_in_epoch",
    "global_step",
    "history",
    "best_dev_acc",
    "best_epoch",
    "accum",
    "rng",
)
START_OVER = "start the run over (its --out with --overwrite) or give another --out"


def load_last(path: Path) -> dict[str, Any]:
    """`last.pt`, read without running code; anything but a train state (a damaged file, a list) is one line."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any decoding failure is the file's fault
        raise BertnliError(
            f"cannot resume from {path}: {str(e).splitlines()[0][:200]}; the checkpoint is damaged: {START_OVER}"
        ) from None
    missing = [k for k in LAST_KEYS if k not in ck] if isinstance(ck, dict) else list(LAST_KEYS)
    if missing:
        raise BertnliError(
            f"cannot resume from {path}: not a bertnli train state (no {', '.join(missing[:3])}); {START_OVER}"
        )
    return ck


def check_selected(folder: Path, epoch: int) -> None:
    """Before a resume trains on: the weights selected so far must still load, or the run could never finish."""
    try:
        load_selected(folder)
    except BertnliError as e:
        raise BertnliError(
            f"{folder} is damaged ({str(e)[:160]}); the weights selected at epoch {epoch} are lost: {START_OVER}"
        ) from None
