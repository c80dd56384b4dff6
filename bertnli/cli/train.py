"""`bertnli-exp train`: one fine-tuning run (or one per seed), resumable."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import click

from bertnli import BadInput
from bertnli.cli.group import handle_sigterm
from bertnli.cli.options import progress_option, tracking_options, train_options, train_overrides
from bertnli.config import TrackingConfig, load_config, resume_changes, seeds_setting
from bertnli.tracking.store import how_to_see


@click.command()
@train_options
@tracking_options
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="run folder for checkpoints [default: outputs/<time>-<model>]",
)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="continue the run in this folder where it stopped",
)
@click.option("--run-name", default=None, help="MLflow run name")
@click.option(
    "--seeds",
    default=None,
    help="one run per seed, e.g. 0,1,2, grouped by the tag bertnli.seed_group "
    "(rerun with the same --out to resume) [default: the TOML's seeds, else one run with --seed]",
)
@click.option(
    "--overwrite", is_flag=True, help="replace the run that --out holds (without it, a used --out is refused)"
)
@progress_option
def train(config_path, tracking_uri, experiment, out_dir, resume_dir, run_name, seeds, overwrite, progress, **kwargs):
    """Fine-tune one model on SNLI; selects the best dev epoch, tests it once, records it in MLflow."""
    from bertnli.tracking.run import train_run
    from bertnli.tracking.run_folder import RunFinished

    overrides = train_overrides(kwargs)
    handle_sigterm()
    seed_list = None if resume_dir else seeds_setting(config_path, seeds)
    if overwrite and (resume_dir or not out_dir):
        raise click.UsageError("--overwrite replaces the run in --out; give --out DIR (and not --resume)")
    if seeds is not None and resume_dir:
        raise click.UsageError(
            "--seeds and --resume do not mix; to resume a seed group rerun the same command with the same --out"
        )
    if seed_list is not None:
        if overrides.get("seed") is not None:
            raise click.UsageError("give --seed or --seeds, not both")
        return _train_seeds(
            load_config(config_path, overrides), seed_list, out_dir, tracking_uri, experiment, run_name, progress
        )
    if resume_dir:
        saved = Path(resume_dir) / "config.json"
        if not saved.is_file():
            raise BadInput(f"{resume_dir} has no config.json; --resume takes the folder of an earlier run (its --out)")
        saved_cfg = load_config(None, json.loads(saved.read_text()))
        given = load_config(config_path, overrides) if config_path else None
        asked = {k: v for k, v in overrides.items() if v is not None}
        if given is not None:
            asked = {**{k: getattr(given, k) for k in dataclasses.asdict(given)}, **asked}
        cfg = load_config(None, {**dataclasses.asdict(saved_cfg), **resume_changes(saved_cfg, asked)})
        out_dir = resume_dir
    else:
        cfg = load_config(config_path, overrides)
        out_dir = out_dir or f"outputs/{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model.replace(':', '_').replace('/', '_')}"
    tracking = TrackingConfig(tracking_uri, experiment or "bertnli", run_name)
    try:
        result, run_id = train_run(
            cfg, out_dir, tracking, resume=bool(resume_dir), progress=progress, overwrite=overwrite
        )
    except RunFinished as e:
        click.echo(str(e))
        return
    if run_id:
        test = f"{result.test.acc:.4f}" if result.test else "n/a"
        click.echo(
            f"best dev_acc {result.best_dev_acc:.4f} (epoch {result.best_epoch}); test_acc {test}; "
            f"{result.history[-1].examples_per_sec:.1f} train ex/s; {result.wall_seconds:.0f} s"
        )
        click.echo(f"run {run_id}; checkpoint {Path(out_dir) / 'best'}")
        recorded_in = json.loads((Path(out_dir) / "mlflow_run.json").read_text())["tracking_uri"]
        click.echo(f"see it: {how_to_see(recorded_in, run_id)}")


def _train_seeds(cfg, seeds, out_dir, tracking_uri, experiment, run_name, progress):
    from bertnli.analysis.stats import mean_ci
    from bertnli.tracking.query import load_runs
    from bertnli.tracking.seeds import train_seed_group

    out_dir = (
        out_dir or f"outputs/{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model.replace(':', '_').replace('/', '_')}-seeds"
    )
    tracking = TrackingConfig(tracking_uri, experiment or "bertnli", run_name)
    group, done = train_seed_group(cfg, seeds, out_dir, tracking, progress, click.echo)
    for seed, dev, run_id in done:
        click.echo(
            f"seed {seed}: " + (f"best dev_acc {dev:.4f}; " if dev is not None else "adopted; ") + f"run {run_id}"
        )
    runs = load_runs([experiment or "bertnli"], tracking_uri, tags={"bertnli.seed_group": group})
    mean, lo, hi = mean_ci(runs["best_dev_acc"].dropna())
    click.echo(
        f"seed group {group}: {len(runs)} runs, dev_acc mean {mean:.4f} (95 % CI over seeds {lo:.4f} to {hi:.4f})"
    )
    click.echo(f"see them: bertnli-exp report --experiment {experiment or 'bertnli'} --tag bertnli.seed_group={group}")
