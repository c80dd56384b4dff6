"""The optimizer step on the CPU: PyTorch's default AdamW against the fused one the engine uses.

On the CPU, PyTorch's default is unfused: a Python loop over the tensors (its foreach kernels
run on CUDA-like devices only). Measured on the real packaged minilm-l6 (its 30,522-word
embedding is half of its 22.7M parameters, and the optimizer touches all of it every step), side
by side in one process: one warm-up round of each, untimed, then rounds in A B B A order
(so neither side always goes first); the medians are reported.

  step     : optimizer.step() alone, over gradients of the right shape
  train    : the engine's own `train_epoch` on real snli-resplit pairs (WordPiece, max_len 128,
             length buckets, bf16 autocast where the CPU has it), batch 32 as the default run

benchmarks/throughput.py times a random-weight minilm shape with a word vocabulary of the data
(a third of the real embedding), so it shows less of this.

    python benchmarks/optimizer.py --data ../shared/data/snli-resplit
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def adamw(model, fused: bool, lr: float = 1e-4):
    """The engine's optimizer (its parameter groups), fused or PyTorch's default."""
    from bertnli.config import TrainConfig
    from bertnli.train.optimizer import make_optimizer

    return make_optimizer(model, TrainConfig(lr=lr), torch.device("cpu"), fused=fused)


def time_step(model, fused: bool, steps: int) -> float:
    opt = adamw(model, fused)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    for _ in range(3):
        opt.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - t0) / steps * 1000


def time_train(prep, state_dict, fused: bool, steps: int, batch: int) -> float:
    from bertnli.config import TrainConfig
    from bertnli.data.batches import train_batches
    from bertnli.train.loop import Loop, train_epoch
    from bertnli.train.runtime import grad_scaler, numeric_precision
    from bertnli.train.state import TrainState

    device = torch.device("cpu")
    model = prep.model
    model.load_state_dict(state_dict)
    model.train()
    cfg = TrainConfig(batch_size=batch)
    precision = numeric_precision(device, cfg.amp)
    state = TrainState(model, adamw(model, fused), grad_scaler(device, precision))
    batches = train_batches(prep.train.lengths, batch, 0, 1, cfg.bucket)[: steps + 2]
    loop = Loop(device, precision, total_steps=10**9)
    train_epoch(state, model, prep.train, batches[:2], cfg, loop)  # warm-up
    state.step_in_epoch = 0
    t0 = time.perf_counter()
    train_epoch(state, model, prep.train, batches[2:], cfg, loop)
    return sum(map(len, batches[2:])) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "snli-resplit"))
    ap.add_argument("--steps", type=int, default=40, help="timed training steps per measurement")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=4, help="timed rounds, A B then B A")
    args = ap.parse_args()
    if not Path(args.data).is_dir():
        print(f"skip: no SNLI data at {args.data}")
        return
    from bertnli.config import TrainConfig
    from bertnli.train.prepare import prepare

    prep = prepare(
        TrainConfig(data=args.data, limit_train=args.batch * (args.steps + 2) * 4, limit_eval=8, eval_test=False)
    )
    state_dict = {k: v.clone() for k, v in prep.model.state_dict().items()}
    for fused in (False, True):  # warm-up: first-call costs (allocations, lazy imports) are not the step's
        time_step(prep.model, fused, 3)
        time_train(prep, state_dict, fused, 2, args.batch)
    res: dict[str, list[float]] = {}
    for r in range(args.rounds):
        for fused in (False, True) if r % 2 == 0 else (True, False):
            name = "fused" if fused else "unfused"
            res.setdefault(f"step_ms_{name}", []).append(time_step(prep.model, fused, 20))
            res.setdefault(f"train_ex_s_{name}", []).append(time_train(prep, state_dict, fused, args.steps, args.batch))
            print(
                json.dumps(
                    {
                        "round": r,
                        "optimizer": name,
                        "step_ms": round(res[f"step_ms_{name}"][-1], 1),
                        "train_ex_s": round(res[f"train_ex_s_{name}"][-1], 1),
                    }
                ),
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in res.items()}
    params = sum(p.numel() for p in prep.model.parameters())
    print(
        f"\nminilm-l6 ({params / 1e6:.1f}M parameters), batch {args.batch}, {torch.get_num_threads()} threads, "
        f"median of {args.rounds} rounds (A B B A)"
    )
    print(
        f"optimizer step: unfused {med['step_ms_unfused']:.1f} ms, fused {med['step_ms_fused']:.1f} ms "
        f"({med['step_ms_unfused'] / med['step_ms_fused']:.2f}x faster)"
    )
    print(
        f"training: unfused {med['train_ex_s_unfused']:.1f} ex/s, fused {med['train_ex_s_fused']:.1f} ex/s "
        f"({med['train_ex_s_fused'] / med['train_ex_s_unfused']:.2f}x)"
    )


if __name__ == "__main__":
    main()
