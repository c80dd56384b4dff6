"""Pretrained weights into `NLIClassifier`: safe file reading, the d2l and Hugging Face key maps, configs
read from the checkpoint itself. A key that is neither mapped nor knowingly ignored is an error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from bertnli import BadInput, BertnliError
from bertnli.model.bert import BertConfig, NLIClassifier


def _hf_layer_map(i: int) -> dict[str, str]:
    src = f"encoder.layer.{i}."
    dst = f"encoder.layers.{i}."
    pairs = {
        "attention.self.query": "attention.query",
        "attention.self.key": "attention.key",
        "attention.self.value": "attention.value",
        "attention.output.dense": "attention_output",
        "attention.output.LayerNorm": "attention_norm",
        "intermediate.dense": "intermediate",
        "output.dense": "output",
        "output.LayerNorm": "output_norm",
    }
    return {f"{src}{a}.{w}": f"{dst}{b}.{w}" for a, b in pairs.items() for w in ("weight", "bias")}


def hf_key_map(num_layers: int) -> dict[str, str]:
    """Hugging Face `BertModel` names (after any `bert.` prefix) -> our names."""
    m = {
        f"embeddings.{n}.weight": f"encoder.embeddings.{n}.weight"
        for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    }
    m |= {f"embeddings.LayerNorm.{w}": f"encoder.embeddings.LayerNorm.{w}" for w in ("weight", "bias")}
    m |= {f"pooler.dense.{w}": f"pooler.{w}" for w in ("weight", "bias")}
    for i in range(num_layers):
        m |= _hf_layer_map(i)
    return m


HF_IGNORED = re.compile(r"^(embeddings\.position_ids|cls\..*)$")  # buffers and pretraining heads


def d2l_key_map(num_layers: int) -> dict[str, str]:
    """d2l `BERTModel.state_dict()` names -> our names (`pos_embedding` is a (1, L, H) Parameter)."""
    m = {
        "encoder.token_embedding.weight": "encoder.embeddings.word_embeddings.weight",
        "encoder.segment_embedding.weight": "encoder.embeddings.token_type_embeddings.weight",
        "encoder.pos_embedding": "encoder.embeddings.position_embeddings.weight",
        "hidden.0.weight": "pooler.weight",
        "hidden.0.bias": "pooler.bias",
    }
    pairs = {
        "attention.W_q": "attention.query",
        "attention.W_k": "attention.key",
        "attention.W_v": "attention.value",
        "attention.W_o": "attention_output",
        "addnorm1.ln": "attention_norm",
        "ffn.dense1": "intermediate",
        "ffn.dense2": "output",
        "addnorm2.ln": "output_norm",
    }
    for i in range(num_layers):
        m |= {
            f"encoder.blks.{i}.{a}.{w}": f"encoder.layers.{i}.{b}.{w}"
            for a, b in pairs.items()
            for w in ("weight", "bias")
        }
    return m


D2L_IGNORED = re.compile(r"^(mlm\..*|nsp\..*)$")  # pretraining heads, unused for NLI


def d2l_config_from_state(state: dict[str, torch.Tensor], num_heads: int, dropout: float = 0.1) -> BertConfig:
    """Shapes from the weights themselves (d2l's chapter code hard-codes bert.small's for both)."""
    try:
        vocab, hidden = state["encoder.token_embedding.weight"].shape
        layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.blks."))
        ffn = state["encoder.blks.0.ffn.dense1.weight"].shape[0]
        max_position = state["encoder.pos_embedding"].shape[1]
    except (KeyError, ValueError, IndexError) as e:
        raise BertnliError(
            f"not a d2l BERT state_dict (missing {e}); expected keys like encoder.blks.0.attention.W_q.weight"
        ) from None
    if num_heads < 1 or hidden % num_heads:
        raise BadInput(f"num_heads {num_heads} does not divide the archive's hidden size {hidden}; give --num-heads N")
    return BertConfig(vocab, hidden, layers, num_heads, ffn, max_position, 2, dropout, "relu", False, 1e-5, "d2l")


# config.json's sizes: their defaults, and bounds no BERT comes near (a crafted config must not allocate terabytes)
HF_SIZES = {
    "vocab_size": (None, 1_000_000),
    "hidden_size": (None, 16_384),
    "num_hidden_layers": (None, 256),
    "num_attention_heads": (None, 256),
    "intermediate_size": (None, 65_536),
    "max_position_embeddings": (512, 65_536),
    "type_vocab_size": (2, 64),
}


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape, read from a safetensors header without loading a tensor (a torch file is read safely)."""
    if path.suffix != ".safetensors":
        return {k: tuple(v.shape) for k, v in read_state_file(path).items()}
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any decoding failure is the file's fault
        raise BertnliError(
            f"cannot load weights from {path}: {str(e).splitlines()[0][:200]}; the file is damaged "
            "or not a weights file"
        ) from None


