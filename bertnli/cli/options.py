"""Options shared by commands: a `--flag` for every TrainConfig field, tracking options, early checks."""

from __future__ import annotations

import dataclasses
import os

import click

from bertnli.config import OPTIMIZERS, SCHEDULES, TRUNCATIONS, TrainConfig

_CHOICES = {"truncation": TRUNCATIONS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES}


_HELP = {
    "model": "preset name (see `bertnli-exp models`), hf:<folder> or d2l:<folder or .zip>",
    "num_layers": "keep only the first N encoder layers",
    "num_heads": "attention heads of a d2l archive (d2l does not store them; unset: hidden/64, with a warning)",
    "data": "folder with snli_1.0_{train,dev,test}.jsonl[.gz] or .txt[.gz]",
    "limit_train": "train on the first N examples only",
    "limit_eval": "evaluate on the first N dev/test examples only",
    "train_fraction": "train on a nested, label-stratified fraction of the train split (what a multi-fidelity rung "
    "sees)",
    "warmup": "fraction of steps for linear warmup (schedule=linear)",
    "bucket": "length-bucketed batches with dynamic padding (--no-bucket pads to max_len)",
    "pad_multiple": "round batch widths up to a multiple of this (1: exact width)",
    "compile": "torch.compile the training forward (pays on long GPU runs; minutes to compile) [default: off]",
}


# Ranges the parser can check (the rest of TrainConfig's checks run in its __post_init__, also exit 2).
_RANGES = {
    "lr": click.FloatRange(min=0, min_open=True),
    "warmup": click.FloatRange(0, 1, max_open=True),
    "dropout": click.FloatRange(0, 1, max_open=True),
    "weight_decay": click.FloatRange(min=0),
    "grad_clip": click.FloatRange(min=0),
    "max_len": click.IntRange(min=8),
    "checkpoint_every": click.IntRange(min=0),
    "seed": click.IntRange(min=0),
    "data": click.Path(file_okay=False),
    "cache_dir": click.Path(file_okay=False),
}


def _click_type(f: dataclasses.Field):
    if f.name in _CHOICES:
        return click.Choice(_CHOICES[f.name])
    if f.name in _RANGES:
        return _RANGES[f.name]
    t = str(f.type)
    if "int" in t:
        return click.IntRange(min=1)
    if "float" in t:
        return float
    return str


def train_options(func):
    """A `--flag` for every TrainConfig field; None means "not given", so the TOML value stands."""
    for f in reversed(dataclasses.fields(TrainConfig)):
        name = f.name.replace("_", "-")
        if "bool" in str(f.type):
            func = click.option(
                f"--{name}/--no-{name}", f.name, default=None, help=_HELP.get(f.name, f"default {f.default}")
            )(func)
        else:
            func = click.option(
                f"--{name}",
                f.name,
                type=_click_type(f),
                default=None,
                help=f"{_HELP.get(f.name, '')} [default: {f.default}]".strip(),
            )(func)
    func = click.option("--config", "config_path", type=click.Path(), help="experiment TOML (options override it)")(
        func
    )
    return func


_URI_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


def _check_tracking_uri(ctx, param, value):
    """Refuse a URI MLflow cannot open at parse time, not after a data read or a training epoch."""
    if value is not None and "://" in value and value.split("://")[0].split("+")[0] not in _URI_SCHEMES:
        raise click.BadParameter(
            f"{value!r} is not an MLflow tracking URI; give http://host:port, sqlite:///path.db "
            "or postgresql://user@host/db"
        )
    return value


def check_model_name(ctx, param, value):
    """A registry name is checked before the study runs, not after its last trial."""
    if value is not None and (not value.strip() or any(ch in value for ch in "/:%")):
        raise click.BadParameter(f"{value!r} is not a registered-model name; use letters, digits, '-', '_' or '.'")
    return value


def progress_option(func):
    """Progress bars on stderr; --no-progress for logs and scripts (every long-running command takes it)."""
    return click.option("--progress/--no-progress", default=True, help="show progress bars [default: on]")(func)


def tracking_uri_option(func):
    return click.option(
        "--tracking-uri",
        default=None,
        callback=_check_tracking_uri,
        help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI or sqlite under ./mlruns]",
    )(func)


def _system_metrics(ctx, param, value):
    """An environment switch, so sweep trial processes inherit it too."""
    if value is False:
        os.environ["BERTNLI_SYSTEM_METRICS"] = "0"
    return value


def _mlflow_patience(ctx, param, value):
    """An environment switch, so sweep trial processes inherit it too."""
    if value is not None:
        os.environ["BERTNLI_MLFLOW_PATIENCE"] = str(value)
    return value


def tracking_options(func):
    func = tracking_uri_option(func)
    func = click.option(
        "--mlflow-patience",
        type=click.FloatRange(min=0),
        default=None,
        expose_value=False,
        callback=_mlflow_patience,
        help="seconds a run waits out an unreachable MLflow (metrics kept meanwhile) before it stops [default: 300]",
    )(func)
    func = click.option(
        "--system-metrics/--no-system-metrics",
        default=None,
        expose_value=False,
        callback=_system_metrics,
        help="log CPU, memory and GPU use with MLflow's system metrics [default: on]",
    )(func)
    func = click.option("--experiment", default=None, help="MLflow experiment [default: bertnli]")(func)
    return func


def train_overrides(kwargs: dict) -> dict:
    """The TrainConfig options out of a command's keyword arguments (None: not given)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: kwargs.pop(k) for k in list(kwargs) if k in names}
