"""`bertnli-exp`: the command-line face of bertnli. No logic of its own; errors are one line."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import click

from bertnli import BadInput, BertnliError
from bertnli.config import OPTIMIZERS, SCHEDULES, TRUNCATIONS, TrackingConfig, TrainConfig, load_config, resume_changes

# ---------------------------------------------------------------- one-line errors


class Group(click.Group):
    """Every error leaves as one line: `bertnli-exp: error: ...`; usage errors exit 2."""

    def main(self, *args, **kwargs):  # noqa: D401
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
            sys.exit(rv if isinstance(rv, int) else 0)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help())
            sys.exit(0)
        except click.UsageError as e:
            cmd = e.ctx.command_path if e.ctx else "bertnli-exp"
            click.echo(f"{cmd}: error: {e.format_message()} (see {cmd} --help)", err=True)
            sys.exit(2)
        except click.exceptions.Abort as e:  # click turns KeyboardInterrupt (and our SIGTERM) into Abort
            if isinstance(e.__context__, Terminated):
                click.echo("bertnli-exp: terminated (SIGTERM); runs are marked KILLED; run the same command "
                           "(train: with --resume) to continue", err=True)
                sys.exit(143)
            click.echo("bertnli-exp: interrupted", err=True)
            sys.exit(130)
        except click.ClickException as e:
            click.echo(f"bertnli-exp: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except BadInput as e:
            click.echo(f"bertnli-exp: error: {e}", err=True)
            sys.exit(2)
        except BertnliError as e:
            click.echo(f"bertnli-exp: error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt as e:
            click.echo(f"bertnli-exp: {'terminated' if isinstance(e, Terminated) else 'interrupted'}; the run is marked KILLED; "
                       "run the same command (train: with --resume) to continue", err=True)
            sys.exit(143 if isinstance(e, Terminated) else 130)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `timeout`, `docker stop`): handled like Ctrl-C, so the run ends KILLED and resumable."""


def _raise_terminated(signum, frame):
    raise Terminated()


def handle_sigterm() -> None:
    import signal

    signal.signal(signal.SIGTERM, _raise_terminated)


# ---------------------------------------------------------------- options from TrainConfig

_CHOICES = {"truncation": TRUNCATIONS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES}
_HELP = {
    "model": "preset name (see `bertnli-exp models`), hf:<folder> or d2l:<folder or .zip>",
    "num_layers": "keep only the first N encoder layers",
    "num_heads": "attention heads of a d2l archive (d2l does not store them; unset: hidden/64, with a warning)",
    "data": "folder with snli_1.0_{train,dev,test}.jsonl[.gz] or .txt[.gz]",
    "limit_train": "train on the first N examples only",
    "limit_eval": "evaluate on the first N dev/test examples only",
    "train_fraction": "train on a nested, label-stratified fraction of the train split (what a multi-fidelity rung sees)",
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
            func = click.option(f"--{name}/--no-{name}", f.name, default=None, help=_HELP.get(f.name, f"default {f.default}"))(func)
        else:
            func = click.option(f"--{name}", f.name, type=_click_type(f), default=None,
                                help=f"{_HELP.get(f.name, '')} [default: {f.default}]".strip())(func)
    func = click.option("--config", "config_path", type=click.Path(), help="experiment TOML (options override it)")(func)
    return func


_URI_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


def _check_tracking_uri(ctx, param, value):
    """Refuse a URI MLflow cannot open at parse time, not after a data read or a training epoch."""
    if value is not None and "://" in value and value.split("://")[0].split("+")[0] not in _URI_SCHEMES:
        raise click.BadParameter(f"{value!r} is not an MLflow tracking URI; give http://host:port, sqlite:///path.db "
                                 "or postgresql://user@host/db")
    return value


def _check_model_name(ctx, param, value):
    """A registry name is checked before the study runs, not after its last trial."""
    if value is not None and (not value.strip() or any(ch in value for ch in "/:%")):
        raise click.BadParameter(f"{value!r} is not a registered-model name; use letters, digits, '-', '_' or '.'")
    return value


def tracking_uri_option(func):
    return click.option("--tracking-uri", default=None, callback=_check_tracking_uri,
                        help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI or sqlite under ./mlruns]")(func)


def _system_metrics(ctx, param, value):
    """An environment switch, so sweep trial processes inherit it too."""
    if value is False:
        import os

        os.environ["BERTNLI_SYSTEM_METRICS"] = "0"
    return value


def tracking_options(func):
    func = tracking_uri_option(func)
    func = click.option("--system-metrics/--no-system-metrics", default=None, expose_value=False, callback=_system_metrics,
                        help="log CPU, memory and GPU use with MLflow's system metrics [default: on]")(func)
    func = click.option("--experiment", default=None, help="MLflow experiment [default: bertnli]")(func)
    return func


def _train_overrides(kwargs: dict) -> dict:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: kwargs.pop(k) for k in list(kwargs) if k in names}


