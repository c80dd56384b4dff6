"""`bertnli-exp sweep`: an Optuna study over the engine; rerun the same command to resume it."""

from __future__ import annotations

import click

from bertnli import BertnliError
from bertnli.cli.group import handle_sigterm
from bertnli.cli.options import (
    check_model_name,
    progress_option,
    tracking_options,
    train_options,
    train_overrides,
)
from bertnli.config import TrackingConfig
from bertnli.sweep.storage import default_storage
from bertnli.tracking.store import how_to_see


@click.command()
@train_options
@tracking_options
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=None,
    help="complete-or-pruned trials the study should hold [default: 20]",
)
@click.option("--study-name", default=None, help="Optuna study (and MLflow experiment) name")
@click.option(
    "--storage",
    default=None,
    help="Optuna storage: a journal file path or an RDB URL (postgresql://...) [default: mlruns/optuna-journal.log]",
)
@click.option(
    "--space",
    multiple=True,
    help="override a search dimension: lr=1e-5:1e-3:log, epochs=1:3, model=minilm-l6|minilm-l3",
)
@click.option(
    "--timeout", type=click.FloatRange(min=1), default=None, help="stop starting trials after this many seconds"
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="trial processes at once on this host [default: one per device slot: GPUs x --trials-per-gpu; 1 on a CPU]",
)
@click.option(
    "--gpus",
    default=None,
    metavar="0,1,..",
    help="CUDA indices the trials may use, each trial process seeing only its own [default: every GPU CUDA sees]",
)
@click.option(
    "--trials-per-gpu",
    type=click.IntRange(min=1),
    default=None,
    help="trials that share one GPU at a time (small models leave most of a GPU idle) [default: 1]",
)
@click.option(
    "--gpus-per-trial",
    type=click.IntRange(min=1),
    default=None,
    help="GPUs each trial trains on, one data-parallel process per GPU (as torchrun would) [default: 1]",
)
@click.option(
    "--procs-per-trial",
    type=click.IntRange(min=1),
    default=None,
    help="data-parallel processes per trial on the CPU (gloo): the path of --gpus-per-trial on a host "
    "without a GPU [default: 1]",
)
@click.option(
    "--enqueue",
    multiple=True,
    metavar="NAME=VALUE,..",
    help="a known configuration to run first, e.g. lr=2e-5,epochs=3 (repeatable; after the TOML's "
    "[[sweep.enqueue]]; parameters it leaves out are sampled); queued once per study, however often it is resumed",
)
@click.option(
    "--warm-start",
    multiple=True,
    metavar="SOURCE",
    help="start from an earlier study's complete trials (never trained again): NAME@STORAGE, or "
    "mlflow:PARENT_RUN_ID or mlflow:EXPERIMENT; repeatable",
)
@click.option(
    "--warm-start-mode",
    type=click.Choice(["strict", "loose"]),
    default=None,
    help="strict: only trials trained with this study's other settings and data; loose: all [default: strict]",
)
@click.option("--sampler-seed", type=int, default=None, help="TPE sampler seed [default: 0]")
@click.option(
    "--sampler",
    type=click.Choice(["tpe", "random", "nsga2"]),
    default=None,
    help=(
        "tpe (with median pruning), random (i.i.d. trials, no pruning: valid for expected validation performance) "
        "or nsga2 (NSGA-II, for several --objective) [default: tpe]"
    ),
)
@click.option(
    "--objective",
    default=None,
    metavar="NAME[:max|min],..",
    help="what the study optimises: dev_acc, and any of train_seconds, params, latency_ms (batch 1), "
    "latency_ms_b256, peak_mem_mib; several make a Pareto study over accuracy and cost, trained without pruning "
    "[default: dev_acc]",
)
@click.option(
    "--constraint",
    "constraints",
    multiple=True,
    metavar="NAME<=BOUND",
    help="a limit a trial must keep to be chosen or on the front, e.g. 'peak_mem_mib<=8000' (quoted: < is the "
    "shell's; repeatable)",
)
@click.option(
    "--fidelity",
    type=click.Choice(["none", "data"]),
    default=None,
    help=(
        "data: successive halving over the training-set fraction (--trials configurations; rungs eta^-k of the data) "
        "[default: none]"
    ),
)
@click.option(
    "--eta",
    type=click.IntRange(min=2),
    default=None,
    help="multi-fidelity: keep the best 1/eta of each rung [default: 3]",
)
@click.option(
    "--min-fraction",
    type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
    default=None,
    help="multi-fidelity: a floor for the smallest rung's share of the train split; rungs are the powers of 1/eta "
    "above it (0.12 with eta 3: 1/3 and 1) [default: 1/9]",
)
@click.option(
    "--promotion",
    type=click.Choice(["sync", "async"]),
    default=None,
    help="multi-fidelity: sync starts a rung once the one below has ended; async (ASHA) promotes a configuration as "
    "soon as it ranks in the best 1/eta of its rung's finished trials, so no worker waits for the slowest "
    "[default: sync]",
)
@click.option(
    "--keep-checkpoints",
    type=click.Choice(["best", "all"]),
    default=None,
    help="keep only the best trial's checkpoint, or all",
)
@click.option(
    "--checkpoint-store",
    default=None,
    metavar="URI",
    help="where each trial's epoch checkpoints go, so that a retry on another host resumes: 'run' (the trial's MLflow "
    "run artifacts), an artifact URI (a shared folder, s3://..., gs://...), or 'none' [default: auto: run with an "
    "MLflow server, none with a local store]",
)
@click.option(
    "--trial-start",
    type=click.Choice(["fork", "exec"]),
    default=None,
    help="start each trial process forked from a server that imported torch and MLflow once (saves seconds of CPU "
    "per trial), or as a fresh interpreter [default: fork]",
)
@click.option(
    "--grace",
    "grace_s",
    type=click.FloatRange(min=1),
    default=None,
    help="seconds without heartbeat before another host's RUNNING trial is failed [default: 60]",
)
@click.option(
    "--trial-timeout",
    type=click.FloatRange(min=1),
    default=None,
    help="seconds one trial may run; a trial past it (hung) is killed and marked FAIL 'timed out' [default: none]",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="folder for trial checkpoints [default: outputs/sweeps]",
)
@click.option(
    "--register",
    "register_name",
    default=None,
    callback=check_model_name,
    help="register the study's best model in the MLflow Model Registry as NAME, alias champion",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="print what the sweep would do (space, queued cells, workers, URIs, trials done) and check that every URI "
    "answers; changes nothing",
)
@progress_option
def sweep(config_path, tracking_uri, experiment, space, register_name, sampler_seed, progress, dry_run, **options):
    """An Optuna study over the engine; rerun the same command to resume it."""
    from bertnli.sweep.pool import Sweep
    from bertnli.sweep.space import SWEEP_KEYS, check_runnable, load_sweep_config

    overrides = train_overrides(options)  # the TrainConfig options; the rest are SweepConfig fields
    sweep_overrides = {"seed": sampler_seed, **{k: v for k, v in options.items() if k in SWEEP_KEYS}}
    tracking = TrackingConfig(tracking_uri, experiment)
    cfg = load_sweep_config(config_path, overrides, sweep_overrides, list(space), tracking)
    if dry_run:
        from bertnli.sweep.dry_run import dry_run as plan

        check_runnable(cfg)
        click.echo("\n".join(plan(cfg)))
        return
    handle_sigterm()
    summary = Sweep(cfg, log=click.echo, progress=progress).run()
    print_summary(cfg, summary, tracking_uri)
    if register_name:
        register_kept(cfg, summary, register_name)
    parent = summary["parent_run_id"]
    click.echo(f"MLflow parent run {parent} with its trials: {how_to_see(tracking_uri, parent)}")
    click.echo(f"optuna-dashboard {cfg.storage or default_storage()}")


