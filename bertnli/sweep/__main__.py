"""`python -m bertnli.sweep trial ...`: the entry of a trial process (see trial.py)."""

import os
import signal
import sys

from bertnli.sweep.trial import main

code = main(sys.argv[1:])
# By now the trial's MLflow run has ended (its status set, system metrics flushed), trial.json is
# written where it trained to the end, and its report lines are sent. The interpreter's teardown
# (torch, MLflow, SQLAlchemy) took ~1.3 s of each trial's wall time on the 2-core CPU, a fifth of
# the sweep's overhead per trial (benchmarks/sweep_overhead.py): skip it. A signal from here on
# could only turn this exit code into a traceback.
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sys.stdout.flush()
sys.stderr.flush()
os._exit(int(code))
