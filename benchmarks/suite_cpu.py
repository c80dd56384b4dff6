"""Where the test suite's CPU goes: per file and per test, from a `tests/cpu_timeline.py` record.

    BERTNLI_CPU_TIMELINE=/tmp/suite.jsonl python -m pytest -q -n 2 --dist loadfile
    python benchmarks/suite_cpu.py /tmp/suite.jsonl --top 30

The suite's wall time on 2 cores is about its CPU over 2: the CPU column is what a cut saves.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("timeline", help="the JSON lines that BERTNLI_CPU_TIMELINE wrote")
    ap.add_argument("--top", type=int, default=25, help="how many tests to list")
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(args.timeline)]
    if any(r["cpu_s"] is None for r in rows):
        raise SystemExit(
            "suite_cpu: the record has no CPU figures (cgroups could not be made); run as root on cgroup v1"
        )
    files = defaultdict(lambda: [0.0, 0.0, 0])
    for r in rows:
        f = files[r["test"].split("::")[0]]
        f[0], f[1], f[2] = f[0] + r["cpu_s"], f[1] + r["wall_s"], f[2] + 1
    total = sum(r["cpu_s"] for r in rows)
    ends = defaultdict(float)
    for r in rows:
        ends[r["worker"]] = max(ends[r["worker"]], r["start"] + r["wall_s"])
    start = min(r["start"] for r in rows)
    print(
        f"{len(rows)} tests: CPU {total:.0f} s; each worker ended after "
        + ", ".join(f"{w} {t - start:.0f} s" for w, t in sorted(ends.items()))
    )
    print(f"\n{'CPU s':>7} {'wall s':>7} {'tests':>5}  file")
    for name, (cpu, wall, n) in sorted(files.items(), key=lambda kv: -kv[1][0]):
        print(f"{cpu:7.1f} {wall:7.1f} {n:5d}  {name}")
    print(f"\n{'CPU s':>7} {'wall s':>7}  test (the {args.top} costliest)")
    for r in sorted(rows, key=lambda r: -r["cpu_s"])[: args.top]:
        print(f"{r['cpu_s']:7.1f} {r['wall_s']:7.1f}  {r['test']}")


if __name__ == "__main__":
    main()
