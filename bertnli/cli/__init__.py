"""`bertnli-exp`: the command-line face of bertnli; this module is the group (the console script's entry point),
each command group has a module of its own.

Commands parse options into the library's own types and print its results; the work lives in the
layers below. Every error leaves as one line (`group.Group`).
"""

from __future__ import annotations

import click

from bertnli.cli.analysis import compare, report
from bertnli.cli.data import data
from bertnli.cli.experiments import reproduce
from bertnli.cli.group import Group
from bertnli.cli.models import models
from bertnli.cli.predict import evaluate, predict
from bertnli.cli.sweep import sweep
from bertnli.cli.train import train


@click.group(cls=Group)
@click.version_option(package_name="bertnli")
def main():
    """Fine-tune BERT for natural language inference on SNLI, and study its hyperparameters."""


for command in (train, sweep, reproduce, report, compare, models, data, evaluate, predict):
    main.add_command(command)
