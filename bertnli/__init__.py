"""bertnli: fine-tune BERT for natural language inference (SNLI) and study its hyperparameters."""

__version__ = "0.1.0"


class BertnliError(Exception):
    """An error a user can fix: its message is one line naming the problem and the fix."""


class BadInput(BertnliError):
    """An option, setting or argument the user gave is impossible: the CLI exits 2, as for usage errors."""
