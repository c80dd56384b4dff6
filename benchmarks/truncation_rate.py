"""How often truncation actually happens: the share of packed pairs longer than max_len.

Chooses max_len for truncation studies (at 128 no snli-resplit pair is cut, so the methods
would be identical). Uses the model's own tokenizer on the raw sentences.

    python benchmarks/truncation_rate.py --model minilm-l6 --max-len 32 40 48 64 128
"""

import argparse
from pathlib import Path

import numpy as np

from bertnli.data.encode import split_texts
from bertnli.data.snli import read_split
from bertnli.model.presets import build_model

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "snli-resplit"))
    ap.add_argument("--split", default="train")
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--max-len", type=int, nargs="+", default=[32, 40, 48, 64, 128])
    a = ap.parse_args()
    _, tok = build_model(a.model)
    split = read_split(a.data, a.split)
    premises, hypotheses = split_texts(split, tok)
    lengths = np.array([len(p) + len(h) + 3 for p, h in zip(tok.encode_batch(premises), tok.encode_batch(hypotheses))])
    print(
        f"{a.split}: {len(lengths)} pairs, packed length p50 {np.percentile(lengths, 50):.0f} p90 "
        f"{np.percentile(lengths, 90):.0f} "
        f"p99 {np.percentile(lengths, 99):.0f} max {lengths.max()}"
    )
    for m in a.max_len:
        print(f"max_len {m:4d}: {100 * (lengths > m).mean():5.1f} % of pairs truncated")


if __name__ == "__main__":
    main()
