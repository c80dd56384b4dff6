"""GPU throughput: the d2l chapter's setting against bertnli's default training path, side by side in one process.

  seed-style : d2l's own encoder (restated in tests/d2l_reference.py), fp32, every batch padded to 128,
               random order, batches collated on the CPU at each step, a host sync per step (d2l's
               train_batch_ch13 reads the loss), Adam
  bertnli    : the engine's own `train_epoch` and `evaluate`, as `fit` runs them on CUDA: bf16 autocast,
               length buckets, widths rounded up to a multiple of 8, SDPA with cuDNN attention excluded,
               fused AdamW, batches collated and pinned ahead by a thread, totals read every 50 steps

Same real snli-resplit pairs for both (the train split repeated 4x: 54,852 pairs), d2l-style word
vocabulary, random weights (throughput does not depend on them). For each shape and batch it prints
train and eval examples/s, their ratio to seed-style, useful MFU (FLOPs of real tokens) and hardware
MFU (FLOPs of padded tokens) against a bf16 dense peak of 989 TFLOP/s, and peak GPU memory. bertnli
trains two passes over the same batches: pass 1 meets every width for the first time (the warm-up
cliff the engine must not have), pass 2 has seen them all. A last section compares attention backends
on pass 1 and counts host syncs in 40 steps of the engine's loop.

    python benchmarks/gpu.py                       # the full table (under 4 minutes on one H100/H200)
    python benchmarks/gpu.py --candidates          # also torch.compile of the engine's path
    python benchmarks/gpu.py --only base:128 --candidates --modes reduce-overhead   # one setting and one mode
    python benchmarks/gpu.py --device cpu --smoke  # a tiny run of every code path, on the CPU (tests)

Without CUDA (and without --device cpu) it says so and exits 0. Data: --data, else .gpudata/ (a
git-ignored copy carried to a GPU machine), else ../shared/data/snli-resplit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from throughput import D2LClassifier, real_pairs  # noqa: E402 - the same seed model and data as the CPU benchmark

from bertnli.config import TrainConfig  # noqa: E402
from bertnli.data.batches import batch_width, collate, eval_batches, train_batches  # noqa: E402
from bertnli.data.encode import EncodedSplit  # noqa: E402
from bertnli.model.bert import BertConfig, NLIClassifier  # noqa: E402
from bertnli.train.evaluation import evaluate  # noqa: E402
from bertnli.train.loop import Loop, train_epoch  # noqa: E402
from bertnli.train.optimizer import make_optimizer  # noqa: E402
from bertnli.train.runtime import attention_context, attention_name, grad_scaler, numeric_precision  # noqa: E402
from bertnli.train.state import TrainState, fresh_accum  # noqa: E402

SHAPES = {"small": (256, 2, 4, 512), "base": (768, 12, 12, 3072)}  # hidden, layers, heads, ffn
PEAK_BF16 = 989e12  # H100/H200 SXM dense bf16, the datasheet figure the issue used
SETTINGS = [("small", 512), ("base", 128), ("base", 512)]


def forward_flops(n: torch.Tensor | float, hidden: int, layers: int, ffn: int) -> torch.Tensor | float:
    """Matmul FLOPs of one forward pass over a sequence of n tokens (attention scores included)."""
    return layers * (2 * n * (4 * hidden * hidden + 2 * hidden * ffn) + 4 * n * n * hidden) + 2 * (
        hidden * hidden + 3 * hidden
    )


def batch_flops(enc: EncodedSplit, batches, shape, width_of) -> tuple[float, float]:
    """(useful, hardware) training FLOPs (3x forward) of `batches`: real tokens, and tokens as padded."""
    hidden, layers, _, ffn = shape
    useful = hardware = 0.0
    for idx in batches:
        lengths = torch.from_numpy(enc.lengths[idx]).double()
        useful += 3 * float(forward_flops(lengths, hidden, layers, ffn).sum())
        hardware += 3 * len(idx) * forward_flops(float(width_of(idx)), hidden, layers, ffn)
    return useful, hardware


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_train(model, enc, batches, device, warmup=3):
    """d2l's loop: static padding, fp32, CPU collate and a host read of the loss every step."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    seen, t0 = 0, None
    for i, idx in enumerate(batches):
        if i == warmup:
            sync(device)
            t0, seen = time.perf_counter(), 0
        b = {k: v.to(device) for k, v in collate(enc, idx, pad_to=128).items() if isinstance(v, torch.Tensor)}
        loss = F.cross_entropy(model(b["input_ids"], b["token_type_ids"], b["lengths"]), b["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
        seen += len(idx)
    sync(device)
    return seen / (time.perf_counter() - t0)


@torch.no_grad()
def seed_eval(model, enc, batch, device):
    model.eval()
    batches = eval_batches(enc.lengths, batch, bucket=False)
    for i, idx in enumerate(batches):
        if i == 1:
            sync(device)
            t0, seen = time.perf_counter(), 0
        b = {k: v.to(device) for k, v in collate(enc, idx, pad_to=128).items() if isinstance(v, torch.Tensor)}
        model(b["input_ids"], b["token_type_ids"], b["lengths"]).argmax(1).cpu()
        if i >= 1:
            seen += len(idx)
    sync(device)
    return seen / (time.perf_counter() - t0)


def engine_pass(state, forward, enc, batches, cfg, loop, attention=True):
    """One timed pass of the engine's own loop over `batches`, from a clean epoch state."""
    state.step_in_epoch, state.accum = 0, fresh_accum()
    sync(loop.device)
    t0 = time.perf_counter()
    with attention_context(loop.device) if attention else contextlib.nullcontext():
        train_epoch(state, forward, enc, batches, cfg, loop)
    sync(loop.device)
    return sum(len(i) for i in batches) / (time.perf_counter() - t0)


def new_state(shape, vocab, device, cfg):
    torch.manual_seed(0)
    model = NLIClassifier(BertConfig(vocab, *shape, 512, 2, 0.1)).to(device)
    return TrainState(model, make_optimizer(model, cfg, device), grad_scaler(device, numeric_precision(device, True)))


def measure(shape_name, batch, enc, tok, device, args) -> dict:
    shape = SHAPES[shape_name]
    hidden, layers, heads, ffn = shape
    cfg = TrainConfig(batch_size=batch, lr=1e-4, max_len=128, pad_multiple=8, schedule="constant", device=str(device))
    res = {
        "shape": shape_name,
        "batch": batch,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": numeric_precision(device, True),
        "attention": attention_name(device),
    }
    seed_steps = args.seed_steps if shape_name == "base" else args.seed_steps * 4
    random_b = train_batches(enc.lengths, batch, 0, 1, bucket=False)[: seed_steps + 3]
    torch.manual_seed(0)
    seed = D2LClassifier(tok.vocab_size, hidden, layers, heads, ffn).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    res["train_seed"] = seed_train(seed, enc, random_b, device)
    res["seed_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    ev = enc.head(args.eval_examples)
    res["eval_seed"] = seed_eval(seed, ev, batch, device)
    u, _ = batch_flops(enc, random_b[3:], shape, lambda idx: 128)
    res["seed_useful_mfu"] = u / (sum(map(len, random_b[3:])) / res["train_seed"]) / PEAK_BF16
    del seed

    state = new_state(shape, tok.vocab_size, device, cfg)
    loop = Loop(device, numeric_precision(device, True), total_steps=10**9)
    bucket_b = train_batches(enc.lengths, batch, 0, 1, bucket=True)[: args.max_batches]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    res["train_pass1"] = engine_pass(state, state.model, enc, bucket_b, cfg, loop)
    res["train_pass2"] = engine_pass(state, state.model, enc, bucket_b, cfg, loop)
    res["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    res["train_bertnli"] = res["train_pass2"]
    u, h = batch_flops(enc, bucket_b, shape, lambda idx: batch_width(int(enc.lengths[idx].max()), 8, 128))
    seconds = sum(map(len, bucket_b)) / res["train_pass2"]
    res["useful_mfu"], res["hardware_mfu"] = u / seconds / PEAK_BF16, h / seconds / PEAK_BF16
    evaluate(state.model, ev, batch, device)  # warm-up: every width once, as a run's second dev pass
    sync(device)
    t0 = time.perf_counter()
    evaluate(state.model, ev, batch, device)
    sync(device)
    res["eval_bertnli"] = len(ev) / (time.perf_counter() - t0)
    res["train_ratio"] = res["train_bertnli"] / res["train_seed"]
    res["eval_ratio"] = res["eval_bertnli"] / res["eval_seed"]
    res["pass1_over_pass2"] = res["train_pass1"] / res["train_pass2"]
    return res


def attention_and_syncs(enc, tok, device, args) -> dict:
    """bert.small, batch 512, pass 1 (every width new) with the engine's backends and with PyTorch's own choice;
    then the host syncs in 40 steps of the engine's loop (expected: the one read at the end)."""
    cfg = TrainConfig(batch_size=512, pad_multiple=8, device=str(device))
    out = {}
    batches = train_batches(enc.lengths, 512, 0, 2, bucket=True)[: args.max_batches]
    for name, attention in (("engine_backends", True), ("pytorch_default_backend", False)):
        state = new_state(SHAPES["small"], tok.vocab_size, device, cfg)
        out[f"pass1_{name}"] = engine_pass(
            state, state.model, enc, batches, cfg, Loop(device, numeric_precision(device, True), 10**9), attention
        )
    if device.type == "cuda":
        state = new_state(SHAPES["small"], tok.vocab_size, device, cfg)
        loop = Loop(device, numeric_precision(device, True), 10**9, sync_every=1000)
        engine_pass(state, state.model, enc, batches[:5], cfg, loop)
        state.step_in_epoch = 0
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with attention_context(device):
                train_epoch(state, state.model, enc, batches[:40], cfg, loop)
        torch.cuda.set_sync_debug_mode(0)
        out["host_syncs_in_40_steps"] = sum("synchroniz" in str(w.message) for w in caught)
    return out


CANDIDATES = [("small", 512, "default"), ("small", 512, "reduce-overhead"), ("base", 128, "reduce-overhead")]


def compile_candidates(enc, tok, device, args, emit) -> int:
    """torch.compile(dynamic=True) of the forward the engine trains; "reduce-overhead" adds CUDA graphs per width.
    Returns how many candidates were timed."""
    timed = 0
    for shape, batch, mode in CANDIDATES:
        if not (chosen(args, shape, batch) and mode in args.modes):
            continue
        timed += 1
        out = {"candidate": f"compile-{mode}", "shape": shape, "batch": batch}
        try:
            cfg = TrainConfig(batch_size=batch, pad_multiple=8, schedule="constant", device=str(device))
            state = new_state(SHAPES[shape], tok.vocab_size, device, cfg)
            compiled = torch.compile(state.model, dynamic=True, mode=mode)
            loop = Loop(device, numeric_precision(device, True), 10**9)
            batches = train_batches(enc.lengths, batch, 0, 1, bucket=True)[: args.max_batches]
            t0 = time.perf_counter()
            out["pass1"] = engine_pass(state, compiled, enc, batches, cfg, loop)
            out["pass1_s_incl_compile"] = time.perf_counter() - t0
            out["pass2"] = engine_pass(state, compiled, enc, batches, cfg, loop)
            u, _ = batch_flops(
                enc, batches, SHAPES[shape], lambda idx: batch_width(int(enc.lengths[idx].max()), 8, 128)
            )
            out["useful_mfu"] = u / (sum(map(len, batches)) / out["pass2"]) / PEAK_BF16
        except Exception as e:  # noqa: BLE001
            out["error"] = f"{type(e).__name__}: {e}"[:300]
        emit(out)
        torch._dynamo.reset()
    return timed


def chosen(args, shape: str, batch: int) -> bool:
    """The setting is one of `--only` (every setting without it)."""
    return not args.only or f"{shape}:{batch}" in args.only


def run_all(enc, tok, device, args, rows, sink) -> bool:
    """Every setting, then attention and syncs, then the candidates; True if any of them failed."""
    failed = False

    def emit(obj):
        nonlocal failed
        failed = failed or any("error" in k for k in obj)
        line = json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in obj.items()})
        print(line, flush=True)
        if sink:
            sink.write(line + "\n")
            sink.flush()

    for shape, batch in SETTINGS:
        if not chosen(args, shape, batch) or args.candidates_only:
            continue
        try:
            rows.append(measure(shape, batch if not args.smoke else 8, enc, tok, device, args))
            emit(rows[-1])
        except Exception as e:  # noqa: BLE001 - one failed setting must not cost the others' figures
            emit({"shape": shape, "batch": batch, "error": f"{type(e).__name__}: {e}"[:300]})
    args.extra = {} if args.candidates_only else attention_and_syncs(enc, tok, device, args)
    if args.extra:
        emit(args.extra)
    args.timed = 0
    if args.candidates or args.candidates_only:
        args.timed = compile_candidates(enc, tok, device, args, emit)
    return failed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: check every code path runs (CPU tests)")
    ap.add_argument("--candidates", action="store_true", help="also time torch.compile of the engine's path")
    settings = [f"{shape}:{batch}" for shape, batch in SETTINGS]
    ap.add_argument("--only", action="append", default=[], choices=settings, help="these settings alone")
    ap.add_argument("--candidates-only", action="store_true", help="the torch.compile candidates alone")
    modes = sorted({mode for _, _, mode in CANDIDATES})
    ap.add_argument("--modes", nargs="+", default=modes, choices=modes, help="torch.compile modes to time")
    ap.add_argument("--out", default=None, help="also write the JSON lines to this file")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "no CUDA GPU here: nothing measured (run it on a GPU machine, or --device cpu --smoke to check the code "
            "paths)"
        )
        return
    data = (
        Path(args.data)
        if args.data
        else next(
            (p for p in (ROOT / ".gpudata", ROOT.parent / "shared" / "data" / "snli-resplit") if p.is_dir()), None
        )
    )
    if data is None or not data.is_dir():
        print(f"skip: no SNLI data at {data}")
        return
    n, args.seed_steps, args.max_batches, args.eval_examples = (
        (54_852, 10, 10**9, 20_000) if not args.smoke else (96, 1, 4, 64)
    )
    global SHAPES
    if args.smoke:
        SHAPES = {"small": (32, 2, 4, 64), "base": (48, 2, 4, 96)}
    enc, tok = real_pairs(data, n)
    rows, t_start = [], time.perf_counter()
    with open(args.out, "a") if args.out else contextlib.nullcontext() as sink:
        failed = run_all(enc, tok, device, args, rows, sink)
    print(
        f"\n{time.perf_counter() - t_start:.0f} s. examples/s, ratio to seed-style; MFU against {PEAK_BF16 / 1e12:.0f} "
        "TFLOP/s bf16"
    )
    print(
        "shape  batch | train seed  bertnli (ratio) pass1/pass2 | eval seed  bertnli (ratio) | useful MFU  hw MFU | "
        "peak GiB"
    )
    for r in rows:
        print(
            f"{r['shape']:6} {r['batch']:5} | {r['train_seed']:10.0f} {r['train_bertnli']:8.0f} "
            f"({r['train_ratio']:5.2f}x) "
            f"{r['pass1_over_pass2']:6.2f}      | {r['eval_seed']:9.0f} {r['eval_bertnli']:8.0f} "
            f"({r['eval_ratio']:5.2f}x) | "
            f"{100 * r['useful_mfu']:8.1f}% {100 * r['hardware_mfu']:6.1f}% | {r['peak_gib']:6.2f}"
        )
    if args.extra:
        print(
            "attention (bert.small 512, pass 1) and syncs:", json.dumps({k: round(v, 1) for k, v in args.extra.items()})
        )
    if failed or not (rows or args.timed) or not math.isfinite(sum(r["train_bertnli"] for r in rows)):
        sys.exit(1)


if __name__ == "__main__":
    main()
