"""Scoring a model on encoded pairs: accuracy, loss and per-example probabilities; raw pairs to predictions.

Shared by training (dev after every epoch, test once at the end) and by the `evaluate` and
`predict` commands. Logits stay on the device until the last batch: no per-batch host sync.
"""

from __future__ import annotations

import contextlib
import functools
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bertnli.data.batches import collate, eval_batches
from bertnli.data.encode import EncodedSplit, encode_pairs
from bertnli.data.snli import LABEL_NAMES
from bertnli.data.tokenize import Tokenizer
from bertnli.model.bert import NLIClassifier
from bertnli.train.runtime import attention_context, autocast, numeric_precision, staged


@dataclass
class EvalResult:
    loss: float
    acc: float
    preds: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    ids: np.ndarray | None = None  # the split's example ids (SNLI pairID), row-aligned with preds

    def confusion(self) -> np.ndarray:
        """rows: gold, columns: predicted, in label order entailment, contradiction, neutral."""
        m = np.zeros((3, 3), dtype=np.int64)
        np.add.at(m, (self.labels, self.preds), 1)
        return m

    def per_class(self) -> dict[str, dict[str, float]]:
        m = self.confusion()
        out = {}
        for i, name in enumerate(LABEL_NAMES):
            tp = m[i, i]
            precision = tp / m[:, i].sum() if m[:, i].sum() else 0.0
            recall = tp / m[i].sum() if m[i].sum() else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            out[name] = {
                "precision": float(precision),
                "recall": float(recall),
                "f1": float(f1),
                "support": int(m[i].sum()),
            }
        return out


def model_inputs(b: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The forward's arguments; lengths only where some row is padded (the model then builds a mask)."""
    return b["input_ids"], b["token_type_ids"], b["lengths"] if b["padded"] else None


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    enc: EncodedSplit,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    bucket: bool = True,
    amp: bool = True,
    progress: bool = False,
    desc: str = "eval",
    pad_multiple: int = 8,
) -> EvalResult:
    """Logits stay on the device until the last batch: one transfer and no per-batch host sync."""
    device = torch.device(device)
    precision = numeric_precision(device, amp)
    was_training = model.training
    model.eval()
    batches = eval_batches(enc.lengths, batch_size, bucket)
    pad_to = None if bucket else int(enc.lengths.max())
    cap = getattr(
        getattr(model, "config", None), "max_position", None
    )  # rounding never reaches past the position table
    make = functools.partial(collate, enc, pad_to=pad_to, multiple=pad_multiple, cap=cap)
    logits, labels = [], []
    with attention_context(device):
        with contextlib.closing(staged(make, batches, device)) as stream:  # the staging thread stops however this ends
            for b in tqdm(stream, total=len(batches), desc=desc, disable=not progress, leave=False):
                with autocast(device, precision):
                    logits.append(model(*model_inputs(b)).float())
                labels.append(b["labels"])
    all_logits = torch.cat(logits)
    loss = F.cross_entropy(all_logits, torch.cat(labels)).item()
    probs = np.zeros((len(enc), 3), dtype=np.float32)
    probs[np.concatenate(batches)] = torch.softmax(all_logits, -1).cpu().numpy()
    model.train(was_training)
    preds = probs.argmax(1)
    return EvalResult(loss, float((preds == enc.labels).mean()), preds, enc.labels.copy(), probs, enc.example_ids)


def predict(
    model: NLIClassifier,
    tokenizer: Tokenizer,
    premises: list[str],
    hypotheses: list[str],
    max_len: int = 128,
    truncation: str = "longest_first",
    device: str = "cpu",
    amp: bool = True,
) -> np.ndarray:
    """Probabilities (n, 3) for raw sentence pairs (d2l vocabularies get simple word splitting). With `amp`, in
    bf16 where the hardware does it natively: they differ from fp32's in the 3rd decimal."""
    if tokenizer.text_field == "parse":
        norm = lambda s: " ".join(re.findall(r"\w+|[^\w\s]", s))  # noqa: E731 - SNLI parse tokens split punctuation
        premises, hypotheses = [norm(p) for p in premises], [norm(h) for h in hypotheses]
    enc = encode_pairs(premises, hypotheses, [0] * len(premises), tokenizer, max_len, truncation)
    return evaluate(model, enc, 64, device, amp=amp).probs
