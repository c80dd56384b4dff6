"""One plain-PyTorch BERT encoder and the NLI classifier head.

Module names follow Hugging Face's `modeling_bert.py` (so HF checkpoints load by stripping
a prefix, weights.py); d2l's `pretrained.params` loads through an explicit key map. The two
families differ only in a few switches on `BertConfig`: activation (ReLU / GELU), embedding
LayerNorm and dropout, LayerNorm epsilon. Attention is `scaled_dot_product_attention`
with a key-padding mask, so padded keys get no weight, as in d2l's masked softmax.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bertnli import BertnliError

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
            heads(self.query(x)),
            heads(self.key(x)),
            heads(self.value(x)),
            attn_mask=mask,
            dropout_p=self.p if self.training else 0.0,
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

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
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

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.encoder(input_ids, token_type_ids, lengths)
        return self.classifier(torch.tanh(self.pooler(h[:, 0])))


def model_config_dict(c: BertConfig) -> dict:
    return dataclasses.asdict(c)


def model_from_config_dict(d: dict) -> NLIClassifier:
    return NLIClassifier(BertConfig(**d))
