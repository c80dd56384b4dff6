"""Training and evaluation throughput: the d2l chapter's setting against bertnli's default.

Side by side in one process, same model shape, same real SNLI examples, same batch size:

  seed-style : static padding to max_len 128, random order, d2l's own encoder (masked softmax
               attention, restated verbatim in tests/d2l_reference.py)
  bertnli    : dynamic padding, length-bucketed batches, bertnli's encoder (SDPA attention)

Prints one JSON line per measurement, then a table with the ratios. Weights are random
(throughput does not depend on them); tokens come from a word vocabulary built on the
snli-resplit training words, the way d2l's vocabulary is looked up.

    python benchmarks/throughput.py --shape small --batch 128 --steps 30
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

from bertnli.data import read_split  # noqa: E402
from bertnli.model import BertConfig, NLIClassifier  # noqa: E402
from bertnli.pairs import collate, encode_pairs, eval_batches, train_batches  # noqa: E402
from bertnli.tokenize import D2LTokenizer  # noqa: E402

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
    tok = D2LTokenizer(["<unk>", "<pad>", "<bos>", "<eos>", "<cls>", "<sep>", "<mask>", *[w for w, c in counts.items() if c >= 2]])
    reps = -(-n // len(split))
    enc = encode_pairs(split.premises_parse * reps, split.hypotheses_parse * reps, split.labels * reps, tok, 128, "longest_first")
    return enc.head(n), tok


def time_train(model, enc, batches, pad_to, steps):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    seen, t0 = 0, None
    for i, idx in enumerate(batches[: steps + 2]):
        if i == 2:  # two warm-up steps
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "snli-resplit"))
    ap.add_argument("--shape", choices=SHAPES, nargs="+", default=["small"])
    ap.add_argument("--batch", type=int, nargs="+", default=[128])
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per setting")
    args = ap.parse_args()
    if not Path(args.data).is_dir():
        print(f"skip: no SNLI data at {args.data}")
        return
    torch.manual_seed(0)
    enc, tok = real_pairs(Path(args.data), 20_000)
    rows = []
    for shape in args.shape:
        hidden, layers, heads, ffn = SHAPES[shape]
        for batch in args.batch:
            seed = D2LClassifier(tok.vocab_size, hidden, layers, heads, ffn)
            ours = NLIClassifier(BertConfig(tok.vocab_size, hidden, layers, heads, ffn, 512, 2, 0.1))
            res = {"shape": shape, "batch": batch, "device": "cpu", "threads": torch.get_num_threads()}
            random_b = train_batches(enc.lengths, batch, 0, 1, bucket=False)
            bucket_b = train_batches(enc.lengths, batch, 0, 1, bucket=True)
            res["train_seed_style"] = time_train(seed, enc, random_b, 128, args.steps)
            res["train_bertnli"] = time_train(ours, enc, bucket_b, None, args.steps)
            ev = max(batch, 256)
            res["eval_seed_style"] = time_eval(seed, enc, eval_batches(enc.lengths, ev, bucket=False), 128, max(3, args.steps // 4))
            res["eval_bertnli"] = time_eval(ours, enc, eval_batches(enc.lengths, ev, bucket=True), None, max(3, args.steps // 4))
            res["train_ratio"] = res["train_bertnli"] / res["train_seed_style"]
            res["eval_ratio"] = res["eval_bertnli"] / res["eval_seed_style"]
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in res.items()}), flush=True)
            rows.append(res)
    print("\nshape   batch  train ex/s seed -> bertnli (ratio)   eval ex/s seed -> bertnli (ratio)")
    for r in rows:
        print(f"{r['shape']:7} {r['batch']:5}  {r['train_seed_style']:8.1f} -> {r['train_bertnli']:8.1f} ({r['train_ratio']:.2f}x)"
              f"   {r['eval_seed_style']:8.1f} -> {r['eval_bertnli']:8.1f} ({r['eval_ratio']:.2f}x)")


if __name__ == "__main__":
    main()