@click.group(cls=Group)
@click.version_option(package_name="bertnli")
def main():
    """Fine-tune BERT for natural language inference on SNLI, and study its hyperparameters."""


# ---------------------------------------------------------------- train


@main.command()
@train_options
@tracking_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="run folder for checkpoints [default: outputs/<time>-<model>]")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), default=None, help="continue the run in this folder where it stopped")
@click.option("--run-name", default=None, help="MLflow run name")
@click.option("--seeds", default=None, help="one run per seed, e.g. 0,1,2, grouped by the tag bertnli.seed_group "
              "(rerun with the same --out to resume) [default: the TOML's seeds, else one run with --seed]")
@click.option("--progress/--no-progress", default=True)
def train(config_path, tracking_uri, experiment, out_dir, resume_dir, run_name, seeds, progress, **kwargs):
    """Fine-tune one model on SNLI; selects the best dev epoch, tests it once, records it in MLflow."""
    from bertnli.config import seeds_setting
    from bertnli.tracking import train_run

    overrides = _train_overrides(kwargs)
    handle_sigterm()
    seed_list = None if resume_dir else seeds_setting(config_path, seeds)
    if seeds is not None and resume_dir:
        raise click.UsageError("--seeds and --resume do not mix; to resume a seed group rerun the same command with the same --out")
    if seed_list is not None:
        if overrides.get("seed") is not None:
            raise click.UsageError("give --seed or --seeds, not both")
        return _train_seeds(load_config(config_path, overrides), seed_list, out_dir, tracking_uri, experiment, run_name, progress)
    if resume_dir:
        saved = Path(resume_dir) / "config.json"
        if not saved.is_file():
            raise BadInput(f"{resume_dir} has no config.json; --resume takes the folder of an earlier run (its --out)")
        import json

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
    result, run_id = train_run(cfg, out_dir, tracking, resume=bool(resume_dir), progress=progress)
    if run_id:
        test = f"{result.test.acc:.4f}" if result.test else "n/a"
        click.echo(f"best dev_acc {result.best_dev_acc:.4f} (epoch {result.best_epoch}); test_acc {test}; "
                   f"{result.history[-1].examples_per_sec:.1f} train ex/s; {result.wall_seconds:.0f} s")
        click.echo(f"run {run_id}; checkpoint {Path(out_dir) / 'best'}")
        click.echo("see it: mlflow ui --backend-store-uri " + _ui_uri(tracking_uri))


def _train_seeds(cfg, seeds, out_dir, tracking_uri, experiment, run_name, progress):
    from bertnli.stats import mean_ci
    from bertnli.tracking import train_seed_group

    out_dir = out_dir or f"outputs/{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model.replace(':', '_').replace('/', '_')}-seeds"
    tracking = TrackingConfig(tracking_uri, experiment or "bertnli", run_name)
    group, done = train_seed_group(cfg, seeds, out_dir, tracking, progress, click.echo)
    for seed, dev, run_id in done:
        click.echo(f"seed {seed}: " + (f"best dev_acc {dev:.4f}; " if dev is not None else "adopted; ") + f"run {run_id}")
    from bertnli.report import load_runs

    runs = load_runs([experiment or "bertnli"], tracking_uri, tags={"bertnli.seed_group": group})
    mean, lo, hi = mean_ci(runs["best_dev_acc"].dropna())
    click.echo(f"seed group {group}: {len(runs)} runs, dev_acc mean {mean:.4f} (95 % CI over seeds {lo:.4f} to {hi:.4f})")
    click.echo(f"see them: bertnli-exp report --experiment {experiment or 'bertnli'} --tag bertnli.seed_group={group}")


