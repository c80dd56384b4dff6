"""`bertnli-exp sweep`: an Optuna study over the engine; rerun the same command to resume it."""

from __future__ import annotations

import click

from bertnli import BertnliError
from bertnli.cli.group import handle_sigterm
from bertnli.cli.options import check_model_name, tracking_options, train_options, train_overrides, ui_uri
from bertnli.config import TrackingConfig


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
    "--workers", type=click.IntRange(min=1), default=None, help="trial processes at once on this host [default: 1]"
)
@click.option("--sampler-seed", type=int, default=None, help="TPE sampler seed [default: 0]")
@click.option(
    "--sampler",
    type=click.Choice(["tpe", "random"]),
    default=None,
    help=(
        "tpe (with median pruning) or random (i.i.d. trials, no pruning: valid for expected validation performance) "
        "[default: tpe]"
    ),
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
    "--keep-checkpoints",
    type=click.Choice(["best", "all"]),
    default=None,
    help="keep only the best trial's checkpoint, or all",
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
def sweep(
    config_path,
    tracking_uri,
    experiment,
    trials,
    study_name,
    storage,
    space,
    timeout,
    workers,
    sampler_seed,
    sampler,
    fidelity,
    eta,
    min_fraction,
    keep_checkpoints,
    grace_s,
    trial_timeout,
    out_dir,
    register_name,
    **kwargs,
):
    """An Optuna study over the engine; rerun the same command to resume it."""
    from bertnli.sweep.pool import Sweep
    from bertnli.sweep.space import load_sweep_config
    from bertnli.sweep.storage import default_storage

    overrides = train_overrides(kwargs)
    sweep_overrides = {
        "trials": trials,
        "study_name": study_name,
        "storage": storage,
        "timeout": timeout,
        "workers": workers,
        "seed": sampler_seed,
        "sampler": sampler,
        "keep_checkpoints": keep_checkpoints,
        "grace_s": grace_s,
        "out_dir": out_dir,
        "trial_timeout": trial_timeout,
        "fidelity": fidelity,
        "eta": eta,
        "min_fraction": min_fraction,
    }
    cfg = load_sweep_config(
        config_path, overrides, sweep_overrides, list(space), TrackingConfig(tracking_uri, experiment)
    )
    handle_sigterm()
    summary = Sweep(cfg, log=click.echo).run()
    best = summary.get("best")
    click.echo(
        f"study {cfg.study_name}: {summary['done']}/{summary['target']} trials complete or pruned in "
        f"{summary['wall_seconds']:.0f} s"
    )
    if summary.get("rungs") is not None:
        click.echo(summary["rungs"].to_string(index=False))
    if best is not None:
        test = best.user_attrs.get("test_acc")
        click.echo(
            f"best trial {best.number}: dev_acc {best.value:.4f}"
            + (f", test_acc {test:.4f}" if test is not None else "")
            + " "
            + " ".join(f"{k}={v}" for k, v in best.params.items())
        )
    if register_name and best is not None:
        from bertnli.tracking.models import register_champion

        version = register_champion(best.user_attrs.get("mlflow_run_id", ""), register_name, cfg.tracking.tracking_uri)
        click.echo(
            f"registered {register_name} version {version} (trial {best.number}) as models:/{register_name}@champion"
        )
    elif register_name:
        raise BertnliError(f"no complete trial to register as {register_name}")
    click.echo(f"MLflow parent run {summary['parent_run_id']}: mlflow ui --backend-store-uri {ui_uri(tracking_uri)}")
    click.echo(f"optuna-dashboard {cfg.storage or default_storage()}")
