"""The `bertnli-exp` group (the console script's entry point) and its commands."""

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
