"""bertnli: fine-tune BERT for natural language inference (SNLI) and study its hyperparameters.

The package is layered (docs/architecture.md): config and files < data < model < train < tracking
< analysis < sweep and experiments < cli; a module imports from its own layer or the ones below.
"""

from pathlib import Path

__version__ = "0.1.0"

PACKAGE_DIR = Path(__file__).resolve().parent  # what the code digest hashes and a logged model carries


class BertnliError(Exception):
    """An error a user can fix: its message is one line naming the problem and the fix."""


class BadInput(BertnliError):
    """An option, setting or argument the user gave is impossible: the CLI exits 2, as for usage errors."""
