"""`python -m bertnli.sweep trial ...`: the entry of a trial process (see trial.py)."""

import sys

from bertnli.sweep.trial import main

sys.exit(main(sys.argv[1:]))
