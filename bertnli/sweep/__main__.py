"""`python -m bertnli.sweep trial ...`: the entry of a trial process (see trial.py)."""

import os
import sys

from bertnli.sweep.trial import main

code = main(sys.argv[1:])
# By now the trial has ended its MLflow run, written trial.json and its last report line. The
# interpreter's teardown (torch, MLflow, SQLAlchemy) took ~1.3 s of each trial's wall time on the
# 2-core CPU, a fifth of the sweep's overhead per trial (benchmarks/sweep_overhead.py): skip it.
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