def _ui_uri(uri: str | None) -> str:
    from bertnli.tracking import default_tracking_uri, local_artifact_root

    uri = uri or default_tracking_uri()
    art = local_artifact_root(uri)
    return uri + (f" --default-artifact-root {art}" if art else "")


# ---------------------------------------------------------------- sweep


@main.command()
@train_options
@tracking_options
@click.option("--trials", type=click.IntRange(min=1), default=None, help="complete-or-pruned trials the study should hold [default: 20]")
@click.option("--study-name", default=None, help="Optuna study (and MLflow experiment) name")
@click.option("--storage", default=None, help="Optuna storage: a journal file path or an RDB URL (postgresql://...) [default: mlruns/optuna-journal.log]")
@click.option("--space", multiple=True, help="override a search dimension: lr=1e-5:1e-3:log, epochs=1:3, model=minilm-l6|minilm-l3")
@click.option("--timeout", type=click.FloatRange(min=1), default=None, help="stop starting trials after this many seconds")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="trial processes at once on this host [default: 1]")
@click.option("--sampler-seed", type=int, default=None, help="TPE sampler seed [default: 0]")
@click.option("--sampler", type=click.Choice(["tpe", "random"]), default=None,
              help="tpe (with median pruning) or random (i.i.d. trials, no pruning: valid for expected validation performance) [default: tpe]")
@click.option("--fidelity", type=click.Choice(["none", "data"]), default=None,
              help="data: successive halving over the training-set fraction (--trials configurations; rungs eta^-k of the data) [default: none]")
@click.option("--eta", type=click.IntRange(min=2), default=None, help="multi-fidelity: keep the best 1/eta of each rung [default: 3]")
@click.option("--min-fraction", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=None,
              help="multi-fidelity: a floor for the smallest rung's share of the train split; rungs are the powers of 1/eta "
                   "above it (0.12 with eta 3: 1/3 and 1) [default: 1/9]")
@click.option("--keep-checkpoints", type=click.Choice(["best", "all"]), default=None, help="keep only the best trial's checkpoint, or all")
@click.option("--grace", "grace_s", type=click.FloatRange(min=1), default=None, help="seconds without heartbeat before another host's RUNNING trial is failed [default: 60]")
@click.option("--trial-timeout", type=click.FloatRange(min=1), default=None,
              help="seconds one trial may run; a trial past it (hung) is killed and marked FAIL 'timed out' [default: none]")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="folder for trial checkpoints [default: outputs/sweeps]")
@click.option("--register", "register_name", default=None, callback=_check_model_name,
              help="register the study's best model in the MLflow Model Registry as NAME, alias champion")
def sweep(config_path, tracking_uri, experiment, trials, study_name, storage, space, timeout, workers, sampler_seed, sampler,
          fidelity, eta, min_fraction, keep_checkpoints, grace_s, trial_timeout, out_dir, register_name, **kwargs):
    """An Optuna study over the engine; rerun the same command to resume it."""
    from bertnli.sweep import Sweep, load_sweep_config

    overrides = _train_overrides(kwargs)
    sweep_overrides = {"trials": trials, "study_name": study_name, "storage": storage, "timeout": timeout, "workers": workers,
                       "seed": sampler_seed, "sampler": sampler, "keep_checkpoints": keep_checkpoints, "grace_s": grace_s,
                       "out_dir": out_dir, "trial_timeout": trial_timeout, "fidelity": fidelity, "eta": eta, "min_fraction": min_fraction}
    cfg = load_sweep_config(config_path, overrides, sweep_overrides, list(space), TrackingConfig(tracking_uri, experiment))
    handle_sigterm()
    summary = Sweep(cfg, log=click.echo).run()
    best = summary.get("best")
    click.echo(f"study {cfg.study_name}: {summary['done']}/{summary['target']} trials complete or pruned in {summary['wall_seconds']:.0f} s")
    if summary.get("rungs") is not None:
        click.echo(summary["rungs"].to_string(index=False))
    if best is not None:
        test = best.user_attrs.get("test_acc")
        click.echo(f"best trial {best.number}: dev_acc {best.value:.4f}" + (f", test_acc {test:.4f}" if test is not None else "")
                   + " " + " ".join(f"{k}={v}" for k, v in best.params.items()))
    if register_name and best is not None:
        from bertnli.tracking import register_champion

        version = register_champion(best.user_attrs.get("mlflow_run_id", ""), register_name, cfg.tracking.tracking_uri)
        click.echo(f"registered {register_name} version {version} (trial {best.number}) as models:/{register_name}@champion")
    elif register_name:
        raise BertnliError(f"no complete trial to register as {register_name}")
    from bertnli.sweep import default_storage

    click.echo(f"MLflow parent run {summary['parent_run_id']}: mlflow ui --backend-store-uri {_ui_uri(tracking_uri)}")
    click.echo(f"optuna-dashboard {cfg.storage or default_storage()}")


