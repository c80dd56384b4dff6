"""Preprocessing throughput: read, tokenize, truncate and pack SNLI at the official train size.

The official train split (550,152 rows) is not on these machines: the real rows of
snli-resplit's train file are repeated to 550k pairs (and the repetition is said in the
output). Measures bertnli's path cold (tokenize + pack) and warm (from the on-disk cache),
for the d2l word vocabulary and for WordPiece, and peak RSS of the process.

    python benchmarks/preprocess.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from bertnli.data import read_file  # noqa: E402
from bertnli.model import minilm_folder  # noqa: E402
from bertnli.pairs import encode_split  # noqa: E402
from bertnli.tokenize import D2LTokenizer, WordPieceTokenizer  # noqa: E402


def build_big_file(src: Path, n: int, dest: Path) -> Path:
    lines = gzip.open(src, "rt", encoding="utf-8").read().splitlines()
    reps = -(-n // len(lines))
    with gzip.open(dest, "wt", encoding="utf-8", compresslevel=1) as f:
        f.write("\n".join((lines * reps)[:n]) + "\n")
    return dest


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "snli-resplit"))
    ap.add_argument("--rows", type=int, default=550_152)
    args = ap.parse_args()
    src = Path(args.data) / "snli_1.0_train.jsonl.gz"
    if not src.is_file():
        print(f"skip: no {src}")
        return
    tmp = Path(tempfile.mkdtemp(prefix="bertnli-bench-"))
    try:
        big = build_big_file(src, args.rows, tmp / "snli_1.0_train.jsonl.gz")
        t0 = time.perf_counter()
        split = read_file(big, "train")
        read_s = time.perf_counter() - t0
        print(json.dumps({"measure": "read", "rows": args.rows, "pairs": len(split), "seconds": round(read_s, 2),
                          "note": f"real snli-resplit train rows repeated to {args.rows}"}), flush=True)
        counts = Counter(w for t in split.premises_parse[:20000] + split.hypotheses_parse[:20000] for w in t.lower().split())
        toks = {"d2l-vocab": D2LTokenizer(["<unk>", "<pad>", "<bos>", "<eos>", "<cls>", "<sep>", "<mask>", *counts])}
        if minilm_folder():
            toks["wordpiece"] = WordPieceTokenizer(minilm_folder())
        rows = []
        for name, tok in toks.items():
            cache = tmp / f"cache-{name}"
            t0 = time.perf_counter()
            encode_split(split, tok, 128, "longest_first", cache)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            encode_split(split, tok, 128, "longest_first", cache)
            warm = time.perf_counter() - t0
            r = {"measure": "encode", "tokenizer": name, "pairs": len(split), "cold_s": round(cold, 2), "warm_s": round(warm, 3),
                 "cold_pairs_per_s": round(len(split) / cold), "read_plus_cold_s": round(read_s + cold, 2)}
            print(json.dumps(r), flush=True)
            rows.append(r)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"measure": "peak_rss_mib", "value": round(rss)}))
        print(f"\n{len(split):,} pairs (snli-resplit train rows repeated); read {read_s:.1f} s")
        for r in rows:
            print(f"{r['tokenizer']:10} cold {r['cold_s']:6.1f} s ({r['cold_pairs_per_s']:,} pairs/s; read+cold {r['read_plus_cold_s']} s)  warm {r['warm_s']:.3f} s")
        print(f"peak RSS {rss:.0f} MiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
