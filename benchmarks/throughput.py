"""Training and evaluation throughput: the d2l chapter's setting against bertnli's default.

Side by side in one process, same model shape, same real SNLI examples, same batch size:

  seed-style : static padding to max_len 128, random order, d2l's own encoder (masked softmax
               attention, restated verbatim in tests/d2l_reference.py)
  bertnli    : the engine's own `train_epoch` and `evaluate` (length buckets, widths rounded up to a
               multiple of 8, SDPA, batches collated ahead by a thread, totals read every 50 steps),
               in fp32 and in bertnli's default precision (bf16 autocast on a CPU with native bf16,
               e.g. AVX512-BF16: the engine's `amp`), optionally under torch.compile (--compile)

Prints one JSON line per measurement, then a table with the ratios. Weights are random
(throughput does not depend on them); tokens come from a word vocabulary built on the
snli-resplit training words, the way d2l's vocabulary is looked up.

    python benchmarks/throughput.py --shape small --batch 128 512 --steps 40 --compile
    python benchmarks/throughput.py --shape minilm --batch 128 --steps 10
    python benchmarks/throughput.py --shape base --batch 128 --steps 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from d2l_reference import BERTModel  # noqa: E402

from bertnli.data.batches import collate, eval_batches, train_batches  # noqa: E402
from bertnli.data.encode import encode_pairs  # noqa: E402
from bertnli.data.snli import read_split  # noqa: E402
from bertnli.data.tokenize import D2LTokenizer  # noqa: E402
from bertnli.model.bert import BertConfig, NLIClassifier  # noqa: E402

SHAPES = {  # hidden, layers, heads, ffn
    "small": (256, 2, 4, 512),
    "minilm": (384, 6, 12, 1536),
    "base": (768, 12, 12, 3072),
}


class D2LClassifier(torch.nn.Module):
    """The chapter's BERTClassifier over d2l's encoder."""

    def __init__(self, vocab, hidden, layers, heads, ffn):
        super().__init__()
        bert = BERTModel(vocab, hidden, ffn, heads, layers, 0.1, max_len=512)
        self.encoder, self.hidden = bert.encoder, bert.hidden
        self.output = torch.nn.Linear(hidden, 3)

    def forward(self, ids, seg, lengths):
        return self.output(self.hidden(self.encoder(ids, seg, lengths)[:, 0, :]))


def real_pairs(data: Path, n: int):
    split = read_split(data, "train")
    counts = Counter(w for t in split.premises_parse + split.hypotheses_parse for w in t.lower().split())
    tok = D2LTokenizer(
        ["<unk>", "<pad>", "<bos>", "<eos>", "<cls>", "<sep>", "<mask>", *[w for w, c in counts.items() if c >= 2]]
    )
    reps = -(-n // len(split))
    enc = encode_pairs(
        split.premises_parse * reps, split.hypotheses_parse * reps, split.labels * reps, tok, 128, "longest_first"
    )
    return enc.head(n), tok


def time_engine(model, enc, batches, steps, precision, compiled=False, batch_size=128, fused=True):
    """The engine's own loop over `steps` batches after 2 (compiled: 5) warm-up steps, Adam as the seed side.

    fused=False: PyTorch's default Adam (unfused: a loop over tensors on the CPU)."""
    from bertnli.config import TrainConfig
    from bertnli.train.loop import Loop, train_epoch
    from bertnli.train.optimizer import make_optimizer
    from bertnli.train.runtime import grad_scaler
    from bertnli.train.state import TrainState

    device = torch.device("cpu")
    cfg = TrainConfig(batch_size=batch_size, optimizer="adam", lr=1e-4, schedule="constant", grad_clip=0.0, max_len=128)
    state = TrainState(model, make_optimizer(model, cfg, device, fused=fused), grad_scaler(device, precision))
    model.train()
    forward = torch.compile(model, dynamic=True) if compiled else model
    warmup = 5 if compiled else 2
    loop = Loop(device, precision, total_steps=10**9)
    train_epoch(state, forward, enc, batches[:warmup], cfg, loop)
    state.step_in_epoch = 0
    t0 = time.perf_counter()
    train_epoch(state, forward, enc, batches[warmup : warmup + steps], cfg, loop)
    return sum(map(len, batches[warmup : warmup + steps])) / (time.perf_counter() - t0)


def time_train(model, enc, batches, pad_to, steps):
    """The seed's loop: collate, forward, backward, Adam, in fp32, after 2 warm-up steps."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    seen, t0 = 0, None
    for i, idx in enumerate(batches[: steps + 2]):
        if i == 2:
            t0, seen = time.perf_counter(), 0
        b = collate(enc, idx, pad_to)  # collation is inside the timed loop: data loading counts
        loss = F.cross_entropy(model(b["input_ids"], b["token_type_ids"], b["lengths"]), b["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(idx)
    return seen / (time.perf_counter() - t0)


@torch.no_grad()
def time_eval(model, enc, batches, pad_to, steps):
    model.eval()
    seen, t0 = 0, None
    for i, idx in enumerate(batches[: steps + 1]):
        if i == 1:
            t0, seen = time.perf_counter(), 0
        b = collate(enc, idx, pad_to)
        model(b["input_ids"], b["token_type_ids"], b["lengths"])
        seen += len(idx)
    return seen / (time.perf_counter() - t0)


def time_evaluate(model, enc, batch, amp):
    """The engine's `evaluate` over `enc` (its first batch once beforehand, as a warm-up)."""
    from bertnli.train.evaluation import evaluate

    evaluate(model, enc.head(batch), batch, amp=amp)
    t0 = time.perf_counter()
    evaluate(model, enc, batch, amp=amp)
    return len(enc) / (time.perf_counter() - t0)