# ---------------------------------------------------------------- reproduce / report


@main.command()
@click.argument("name")
@tracking_options
@click.option("--force", is_flag=True, help="run even where the experiment needs a GPU or data this machine lacks")
@click.option("--progress/--no-progress", default=True)
def reproduce(name, tracking_uri, experiment, force, progress):
    """Run experiments/NAME.toml and end with a verdict: target, measured, pass or fail, run id."""
    import itertools

    import torch

    from bertnli.config import read_toml
    from bertnli.tracking import train_run

    path = Path(name) if name.endswith(".toml") else Path("experiments") / f"{name}.toml"
    doc = read_toml(path)
    stem = path.stem
    expect = doc.get("expect", {})
    cfg = load_config(path)
    if expect.get("needs") and not force and (not torch.cuda.is_available() or not Path(cfg.data).is_dir()):
        reduced = expect.get("reduced")
        raise BadInput(f"{stem} needs {expect['needs']}; this machine lacks them"
                           + (f"; run the reduced variant: bertnli-exp reproduce {reduced}" if reduced else "") + " (or --force)")
    if "sweep" in doc:
        raise BadInput(f"{stem} is a study: run it with bertnli-exp sweep --config {path}")
    from bertnli.lineage import DataCheck

    data_check = DataCheck.before(cfg.data, expect.get("data_sha256"))  # refuses other data before any training
    grid = doc.get("grid", {})
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]
    from bertnli.config import seeds_setting

    seeds = seeds_setting(path, None)
    if seeds is not None and "seed" in grid:
        raise BadInput(f"{path}: seeds in [train] and seed in [grid] do not mix; keep one")
    results = []
    for combo in combos:
        run_cfg = cfg.replace(**combo)
        out = f"outputs/{stem}/" + ("-".join(f"{k}={v}" for k, v in combo.items()) or "run")
        tracking = TrackingConfig(tracking_uri, experiment or stem, None, {"bertnli.experiment_file": stem})
        if seeds is not None:
            from bertnli.tracking import train_seed_group

            group, done = train_seed_group(run_cfg, seeds, out, tracking, progress, click.echo,
                                           fix=f"undo the change to resume, or delete {out} to run the experiment afresh")
            for seed, dev, run_id in done:
                click.echo(f"{stem} {combo} seed {seed}: " + (f"dev {dev:.4f}" if dev is not None else "adopted") + f" run {run_id}")
                click.echo(data_check.after(run_id, tracking_uri, stem))
            continue
        result, run_id = train_run(run_cfg, out, tracking, progress=progress)
        results.append((combo, result, run_id))
        click.echo(f"{stem} {combo or ''}: dev {result.best_dev_acc:.4f} test "
                   f"{result.test.acc if result.test else float('nan'):.4f} run {run_id}")
        click.echo(data_check.after(run_id, tracking_uri, stem))
    if grid or seeds is not None:
        click.echo(f"{stem}: {len(combos) * len(seeds or [0])} runs; compare them with: bertnli-exp report --experiment {experiment or stem}"
                   + (f" or bertnli-exp compare --cell {','.join(f'{k}={v}' for k, v in combos[0].items())} --cell "
                      f"{','.join(f'{k}={v}' for k, v in combos[1].items())} --experiment {experiment or stem}" if len(combos) == 2 else ""))
        return
    combo, result, run_id = results[0]
    metric = expect.get("metric", "best_dev_acc")
    measured = result.test.acc if metric == "test_acc" and result.test else result.best_dev_acc
    target = expect.get("target")
    if target is None:
        click.echo(f"verdict: {stem}: no target; measured {metric} {measured:.4f}; run {run_id}")
        return
    ok = measured >= target - expect.get("tolerance", 0.0)
    click.echo(f"verdict: {stem}: target {metric} >= {target - expect.get('tolerance', 0.0):.4f}, measured {measured:.4f}: "
               f"{'PASS' if ok else 'FAIL'}; run {run_id}")
    if not ok:
        sys.exit(1)


