"""Pretrained weights into `NLIClassifier`: safe file reading, the d2l and Hugging Face key maps, configs
read from the checkpoint itself. A key that is neither mapped nor knowingly ignored is an error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from bertnli import BertnliError
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
    return BertConfig(vocab, hidden, layers, num_heads, ffn, max_position, 2, dropout, "relu", False, 1e-5, "d2l")


def hf_config_from_json(path: Path, dropout: float | None = None) -> BertConfig:
    try:
        j = json.loads(path.read_text())
        act = j.get("hidden_act", "gelu")
        if act not in ("gelu", "relu"):
            raise BertnliError(f"{path}: hidden_act {act!r} is not supported (gelu or relu)")
        return BertConfig(
            j["vocab_size"],
            j["hidden_size"],
            j["num_hidden_layers"],
            j["num_attention_heads"],
            j["intermediate_size"],
            j.get("max_position_embeddings", 512),
            j.get("type_vocab_size", 2),
            j.get("hidden_dropout_prob", 0.1) if dropout is None else dropout,
            act,
            True,
            j.get("layer_norm_eps", 1e-12),
            "hf",
        )
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise BertnliError(f"cannot read a BERT config from {path}: {e}") from None


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