def register_kept(cfg, summary: dict, name: str) -> None:
    """The champion as `name`@champion; in a study over costs each front point too, as @pareto-1 (the champion)
    ... @pareto-k in order of accuracy."""
    from bertnli.sweep.objectives import is_multi
    from bertnli.tracking.models import register
    from bertnli.tracking.store import client

    kept = summary.get("kept")
    if not kept:
        within = " that holds the constraints" if cfg.constraints else ""
        raise BertnliError(f"no complete trial{within} to register as {name}")
    ranked = is_multi(cfg)
    run_ids = [t.user_attrs.get("mlflow_run_id", "") for t in kept]
    for k, (t, version) in enumerate(zip(kept, register(client(cfg.tracking.tracking_uri), run_ids, name, ranked)), 1):
        aliases = (["champion"] if k == 1 else []) + ([f"pareto-{k}"] if ranked else [])
        shown = ", ".join(f"models:/{name}@{a}" for a in aliases)
        click.echo(f"registered {name} version {version} (trial {t.number}) as {shown}")


def print_summary(cfg, summary: dict, tracking_uri: str | None) -> None:
    """Trials done, the rung table of a multi-fidelity study, the front of a study over costs, the best trial
    (the champion) with its test figure."""
    from bertnli.analysis.pareto import parse_constraint
    from bertnli.sweep.objectives import describe, objectives_of

    done = f"{summary['done']}/{summary['target']}"
    click.echo(f"study {cfg.study_name}: {done} trials complete or pruned in {summary['wall_seconds']:.0f} s")
    if summary.get("rungs") is not None:
        click.echo(summary["rungs"].to_string(index=False))
    front = summary.get("front")
    if front is not None and len(front):
        limits = [parse_constraint(c).name for c in cfg.constraints]
        shown = ["number", *(o.name for o in objectives_of(cfg)), *limits, "feasible", "pareto"]
        columns = [c for c in dict.fromkeys(shown) if c in front]
        click.echo(f"complete trials on {describe(cfg)} (pareto: on the front; feasible: within the constraints):")
        click.echo(front.sort_values(["pareto", "dev_acc"], ascending=False)[columns].to_string(index=False))
    best = summary.get("best")
    if best is not None:
        test = best.user_attrs.get("test_acc")
        params = " ".join(f"{k}={v}" for k, v in best.params.items())
        click.echo(
            f"best trial {best.number}: dev_acc {best.values[0]:.4f}"
            + (f", test_acc {test:.4f}" if test is not None else "")
            + f" {params}"
        )