def _check_cell_by(value: str) -> list[str]:
    from bertnli.report import PARAMS

    keys = [k.strip() for k in value.split(",") if k.strip()]
    unknown = [k for k in keys if k not in PARAMS]
    if unknown or not keys:
        raise click.BadParameter(f"{','.join(unknown) or repr(value)}: not a run param; use some of {','.join(PARAMS)}")
    return keys


@main.command()
@click.option("--experiment", "experiments", multiple=True, help="MLflow experiment(s) [default: all]")
@click.option("--study", default=None, help="only the trials of this Optuna study")
@click.option("--parent-run", default=None, help="only the children of this parent run")
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE filter on run tags")
@click.option("--cell-by", default="model,truncation", show_default=True, callback=lambda ctx, param, value: _check_cell_by(value),
              help="run params that define a cell (runs in a cell differ by seed, or by the other params)")
@click.option("--replay-pruners", "replay", default=None, metavar="STUDY",
              help="replay MedianPruner, SuccessiveHalving and Hyperband over this study's recorded dev curves")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="reports", show_default=True)
@click.option("--format", "formats", type=click.Choice(["md", "csv", "html"]), multiple=True, help="[default: all three]")
@tracking_uri_option
def report(experiments, study, parent_run, tags, cell_by, replay, out_dir, formats, tracking_uri):
    """Tables and plots from recorded runs: leaderboard, cells with CIs over seeds, pairwise tests, expected
    validation performance, and (with --replay-pruners) what other pruners would have done."""
    from bertnli.report import (audit_note, fidelity_audit, format_table, grouped, leaderboard, load_runs, top_rung,
                                truncation_effect, write_report)

    tag_filter = {}
    for t in tags:
        if "=" not in t:
            raise click.BadParameter(f"{t!r} is not KEY=VALUE (e.g. --tag bertnli.truncation=ratio)", param_hint="--tag")
        k, v = t.split("=", 1)
        tag_filter[k] = v
    keys = cell_by
    extra = {}
    if replay:
        from bertnli.replay import replay_study

        extra = replay_study(replay, tracking_uri)
    runs = load_runs(list(experiments) or None, tracking_uri, study or replay, parent_run, tag_filter)
    if runs.empty:
        raise BadInput("no runs match; check --experiment/--study/--tracking-uri (bertnli-exp train records into 'bertnli')")
    import pandas as pd

    with pd.option_context("display.width", 250, "display.max_columns", 20):
        comparable = top_rung(runs)  # a multi-fidelity study's lower rungs trained on less data: audited below
        click.echo("leaderboard (by dev accuracy):")
        click.echo(format_table(leaderboard(comparable, 10).drop(columns=["run_id"])).to_string(index=False))
        click.echo("\nby model x truncation:")
        click.echo(format_table(grouped(comparable)).to_string(index=False))
        eff = truncation_effect(comparable)
        if not eff.empty:
            click.echo("\ntruncation effect (ratio - longest_first, dev accuracy):")
            click.echo(format_table(eff).to_string(index=False))
        audit = fidelity_audit(runs)
        if not audit.empty:
            click.echo("\nmulti-fidelity audit (each rung's ranking vs the final one):")
            click.echo(format_table(audit.drop(columns=["parent_run_id"])).to_string(index=False))
            if audit_note(audit):
                click.echo(audit_note(audit).strip())
        for name, table in extra.items():
            click.echo(f"\n{name.replace('_', ' ')} (study {replay}):")
            click.echo(format_table(table).to_string(index=False))
    files = write_report(runs, out_dir, tuple(formats) or ("md", "csv", "html"), tracking_uri, tuple(keys), extra, audit)
    click.echo(f"\nwrote {len(files)} files to {Path(out_dir)} (open {Path(out_dir) / 'report.html'})")