def print_table(rows: list[dict], default_precision: str, compiled: bool) -> None:
    """Examples/s of every setting, with its ratio to the seed-style one."""
    print(
        f"\nexamples/s, ratio to the seed-style setting in brackets; bertnli default = {default_precision} on this CPU"
    )
    print(
        "shape   batch  phase   seed-style   bertnli fp32       bertnli default"
        + ("    fp32 + torch.compile" if compiled else "")
    )
    for r in rows:
        for kind in ("train", "eval"):
            line = (
                f"{r['shape']:7} {r['batch']:5}  {kind:5} {r[f'{kind}_seed_style']:10.1f}  "
                f"{r[f'{kind}_bertnli_fp32']:8.1f} ({r[f'{kind}_ratio_bertnli_fp32']:5.2f}x)  "
                f"{r[f'{kind}_bertnli_default']:8.1f} ({r[f'{kind}_ratio_bertnli_default']:5.2f}x)"
            )
            if f"{kind}_bertnli_fp32_compiled" in r:
                line += (
                    f"  {r[f'{kind}_bertnli_fp32_compiled']:8.1f} ({r[f'{kind}_ratio_bertnli_fp32_compiled']:5.2f}x)"
                )
            print(line)
        if "train_bertnli_default_unfused" in r:
            print(
                f"{r['shape']:7} {r['batch']:5}  train, default with unfused Adam: "
                f"{r['train_bertnli_default_unfused']:8.1f} "
                f"({r['train_ratio_bertnli_default_unfused']:5.2f}x); fused / unfused = "
                f"{r['train_bertnli_default'] / r['train_bertnli_default_unfused']:.2f}x"
            )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "snli-resplit"))
    ap.add_argument("--shape", choices=SHAPES, nargs="+", default=["small"])
    ap.add_argument("--batch", type=int, nargs="+", default=[128])
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per setting")
    ap.add_argument("--compile", action="store_true", help="also time bertnli fp32 under torch.compile(dynamic=True)")
    ap.add_argument(
        "--optimizers", action="store_true", help="also time bertnli's default with PyTorch's default (unfused) Adam"
    )
    args = ap.parse_args()
    if not Path(args.data).is_dir():
        print(f"skip: no SNLI data at {args.data}")
        return
    from bertnli.train.runtime import cpu_has_native_bf16, numeric_precision

    default_precision = numeric_precision(torch.device("cpu"), True)
    torch.manual_seed(0)
    enc, tok = real_pairs(Path(args.data), 20_000)
    rows = []
    for shape in args.shape:
        hidden, layers, heads, ffn = SHAPES[shape]
        for batch in args.batch:
            res = {
                "shape": shape,
                "batch": batch,
                "device": "cpu",
                "threads": torch.get_num_threads(),
                "bertnli_default_precision": default_precision,
                "cpu_native_bf16": cpu_has_native_bf16(),
            }
            torch.manual_seed(0)
            seed = D2LClassifier(tok.vocab_size, hidden, layers, heads, ffn)
            torch.manual_seed(0)
            ours = NLIClassifier(BertConfig(tok.vocab_size, hidden, layers, heads, ffn, 512, 2, 0.1))
            state = {k: v.clone() for k, v in ours.state_dict().items()}
            random_b = train_batches(enc.lengths, batch, 0, 1, bucket=False)
            bucket_b = train_batches(enc.lengths, batch, 0, 1, bucket=True)
            ev, ev_steps = max(batch, 256), max(3, args.steps // 4)
            res["train_seed_style"] = time_train(seed, enc, random_b, 128, args.steps)
            res["train_bertnli_fp32"] = time_engine(ours, enc, bucket_b, args.steps, "fp32", batch_size=batch)
            ours.load_state_dict(state)
            res["train_bertnli_default"] = time_engine(
                ours, enc, bucket_b, args.steps, default_precision, batch_size=batch
            )
            if args.optimizers:
                ours.load_state_dict(state)
                res["train_bertnli_default_unfused"] = time_engine(
                    ours, enc, bucket_b, args.steps, default_precision, batch_size=batch, fused=False
                )
            if args.compile:
                ours.load_state_dict(state)
                res["train_bertnli_fp32_compiled"] = time_engine(
                    ours, enc, bucket_b, args.steps, "fp32", compiled=True, batch_size=batch
                )
            res["eval_seed_style"] = time_eval(seed, enc, eval_batches(enc.lengths, ev, bucket=False), 128, ev_steps)
            sub = enc.head(ev * ev_steps)
            res["eval_bertnli_fp32"] = time_evaluate(ours, sub, ev, amp=False)
            res["eval_bertnli_default"] = time_evaluate(ours, sub, ev, amp=True)
            for kind in ("train", "eval"):
                for setting in ("bertnli_fp32", "bertnli_default", "bertnli_fp32_compiled", "bertnli_default_unfused"):
                    if f"{kind}_{setting}" in res:
                        res[f"{kind}_ratio_{setting}"] = res[f"{kind}_{setting}"] / res[f"{kind}_seed_style"]
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in res.items()}), flush=True)
            rows.append(res)
    print_table(rows, default_precision, args.compile)


if __name__ == "__main__":
    main()
