"""Fit, evaluate, predict: the training loop, its checkpoints and resume.

No MLflow here: the loop reports to callbacks (`on_fit_start`, `on_epoch_end`,
`on_fit_end`), which tracking.py and sweep.py implement. Selection is on dev: the best
dev epoch's weights are kept and test is evaluated once, on them, at the end.

Under `torchrun` (WORLD_SIZE > 1) training is data parallel (DDP; gloo on CPU, nccl on
CUDA): each global batch is split across ranks, so results match one process with the
same global batch. Every rank evaluates the full dev/test set; rank 0 alone writes.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from bertnli import BadInput, BertnliError
from bertnli.config import TrainConfig
from bertnli.data import LABEL_NAMES, split_path
from bertnli.model import NLIClassifier, build_model, model_config_dict, model_from_config_dict
from bertnli.pairs import EncodedSplit, collate, encode_file, eval_batches, train_batches
from bertnli.tokenize import Tokenizer, load_tokenizer


class TrainingDiverged(BertnliError):
    """The loss became NaN or infinite: the run is FAILED, never silently continued."""


# ---------------------------------------------------------------- results and callbacks


@dataclass
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    dev_loss: float
    dev_acc: float
    examples_per_sec: float
    train_seconds: float
    lr: float


@dataclass
class EvalResult:
    loss: float
    acc: float
    preds: np.ndarray
    labels: np.ndarray
    probs: np.ndarray

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
            out[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(m[i].sum())}
        return out


@dataclass
class FitResult:
    best_epoch: int
    best_dev_acc: float
    history: list[EpochMetrics]
    test: EvalResult | None
    dev: EvalResult | None  # the selected weights on dev
    out_dir: Path
    wall_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


class Callback(Protocol):
    """What the loop reports; `on_step(global_step, loss)` is optional and may also be defined."""

    def on_fit_start(self, info: dict[str, Any]) -> None: ...
    def on_epoch_end(self, m: EpochMetrics) -> None: ...
    def on_fit_end(self, result: FitResult) -> None: ...


# ---------------------------------------------------------------- data preparation


@dataclass
class Prepared:
    model: NLIClassifier
    tokenizer: Tokenizer
    train: EncodedSplit
    dev: EncodedSplit
    test: EncodedSplit | None
    digests: dict[str, str]


def prepare(cfg: TrainConfig, need_train: bool = True) -> Prepared:
    """Model + tokenizer, then each split encoded through the cache (limits applied after)."""
    model, tok = build_model(cfg.model, cfg.num_layers, cfg.dropout, cfg.seed)
    if cfg.max_len > model.config.max_position:
        raise BadInput(f"max_len {cfg.max_len} exceeds the model's {model.config.max_position} positions; lower --max-len")
    paths = {
        "train": split_path(cfg.data, "train", required=need_train),
        "dev": split_path(cfg.data, "dev", required=True),
        "test": split_path(cfg.data, "test", required=False),
    }
    enc, digests = {}, {}
    for name, path in paths.items():
        if path is None:
            continue
        e, digests[name] = encode_file(path, name, tok, cfg.max_len, cfg.truncation, cfg.cache_dir)
        enc[name] = e.head(cfg.limit_train if name == "train" else cfg.limit_eval)
    if paths["test"] is None and cfg.eval_test:
        print(f"note: no test split in {cfg.data}; test accuracy will not be reported")
    return Prepared(model, tok, enc.get("train"), enc["dev"], enc.get("test"), digests)


# ---------------------------------------------------------------- distributed helpers


def dist_info() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def init_distributed(device: torch.device) -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BadInput(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"device {name!r} asked for, but this machine has no CUDA GPU; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise BadInput(f"device {name!r} is not supported; use auto, cpu or cuda[:N]")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- evaluation


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run 2-4x faster than fp32 there (elsewhere they are emulated, slower)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def numeric_precision(device: torch.device, amp: bool) -> str:
    """bf16 autocast where the hardware does bf16 natively (CUDA, or a CPU with AVX512-BF16/AMX), else fp32."""
    if amp and (device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())):
        return "bf16-autocast"
    return "fp32"


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=numeric_precision(device, amp) == "bf16-autocast")


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: torch.nn.Module, enc: EncodedSplit, batch_size: int = 256, device: torch.device | str = "cpu",
             bucket: bool = True, amp: bool = True, progress: bool = False, desc: str = "eval") -> EvalResult:
    device = torch.device(device)
    was_training = model.training
    model.eval()
    n = len(enc)
    probs = np.zeros((n, 3), dtype=np.float32)
    loss_sum = 0.0
    pad_to = None if bucket else int(enc.lengths.max())
    for idx in tqdm(eval_batches(enc.lengths, batch_size, bucket), desc=desc, disable=not progress, leave=False):
        b = _to(collate(enc, idx, pad_to), device)
        with _autocast(device, amp):
            logits = model(b["input_ids"], b["token_type_ids"], b["lengths"]).float()
        loss_sum += F.cross_entropy(logits, b["labels"], reduction="sum").item()
        probs[idx] = torch.softmax(logits, -1).cpu().numpy()
    model.train(was_training)
    preds = probs.argmax(1)
    return EvalResult(loss_sum / n, float((preds == enc.labels).mean()), preds, enc.labels.copy(), probs)


# ---------------------------------------------------------------- checkpoints


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        os.replace(folder, old)
        os.replace(tmp, folder)
        import shutil

        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)


def load_selected(folder: str | Path) -> tuple[NLIClassifier, Tokenizer, dict[str, Any]]:
    """Load a folder written by save_selected (a run's `best/`, or its MLflow artifact copy)."""
    from bertnli.model import read_state_file

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
        raise BertnliError(f"{folder}: weights do not fit the model config ({str(e).splitlines()[1].strip()[:160]})") from None
    meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").is_file() else {}
    model.eval()
    return model, load_tokenizer(folder), meta


def load_last(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise BertnliError(f"cannot resume from {path}: {str(e).splitlines()[0][:200]}; the checkpoint is damaged, delete it to start over") from None


# ---------------------------------------------------------------- training


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Constant, or linear warmup over `warmup` of the steps then linear decay to 0."""
    if cfg.schedule == "constant":
        return cfg.lr
    warm = int(total * cfg.warmup)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * max(0.0, (total - step) / max(1, total - warm))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embeddings" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embeddings" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def fit(cfg: TrainConfig, out_dir: str | Path, callbacks: list[Callback] | None = None, resume: bool = False,
        prepared: Prepared | None = None, progress: bool = True) -> FitResult:
    """Train `cfg`, selecting the best dev epoch; writes checkpoints under `out_dir`.

    With `resume`, continues from `out_dir/last.pt` at the exact step it was written,
    with the same batches, optimizer state and RNG state as an uninterrupted run.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    device = resolve_device(cfg.device)
    distributed = init_distributed(device)
    rank, world = dist_info()
    is_main = rank == 0
    callbacks = (callbacks or []) if is_main else []
    seed_everything(cfg.seed)
    prep = prepared or prepare(cfg)
    if prep.train is None:
        raise BadInput(f"no train split in {cfg.data}; training needs snli_1.0_train.*")
    if cfg.batch_size % world:
        raise BadInput(f"batch_size {cfg.batch_size} is not divisible by {world} processes; choose a multiple")
    model = prep.model.to(device)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(prep.train) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs

    start_epoch, start_step, global_step = 1, 0, 0
    history: list[EpochMetrics] = []
    best_dev, best_epoch = -1.0, 0
    accum = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
    last_path = out_dir / "last.pt"
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    if resume and last_path.is_file():
        ck = load_last(last_path)
        try:
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise BertnliError(f"{last_path} does not match this model/config ({str(e).splitlines()[0][:120]}); resume with the same config or delete it") from None
        start_epoch, start_step, global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
        history = [EpochMetrics(**h) for h in ck["history"]]
        best_dev, best_epoch = ck["best_dev_acc"], ck["best_epoch"]
        accum = dict(ck["accum"])
        torch.set_rng_state(ck["rng"])
        if is_main:
            print(f"resuming from {last_path}: epoch {start_epoch}, step {start_step}/{steps_per_epoch}")

    info = {"device": str(device), "world_size": world, "train_examples": len(prep.train), "dev_examples": len(prep.dev),
            "test_examples": len(prep.test) if prep.test is not None else 0, "steps_per_epoch": steps_per_epoch,
            "parameters": sum(p.numel() for p in model.parameters()), "digests": prep.digests, "out_dir": str(out_dir),
            "resumed": bool(resume and last_path.is_file()), "precision": numeric_precision(device, cfg.amp),
            "history": [asdict(h) for h in history]}  # epochs a resumed checkpoint holds (tracking logs any it lacks)
    for cb in callbacks:
        cb.on_fit_start(info)

    train_model: torch.nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint(epoch: int, step: int) -> None:
        if not is_main:
            return
        _atomic_torch_save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step_in_epoch": step,
            "global_step": global_step, "history": [asdict(h) for h in history], "best_dev_acc": best_dev,
            "best_epoch": best_epoch, "accum": accum, "rng": torch.get_rng_state(),
        }, last_path)

    pad_to = None if cfg.bucket else cfg.max_len
    lr = cfg.lr
    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        batches = train_batches(prep.train.lengths, cfg.batch_size, cfg.seed, epoch, cfg.bucket)
        first = start_step if epoch == start_epoch else 0
        if first == 0:
            accum = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        t0 = time.perf_counter()
        bar = tqdm(total=len(batches), initial=first, desc=f"epoch {epoch}/{cfg.epochs}", disable=not (progress and is_main), leave=False)
        for step in range(first, len(batches)):
            idx = batches[step][rank::world]
            b = _to(collate(prep.train, idx, pad_to), device)
            lr = lr_at(global_step, total_steps, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with _autocast(device, cfg.amp):
                logits = train_model(b["input_ids"], b["token_type_ids"], b["lengths"]).float()
            loss = F.cross_entropy(logits, b["labels"])
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch} step {step + 1}; lower the learning rate or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            global_step += 1
            accum["loss"] += loss.item() * len(idx)
            accum["correct"] += int((logits.argmax(1) == b["labels"]).sum())
            accum["seen"] += len(idx)
            bar.update(1)
            if accum["seen"] and step % 20 == 0:
                bar.set_postfix(loss=f"{accum['loss'] / accum['seen']:.3f}", acc=f"{accum['correct'] / accum['seen']:.3f}")
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < len(batches):
                accum["seconds"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                checkpoint(epoch, step + 1)
            for cb in callbacks:
                if hasattr(cb, "on_step"):
                    cb.on_step(global_step, loss.item())
        bar.close()
        accum["seconds"] += time.perf_counter() - t0
        totals = torch.tensor([accum["loss"], accum["correct"], accum["seen"]], dtype=torch.float64)
        if distributed:
            dist.all_reduce(totals)
        seen = max(1.0, totals[2].item())
        dev = evaluate(model, prep.dev, cfg.eval_batch_size, device, cfg.bucket, cfg.amp, progress and is_main, "dev")
        m = EpochMetrics(epoch, totals[0].item() / seen, totals[1].item() / seen, dev.loss, dev.acc,
                         seen / max(accum["seconds"], 1e-9), accum["seconds"], lr)
        history.append(m)
        if is_main:
            print(f"epoch {epoch}: train_loss {m.train_loss:.4f} train_acc {m.train_acc:.4f} dev_loss {m.dev_loss:.4f} "
                  f"dev_acc {m.dev_acc:.4f} ({m.examples_per_sec:.1f} ex/s)", flush=True)
        if dev.acc > best_dev:
            best_dev, best_epoch = dev.acc, epoch
            if is_main:
                save_selected(model, prep.tokenizer, out_dir / "best", {"epoch": epoch, "dev_acc": dev.acc, "config": asdict(cfg)})
        accum = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        checkpoint(epoch + 1, 0)
        for cb in callbacks:
            cb.on_epoch_end(m)  # may raise (a sweep's pruner): the checkpoint above is already safe

    # Test once, on the weights selected on dev.
    if distributed:
        dist.barrier()  # rank 0 has written best/ before anyone reads it
    selected = load_selected(out_dir / "best")[0].to(device)
    dev_sel = evaluate(selected, prep.dev, cfg.eval_batch_size, device, cfg.bucket, cfg.amp)
    test = None
    if cfg.eval_test and prep.test is not None:
        test = evaluate(selected, prep.test, cfg.eval_batch_size, device, cfg.bucket, cfg.amp, progress and is_main, "test")
    result = FitResult(best_epoch, best_dev, history, test, dev_sel, out_dir, time.perf_counter() - t_start, info)
    if is_main:
        (out_dir / "result.json").write_text(json.dumps({
            "best_epoch": best_epoch, "best_dev_acc": best_dev, "test_acc": test.acc if test else None,
            "history": [asdict(h) for h in history], "wall_seconds": result.wall_seconds}, indent=2))
    for cb in callbacks:
        cb.on_fit_end(result)
    return result


def predict(model: NLIClassifier, tokenizer: Tokenizer, premises: list[str], hypotheses: list[str], max_len: int = 128,
            truncation: str = "longest_first", device: str = "cpu") -> np.ndarray:
    """Probabilities (n, 3) for raw sentence pairs (d2l vocabularies get simple word splitting)."""
    from bertnli.pairs import encode_pairs

    if tokenizer.text_field == "parse":
        import re

        norm = lambda s: " ".join(re.findall(r"\w+|[^\w\s]", s))  # noqa: E731 - SNLI parse tokens split punctuation
        premises, hypotheses = [norm(p) for p in premises], [norm(h) for h in hypotheses]
    enc = encode_pairs(premises, hypotheses, [0] * len(premises), tokenizer, max_len, truncation)
    return evaluate(model, enc, 64, device).probs
