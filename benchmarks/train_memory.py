"""Peak RSS of `bertnli-exp train` on the bert.small shape over 550k training pairs.

The official train split is not here: the train file is the one benchmarks/preprocess.py builds
(snli-resplit's real rows repeated to 550,152, distinct texts); dev and test are snli-resplit's.
The model is d2l's bert.small shape (2 layers, 256 hidden, 4 heads, FFN 512, a 60,005-token
vocabulary as in the chapter's archive) with random weights, saved as a d2l archive folder and
loaded through `--model d2l:<folder>`, exactly as the real archive would be.

A full epoch takes ~20 minutes on 2 cores, so the run is sampled for --seconds (after its data
are encoded and training has started), then interrupted: VmHWM (the kernel's peak RSS of the
process) is the figure; RSS at the first and the last training sample shows whether it grows.

    python benchmarks/train_memory.py --seconds 180
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from d2l_reference import BERTModel  # noqa: E402
from preprocess import build_files  # noqa: E402


def proc_mib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) // 1024
    return out


def steps_done(run: Path):
    """Optimisation steps reached, from the last mid-epoch checkpoint (every 500 steps) if any."""
    last = run / "last.pt"
    if not last.is_file():
        return None
    return int(torch.load(last, weights_only=True, map_location="cpu")["global_step"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "snli-resplit"))
    ap.add_argument("--rows", type=int, default=550_152)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=180, help="how long to watch training after its first step")
    ap.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        default=None,
        help="run the trainer with MALLOC_MMAP_THRESHOLD_=N (glibc): big buffers go back to the OS when freed",
    )
    args = ap.parse_args()
    src = Path(args.data)
    if not (src / "snli_1.0_train.jsonl.gz").is_file():
        print(f"skip: no {src}")
        return
    tmp = Path(tempfile.mkdtemp(prefix="bertnli-mem-"))
    try:
        data = tmp / "data"
        data.mkdir()
        _, txt, vocab_file = build_files(src / "snli_1.0_train.jsonl.gz", args.rows, data)
        txt.unlink()  # bertnli reads the .jsonl.gz
        for split in ("dev", "test"):
            shutil.copy(src / f"snli_1.0_{split}.jsonl.gz", data)
        vocab = json.loads(vocab_file.read_text())
        vocab += [f"<unused{i}>" for i in range(60_005 - len(vocab))]  # the chapter's bert.small vocabulary size
        archive = tmp / "bert.small"
        archive.mkdir()
        (archive / "vocab.json").write_text(json.dumps(vocab))
        torch.manual_seed(0)
        torch.save(BERTModel(len(vocab), 256, 512, 4, 2, 0.1, max_len=512).state_dict(), archive / "pretrained.params")
        cmd = [
            sys.executable,
            "-m",
            "bertnli.cli",
            "train",
            "--model",
            f"d2l:{archive}",
            "--data",
            str(data),
            "--batch-size",
            str(args.batch),
            "--max-len",
            "128",
            "--lr",
            "1e-4",
            "--optimizer",
            "adam",
            "--epochs",
            "1",
            "--cache-dir",
            str(tmp / "cache"),
            "--tracking-uri",
            f"sqlite:///{tmp / 'mlflow.db'}",
            "--out",
            str(tmp / "run"),
        ]
        t0 = time.time()
        env = dict(os.environ)
        if args.malloc_mmap_threshold:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        samples, started = [], None
        lines: list[str] = []
        threading.Thread(target=lambda: [lines.append(x) for x in iter(proc.stdout.readline, "")], daemon=True).start()
        while proc.poll() is None:
            m = proc_mib(proc.pid)
            # the three splits are encoded (their cache files written): the next thing is the first step
            if started is None and len(list((tmp / "cache").glob("*.npz"))) == 3:
                started = time.time()
            if started is not None:
                samples.append((time.time() - started, m["VmRSS"], m["VmHWM"]))
                if time.time() - started > args.seconds:
                    break
            time.sleep(0.5)
        peak = proc_mib(proc.pid)["VmHWM"] if proc.poll() is None else (samples[-1][2] if samples else 0)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        if not samples:
            raise SystemExit("training never started:\n" + "".join(lines)[-3000:])
        res = {
            "measure": "train_peak_rss_mib",
            "shape": "bert.small (vocab 60,005)",
            "pairs": 541_011,
            "batch": args.batch,
            "seconds_watched": round(samples[-1][0]),
            "peak_rss_mib": peak,
            "rss_first_sample_mib": samples[0][1],
            "rss_last_sample_mib": samples[-1][1],
            "startup_seconds": round(started - t0, 1) if started else None,
            "malloc_mmap_threshold": args.malloc_mmap_threshold,
            "steps_done": steps_done(tmp / "run"),
        }
        print(json.dumps(res))
        print(
            f"\npeak RSS {peak} MiB (VmHWM) training bert.small over {args.rows:,} rows at batch {args.batch}; "
            f"RSS {samples[0][1]} -> {samples[-1][1]} MiB over {samples[-1][0]:.0f} s of training"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
