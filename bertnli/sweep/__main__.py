"""`python -m bertnli.sweep trial ...`: the entry of a trial process started by exec (see trial.py)."""

import sys

from bertnli.sweep.trial import run_and_exit

run_and_exit(sys.argv[1:])