def hf_sizes(shapes: dict[str, tuple[int, ...]], weights: Path) -> dict[str, int]:
    """The sizes a Hugging Face BERT state dict has, by config.json key (heads are not in the shapes)."""
    s = {k.removeprefix("bert."): v for k, v in shapes.items()}
    try:
        vocab, hidden = s["embeddings.word_embeddings.weight"]
        return {
            "vocab_size": vocab,
            "hidden_size": hidden,
            "num_hidden_layers": 1 + max(int(k.split(".")[2]) for k in s if k.startswith("encoder.layer.")),
            "intermediate_size": s["encoder.layer.0.intermediate.dense.weight"][0],
            "max_position_embeddings": s["embeddings.position_embeddings.weight"][0],
            "type_vocab_size": s["embeddings.token_type_embeddings.weight"][0],
        }
    except (KeyError, ValueError) as e:
        raise BertnliError(
            f"{weights} is not a BERT checkpoint (no {e}); expected keys like embeddings.word_embeddings.weight"
        ) from None


def checked_sizes(j: dict, path: Path, weights: Path) -> dict[str, int]:
    """config.json's sizes, each a positive integer within bounds and equal to what the weights hold; one line
    naming the field otherwise. Run before any model is built."""
    have = hf_sizes(weight_shapes(weights), weights)
    sizes = {}
    for key, (default, bound) in HF_SIZES.items():
        value = j.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bound:
            raise BadInput(f"{path}: {key} is {value!r}, not a whole number in 1..{bound}; fix config.json")
        if key in have and value != have[key]:
            raise BadInput(
                f"{path}: {key} is {value}, but {weights.name} holds {have[key]}; config.json and the "
                "weights do not belong together"
            )
        sizes[key] = value
    if sizes["hidden_size"] % sizes["num_attention_heads"]:
        raise BadInput(
            f"{path}: num_attention_heads {sizes['num_attention_heads']} does not divide hidden_size "
            f"{sizes['hidden_size']}; fix config.json"
        )
    return sizes


def hf_config_from_json(path: Path, weights: Path, dropout: float | None = None) -> BertConfig:
    """A Hugging Face BERT folder's config, checked against its weights file before anything is allocated."""
    try:
        j = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BertnliError(f"cannot read a BERT config from {path}: {e}") from None
    if not isinstance(j, dict):
        raise BadInput(f"{path} is not a JSON object; give a Hugging Face BERT config.json")
    act = j.get("hidden_act", "gelu")
    if act not in ("gelu", "relu"):
        raise BertnliError(f"{path}: hidden_act {act!r} is not supported (gelu or relu)")
    n = checked_sizes(j, path, weights)
    return BertConfig(
        n["vocab_size"],
        n["hidden_size"],
        n["num_hidden_layers"],
        n["num_attention_heads"],
        n["intermediate_size"],
        n["max_position_embeddings"],
        n["type_vocab_size"],
        j.get("hidden_dropout_prob", 0.1) if dropout is None else dropout,
        act,
        True,
        j.get("layer_norm_eps", 1e-12),
        "hf",
    )


def map_state(
    state: dict[str, torch.Tensor], key_map: dict[str, str], ignored: re.Pattern, num_layers: int
) -> dict[str, torch.Tensor]:
    """Rename every key; a key neither mapped, ignored, nor a dropped layer is an error."""
    out, unknown = {}, []
    for k, v in state.items():
        if k in key_map:
            out[key_map[k]] = v
        elif ignored.match(k):
            continue
        elif (m := re.match(r"^encoder\.(?:layer|blks)\.(\d+)\.", k)) and int(m.group(1)) >= num_layers:
            continue  # layer-truncated variant: deeper layers are deliberately not loaded
        else:
            unknown.append(k)
    if unknown:
        raise BertnliError(
            f"checkpoint has {len(unknown)} unexpected key(s), e.g. {unknown[0]}; is it a BERT of the expected family?"
        )
    if (
        "encoder.embeddings.position_embeddings.weight" in out
        and out["encoder.embeddings.position_embeddings.weight"].dim() == 3
    ):
        out["encoder.embeddings.position_embeddings.weight"] = out["encoder.embeddings.position_embeddings.weight"][0]
    return out


def load_encoder_weights(model: NLIClassifier, state: dict[str, torch.Tensor], source: str) -> None:
    """Load pretrained weights into everything but the new classifier; shapes must match."""
    c = model.config
    if c.family == "d2l":
        mapped = map_state(state, d2l_key_map(c.num_layers), D2L_IGNORED, c.num_layers)
    else:
        state = {k.removeprefix("bert."): v for k, v in state.items()}
        mapped = map_state(state, hf_key_map(c.num_layers), HF_IGNORED, c.num_layers)
    own = model.state_dict()
    for k, v in mapped.items():
        if own[k].shape != v.shape:
            raise BertnliError(
                f"{source}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}; wrong preset or "
                "config?"
            )
    missing = [k for k in own if k not in mapped and not k.startswith("classifier.")]
    if c.family == "hf" and missing == ["pooler.weight", "pooler.bias"]:
        missing = []  # a BertModel saved without its pooler: the hidden layer starts fresh
    if missing:
        raise BertnliError(
            f"{source}: {len(missing)} weight(s) missing, e.g. {missing[0]}; the checkpoint is incomplete"
        )
    model.load_state_dict(mapped, strict=False)


def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    """safetensors, or a torch pickle loaded with weights_only=True (no code runs)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any decoding failure is the file's fault
        raise BertnliError(
            f"cannot load weights from {path}: {str(e).splitlines()[0][:200]}; the file is damaged or not a weights "
            "file"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BertnliError(f"{path} is not a state_dict of tensors")
    return state