def _check_cell(ctx, param, value):
    from bertnli.compare import parse_cell

    for spec in value:
        try:
            parse_cell(spec)
        except BadInput as e:
            raise click.BadParameter(str(e).removeprefix(f"--cell {spec!r}: ")) from None
    return value


@main.command()
@click.argument("a", required=False)
@click.argument("b", required=False)
@click.option("--cell", "cells", multiple=True, callback=_check_cell,
              help="a group of runs by params, across seeds: model=minilm-l6,truncation=ratio (give two)")
@click.option("--experiment", "experiments", multiple=True, help="where to look for --cell runs [default: all experiments]")
@click.option("--boot", type=click.IntRange(min=200), default=10_000, show_default=True, help="bootstrap resamples")
@tracking_uri_option
def compare(a, b, cells, experiments, boot, tracking_uri):
    """Is A better than B? Paired over the same examples (and seeds): delta, 95 % bootstrap CI, McNemar p.

    A and B are MLflow run ids; or give two --cell groups instead (each across its seeds).
    """
    from bertnli.compare import cell_runs, compare_runs, describe, parse_cell
    from bertnli.report import load_runs

    run_ids = [r for r in (a, b) if r]
    if len(run_ids) + len(cells) != 2 or (run_ids and cells):
        raise click.UsageError("give two run ids (compare A B), or two groups (--cell k=v,... --cell k=v,...)")
    runs = load_runs(list(experiments) or None, tracking_uri) if cells or experiments else None
    if cells:
        sides = [cell_runs(runs, parse_cell(c)) for c in cells]
        names = list(cells)
    else:
        sides, names = [[r] for r in run_ids], [r[:8] for r in run_ids]
    for name, side in zip("AB", sides):
        click.echo(f"{name}: {len(side)} run(s): {' '.join(side)}")
    table = compare_runs(sides[0], sides[1], tracking_uri, n_boot=boot)
    for _, row in table.iterrows():
        click.echo(describe(row, names[0], names[1]))
    if "test" not in set(table["split"]):
        click.echo("test: not compared (a side has no final test predictions)")


# ---------------------------------------------------------------- models


@main.command()
def models():
    """The model presets and where their weights are."""
    from bertnli.model import PRESETS, preset_location

    for p in PRESETS.values():
        click.echo(f"{p.name:16} {p.description}\n{'':16} weights: {preset_location(p.name)}")
    click.echo(f"{'hf:<folder>':16} any Hugging Face BERT folder (config.json, model.safetensors or pytorch_model.bin, vocab.txt)")
    click.echo(f"{'d2l:<path>':16} a d2l BERT archive: its .zip, the folder it unpacks into, or the bert.* folder "
               "(pretrained.params, vocab.json); give --num-heads, d2l does not store it")


# ---------------------------------------------------------------- data


@main.group()
def data():
    """Get SNLI and look at it."""


@data.command("download")
@click.option("--dest", type=click.Path(file_okay=False), default="data", show_default=True)
@click.option("--mirror", default=None, help="another URL serving snli_1.0.zip (same sha1)")
@click.option("--source", type=click.Path(exists=True), default=None, help="a local snli_1.0.zip or unpacked folder")
def data_download(dest, mirror, source):
    """Fetch SNLI 1.0 (sha1 checked, resumable) and unpack it safely."""
    from bertnli.data import SNLI_URL, fetch_snli

    folder = fetch_snli(dest, url=mirror or SNLI_URL, source=source)
    click.echo(f"SNLI ready in {folder}; train with --data {folder}")


