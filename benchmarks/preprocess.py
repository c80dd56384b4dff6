"""Preprocessing: read, tokenize, truncate and pack SNLI at the official train split's size.

The official train split (550,152 rows) is not on these machines. The real rows of
snli-resplit's train file are repeated to 550,152 rows, and every repetition after the first
appends one distinct word to each sentence, so that -- as in the real split -- texts are
distinct across the file (premises repeat about three times within a repetition, as in SNLI)
and no pipeline is flattered by caching repeated texts.

Side by side in one run, each in its own process (so each peak RSS is its own):

  d2l       the chapter's pipeline (tests/d2l_reference.py): read_snli on the .txt file, word
            tokenize, truncate, pad to 128 in Python with multiprocessing.Pool(4), torch.tensor
  bertnli   engine.prepare's path (pairs.encode_file) on the .jsonl.gz file: cold (read + tokenize
            + truncate + pack + write the cache) and warm (file digest + cache load), with the
            d2l word vocabulary and with WordPiece (MiniLM's tokenizer.json)

    python benchmarks/preprocess.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

TXT_COLUMNS = [
    "gold_label",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
    "captionID",
    "pairID",
    "label1",
    "label2",
    "label3",
    "label4",
    "label5",
]
SPECIALS = ["<unk>", "<pad>", "<bos>", "<eos>", "<cls>", "<sep>", "<mask>"]


def build_files(src: Path, n: int, dest: Path) -> tuple[Path, Path, Path]:
    """550k rows as .jsonl.gz (bertnli's format here) and .txt (the format d2l's read_snli reads)."""
    rows = [json.loads(line) for line in gzip.open(src, "rt", encoding="utf-8")]
    counts = Counter(
        w
        for r in rows
        for k in ("sentence1_binary_parse", "sentence2_binary_parse")
        for w in r[k].replace("(", " ").replace(")", " ").lower().split()
    )
    common = [w for w, _ in counts.most_common()]
    suffixes = [""] + [f" {w}" for w in common[100 : 100 + -(-n // len(rows))]]  # one distinct real word per repetition
    jsonl, txt = dest / "snli_1.0_train.jsonl.gz", dest / "snli_1.0_train.txt"
    with gzip.open(jsonl, "wt", encoding="utf-8", compresslevel=6) as fj, open(txt, "w", encoding="utf-8") as ft:
        ft.write("\t".join(TXT_COLUMNS) + "\n")
        for i in range(n):
            r, suffix = dict(rows[i % len(rows)]), suffixes[i // len(rows)]
            for k in ("sentence1", "sentence2", "sentence1_binary_parse", "sentence2_binary_parse"):
                r[k] = r[k] + suffix
            fj.write(json.dumps(r) + "\n")
            cells = [
                r["gold_label"],
                r["sentence1_binary_parse"],
                r["sentence2_binary_parse"],
                r["sentence1_binary_parse"],
                r["sentence2_binary_parse"],
                r["sentence1"],
                r["sentence2"],
                "",
                r["pairID"],
                r["gold_label"],
                "",
                "",
                "",
                "",
            ]
            ft.write("\t".join(cells) + "\n")
    vocab = dest / "vocab.json"
    vocab.write_text(json.dumps(SPECIALS + common))
    return jsonl, txt, vocab


def peak_rss_mib() -> tuple[int, int]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    return own, children


def child(args) -> None:
    """One measurement in this process: prints one JSON line."""
    if args.child == "d2l":
        from d2l_reference import D2LVocab, SNLIBERTDataset, d2l_read_snli

        vocab = D2LVocab(json.loads(Path(args.vocab).read_text()))
        t0 = time.perf_counter()
        data = d2l_read_snli(args.file)
        read_s = time.perf_counter() - t0
        ds = SNLIBERTDataset(data, 128, vocab)
        seconds = time.perf_counter() - t0
        own, children = peak_rss_mib()
        print(
            json.dumps(
                {
                    "pipeline": "d2l (Pool(4), pad to 128)",
                    "tokenizer": "d2l-vocab",
                    "pairs": len(ds),
                    "seconds": round(seconds, 2),
                    "read_s": round(read_s, 2),
                    "peak_rss_mib": own,
                    "pool_worker_peak_rss_mib": children,
                }
            )
        )
        return
    from bertnli.data.cache import encode_file
    from bertnli.data.tokenize import D2LTokenizer, WordPieceTokenizer
    from bertnli.model.presets import minilm_folder

    tok = D2LTokenizer.from_file(args.vocab) if args.tokenizer == "d2l-vocab" else WordPieceTokenizer(minilm_folder())
    t0 = time.perf_counter()
    enc, _ = encode_file(args.file, "train", tok, 128, "longest_first", args.cache)
    seconds = time.perf_counter() - t0
    own, _ = peak_rss_mib()
    print(
        json.dumps(
            {
                "pipeline": f"bertnli {args.phase}",
                "tokenizer": args.tokenizer,
                "pairs": len(enc),
                "seconds": round(seconds, 3),
                "peak_rss_mib": own,
                "tokens": int(enc.lengths.sum()),
            }
        )
    )


def run_child(*extra) -> dict:
    r = subprocess.run([sys.executable, __file__, *map(str, extra)], capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    line = r.stdout.strip().splitlines()[-1]
    print(line, flush=True)
    return json.loads(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "snli-resplit"))
    ap.add_argument("--rows", type=int, default=550_152)
    ap.add_argument(
        "--skip-d2l", action="store_true", help="leave out the chapter's pipeline (about 35 s and several GiB)"
    )
    ap.add_argument("--child", choices=["d2l", "bertnli"], help=argparse.SUPPRESS)
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    ap.add_argument("--vocab", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    src = Path(args.data) / "snli_1.0_train.jsonl.gz"
    if not src.is_file():
        print(f"skip: no {src}")
        return
    from bertnli.model.presets import minilm_folder

    tmp = Path(tempfile.mkdtemp(prefix="bertnli-bench-"))
    try:
        jsonl, txt, vocab = build_files(src, args.rows, tmp)
        print(
            json.dumps(
                {"rows": args.rows, "note": "snli-resplit train rows repeated, a distinct word appended per repetition"}
            )
        )
        rows = []
        if not args.skip_d2l:
            rows.append(run_child("--child", "d2l", "--file", txt, "--vocab", vocab))
        tokenizers = ["d2l-vocab"] + (["wordpiece"] if minilm_folder() else [])
        for tok in tokenizers:
            cache = tmp / f"cache-{tok}"
            for phase in ("cold", "warm"):
                rows.append(
                    run_child(
                        "--child",
                        "bertnli",
                        "--phase",
                        phase,
                        "--tokenizer",
                        tok,
                        "--file",
                        jsonl,
                        "--vocab",
                        vocab,
                        "--cache",
                        cache,
                    )
                )
        base = rows[0]["seconds"] if not args.skip_d2l else None
        print(f"\n{rows[-1]['pairs']:,} labelled pairs from {args.rows:,} rows (real rows repeated, distinct texts)")
        print(f"{'pipeline':28} {'tokenizer':10} {'seconds':>8} {'pairs/s':>10} {'peak RSS':>9}  vs d2l")
        for r in rows:
            ratio = f"{base / r['seconds']:.1f}x faster" if base and not r["pipeline"].startswith("d2l") else ""
            print(
                f"{r['pipeline']:28} {r['tokenizer']:10} {r['seconds']:8.2f} {r['pairs'] / r['seconds']:10,.0f} "
                f"{r['peak_rss_mib']:6} MiB  {ratio}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
