"""The optimizer and the learning-rate schedule (constant, or linear warmup then decay)."""

from __future__ import annotations

import torch

from bertnli.config import TrainConfig


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Constant, or linear warmup over `warmup` of the steps then linear decay to 0."""
    if cfg.schedule == "constant":
        return cfg.lr
    warm = int(total * cfg.warmup)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * max(0.0, (total - step) / max(1, total - warm))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """BERT's recipe: weight decay on the weight matrices only, not on biases, LayerNorms or embeddings."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embeddings" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embeddings" not in n)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device, fused: bool | None = None
) -> torch.optim.Optimizer:
    """Fused kernels on CUDA and on the CPU (fused=None): one pass over all parameters.

    On the CPU, PyTorch's default is a Python loop over the tensors; the fused step over minilm-l6
    is several times faster and training at batch 32 about 1.1x (`benchmarks/optimizer.py`); the
    update is the same up to float rounding (tests/train/test_optimizer.py). A resumed run keeps the fused
    setting its checkpoint was written with (`load_state_dict` restores it).
    """
    if fused is None:
        fused = device.type in ("cuda", "cpu")
    kw = {"fused": True} if fused else {}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, **kw)
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, **kw)
