"""`bertnli-exp report` and `compare`: what recorded runs say, as tables, plots and paired tests."""

from __future__ import annotations

from pathlib import Path

import click

from bertnli import BadInput
from bertnli.cli.options import tracking_uri_option


def _check_cell_by(value: str) -> list[str]:
    from bertnli.tracking.query import PARAMS

    keys = [k.strip() for k in value.split(",") if k.strip()]
    unknown = [k for k in keys if k not in PARAMS]
    if unknown or not keys:
        raise click.BadParameter(f"{','.join(unknown) or repr(value)}: not a run param; use some of {','.join(PARAMS)}")
    return keys


def _echo_tables(runs, extra: dict, replay: str | None, tracking_uri: str | None):
    """The report's tables on the console; returns the fidelity audit (write_report reuses it)."""
    import pandas as pd

    from bertnli.analysis.pareto import study_fronts
    from bertnli.analysis.report import (
        audit_note,
        fidelity_audit,
        format_table,
        grouped,
        leaderboard,
        top_rung,
        truncation_effect,
        truncation_effect_note,
    )

    with pd.option_context("display.width", 250, "display.max_columns", 20):
        comparable = top_rung(runs)  # a multi-fidelity study's lower rungs trained on less data: audited below
        click.echo("leaderboard (by dev accuracy):")
        click.echo(format_table(leaderboard(comparable, 10).drop(columns=["run_id"])).to_string(index=False))
        click.echo("\nby model x truncation:")
        click.echo(format_table(grouped(comparable)).to_string(index=False))
        eff = truncation_effect(comparable)
        if not eff.empty:
            click.echo("\ntruncation effect (ratio - longest_first, dev accuracy, paired runs only):")
            click.echo(format_table(eff).to_string(index=False))
        unpaired = truncation_effect_note(comparable, eff)
        if unpaired:
            click.echo("\n" + unpaired)
        audit = fidelity_audit(runs)
        if not audit.empty:
            click.echo("\nmulti-fidelity audit (each rung's ranking vs the final one):")
            click.echo(format_table(audit.drop(columns=["parent_run_id"])).to_string(index=False))
            if audit_note(audit):
                click.echo(audit_note(audit).strip())
        for name, table in extra.items():
            click.echo(f"\n{name.replace('_', ' ')} (study {replay}):")
            click.echo(format_table(table).to_string(index=False))
        fronts = study_fronts(comparable, tracking_uri)
        for study, table in fronts.groupby("study") if not fronts.empty else ():
            on = table[table["pareto"]].drop(columns=["study", "run_id", "objectives", "feasible", "pareto"])
            click.echo(f"\nPareto front of study {study} ({table['objectives'].iloc[0]}; {len(table)} trials):")
            click.echo(format_table(on).to_string(index=False))
    return audit


@click.command()
@click.option("--experiment", "experiments", multiple=True, help="MLflow experiment(s) [default: all]")
@click.option("--study", default=None, help="only the trials of this Optuna study")
@click.option("--parent-run", default=None, help="only the children of this parent run")
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE filter on run tags")
@click.option(
    "--cell-by",
    default="model,truncation",
    show_default=True,
    callback=lambda ctx, param, value: _check_cell_by(value),
    help="run params that define a cell (runs in a cell differ by seed, or by the other params)",
)
@click.option(
    "--replay-pruners",
    "replay",
    default=None,
    metavar="STUDY",
    help="replay MedianPruner, SuccessiveHalving and Hyperband over this study's recorded dev curves",
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="reports", show_default=True)
@click.option(
    "--format", "formats", type=click.Choice(["md", "csv", "html"]), multiple=True, help="[default: all three]"
)
@tracking_uri_option
def report(experiments, study, parent_run, tags, cell_by, replay, out_dir, formats, tracking_uri):
    """Tables and plots from recorded runs: leaderboard, cells with CIs over seeds, pairwise tests, expected
    validation performance, and (with --replay-pruners) what other pruners would have done."""
    from bertnli.analysis.report import write_report
    from bertnli.tracking.query import load_runs

    tag_filter = {}
    for t in tags:
        if "=" not in t:
            raise click.BadParameter(
                f"{t!r} is not KEY=VALUE (e.g. --tag bertnli.truncation=ratio)", param_hint="--tag"
            )
        k, v = t.split("=", 1)
        tag_filter[k] = v
    keys = cell_by
    extra = {}
    if replay:
        from bertnli.sweep.replay import replay_study

        extra = replay_study(replay, tracking_uri)
    runs = load_runs(list(experiments) or None, tracking_uri, study or replay, parent_run, tag_filter)
    if runs.empty:
        raise BadInput(
            "no runs match; check --experiment/--study/--tracking-uri (bertnli-exp train records into 'bertnli')"
        )
    _say_what_was_imported(experiments, tracking_uri, study or replay)
    audit = _echo_tables(runs, extra, replay, tracking_uri)
    files = write_report(
        runs, out_dir, tuple(formats) or ("md", "csv", "html"), tracking_uri, tuple(keys), extra, audit
    )
    click.echo(f"\nwrote {len(files)} files to {Path(out_dir)} (open {Path(out_dir) / 'report.html'})")


def _say_what_was_imported(experiments, tracking_uri, study: str | None) -> None:
    """A warm-started study's imported trials have no runs here: every table, the EVP and the pruner replay
    read this study's own runs only, and the reader should know."""
    from bertnli.tracking.query import experiment_ids, run_filter
    from bertnli.tracking.store import client

    if not study:
        return
    c = client(tracking_uri)
    mine = run_filter(None, None, {"bertnli.study": study, "bertnli.role": "sweep-parent"})
    parents = c.search_runs(list(experiment_ids(c, list(experiments) or None)), mine, max_results=100)
    sources = sorted({r.data.tags["bertnli.warm_start"] for r in parents if "bertnli.warm_start" in r.data.tags})
    if sources:
        click.echo(
            f"study {study} was warm-started from {'; '.join(sources)}: the trials it imported were trained in "
            "their own study, so these tables, the EVP and the pruner replay leave them out"
        )


def _check_cell(ctx, param, value):
    from bertnli.analysis.compare import parse_cell

    for spec in value:
        try:
            parse_cell(spec)
        except BadInput as e:
            raise click.BadParameter(str(e).removeprefix(f"--cell {spec!r}: ")) from None
    return value


@click.command()
@click.argument("a", required=False)
@click.argument("b", required=False)
@click.option(
    "--cell",
    "cells",
    multiple=True,
    callback=_check_cell,
    help="a group of runs by params, across seeds: model=minilm-l6,truncation=ratio (give two)",
)
@click.option(
    "--experiment", "experiments", multiple=True, help="where to look for --cell runs [default: all experiments]"
)
@click.option("--boot", type=click.IntRange(min=200), default=10_000, show_default=True, help="bootstrap resamples")
@tracking_uri_option
def compare(a, b, cells, experiments, boot, tracking_uri):
    """Is A better than B? Paired over the same examples (and runs): delta, 95 % bootstrap CI, p and its test.

    A and B are MLflow run ids; or give two --cell groups instead (each across its seeds).
    """
    from bertnli.analysis.compare import cell_runs, compare_runs, describe, parse_cell
    from bertnli.analysis.pareto import cost_lines
    from bertnli.tracking.query import load_runs

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
    for line in cost_lines(sides[0], sides[1], table, names[0], names[1], tracking_uri):
        click.echo(line)
    if "test" not in set(table["split"]):
        click.echo("test: not compared (a side has no final test predictions)")