@data.command("info")
@click.option("--data", "folder", type=click.Path(), default=TrainConfig.data, show_default=True)
def data_info(folder):
    """Split sizes, label balance and length percentiles (d2l words per pair)."""
    from bertnli.data import SPLITS, read_split, split_summary

    found = False
    for name in SPLITS:
        split = read_split(folder, name, required=False)
        if split is None:
            click.echo(f"{name:5}  missing (no snli_1.0_{name}.* in {folder})")
            continue
        found = True
        s = split_summary(split)
        click.echo(f"{name:5}  {s['pairs']:>7,} pairs ({s['dropped_no_gold']} without gold label dropped)  "
                   f"entailment {s['entailment_frac']:.3f} contradiction {s['contradiction_frac']:.3f} neutral {s['neutral_frac']:.3f}  "
                   f"words/pair p50 {s['len_p50']} p90 {s['len_p90']} p99 {s['len_p99']} max {s['len_p100']}")
    if not found:
        raise BadInput(f"no SNLI split in {folder}; give --data a folder with snli_1.0_*.jsonl[.gz]")


# ---------------------------------------------------------------- evaluate / predict


def _load_checkpoint(source: str, tracking_uri: str | None):
    from bertnli.engine import load_selected

    path = Path(source)
    if path.is_dir():
        if (path / "best").is_dir() and not (path / "model.safetensors").exists():
            path = path / "best"
        return load_selected(path)
    from bertnli.tracking import resolve_run_checkpoint

    return load_selected(resolve_run_checkpoint(source, tracking_uri))


@main.command()
@click.argument("checkpoint")
@click.option("--data", "folder", type=click.Path(), default=TrainConfig.data, show_default=True)
@click.option("--split", type=click.Choice(["train", "dev", "test"]), default="test", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None)
@tracking_uri_option
def evaluate(checkpoint, folder, split, limit, tracking_uri):
    """Score a checkpoint (a run folder, its best/ folder, an MLflow run id, or models:/NAME@champion) on a split."""
    from bertnli.data import LABEL_NAMES, read_split
    from bertnli.engine import evaluate as run_eval
    from bertnli.pairs import encode_split

    model, tok, meta = _load_checkpoint(checkpoint, tracking_uri)
    cfg = meta.get("config", {})
    s = read_split(folder, split, required=True)
    enc = encode_split(s, tok, cfg.get("max_len", 128), cfg.get("truncation", "longest_first"), TrainConfig.cache_dir).head(limit)
    r = run_eval(model, enc, 256, "cpu", progress=True)
    click.echo(f"{split}: accuracy {r.acc:.4f} over {len(enc)} pairs")
    for name, d in r.per_class().items():
        click.echo(f"  {name:13} precision {d['precision']:.3f} recall {d['recall']:.3f} f1 {d['f1']:.3f} support {d['support']}")
    m = r.confusion()
    click.echo("confusion (rows gold, columns predicted): " + "  ".join(LABEL_NAMES))
    for i, name in enumerate(LABEL_NAMES):
        click.echo(f"  {name:13} " + " ".join(f"{int(x):>7}" for x in m[i]))


@main.command()
@click.argument("checkpoint")
@click.argument("premise", required=False)
@click.argument("hypothesis", required=False)
@click.option("--file", "pairs_file", type=click.Path(exists=True, dir_okay=False), default=None, help="TSV (premise<TAB>hypothesis) or JSONL (sentence1, sentence2)")
@tracking_uri_option
def predict(checkpoint, premise, hypothesis, pairs_file, tracking_uri):
    """Label sentence pairs with a checkpoint (a run folder, its best/ folder, an MLflow run id, or models:/NAME@champion)."""
    from bertnli.data import LABEL_NAMES
    from bertnli.engine import predict as run_predict

    if pairs_file:
        from bertnli.data import read_pairs

        premises, hypotheses = read_pairs(pairs_file)
    elif premise and hypothesis:
        premises, hypotheses = [premise], [hypothesis]
    else:
        raise click.UsageError("give PREMISE and HYPOTHESIS, or --file")
    model, tok, meta = _load_checkpoint(checkpoint, tracking_uri)
    cfg = meta.get("config", {})
    probs = run_predict(model, tok, premises, hypotheses, cfg.get("max_len", 128), cfg.get("truncation", "longest_first"))
    for p, h, pr in zip(premises, hypotheses, probs):
        label = LABEL_NAMES[int(pr.argmax())]
        scores = " ".join(f"{n}={v:.3f}" for n, v in zip(LABEL_NAMES, pr))
        click.echo(f"{label:13} {scores}\t{p} ||| {h}")


if __name__ == "__main__":
    main()
