"""`bertnli-exp reproduce`: run an experiment file and end with its verdict."""

from __future__ import annotations

import sys

import click

from bertnli.cli.options import progress_option, tracking_options


@click.command()
@click.argument("name")
@tracking_options
@click.option("--force", is_flag=True, help="run even where the experiment needs a GPU or data this machine lacks")
@progress_option
def reproduce(name, tracking_uri, experiment, force, progress):
    """Run experiments/NAME.toml and end with a verdict: target, measured, pass or fail, run id."""
    from bertnli.experiments import reproduce as run_experiment

    if run_experiment(name, tracking_uri, experiment, force, progress, log=click.echo) is False:
        sys.exit(1)
