"""`python -m bertnli.cli` (also what torchrun runs: `torchrun -m bertnli.cli train ...`)."""

from bertnli.cli import main

main()
