"""`bertnli-exp data download` and `data info`: get SNLI and look at it."""

from __future__ import annotations

import click

from bertnli import BadInput
from bertnli.cli.options import progress_option
from bertnli.config import TrainConfig


@click.group()
def data():
    """Get SNLI and look at it."""


@data.command("download")
@click.option("--dest", type=click.Path(file_okay=False), default="data", show_default=True)
@click.option("--mirror", default=None, help="another URL serving snli_1.0.zip (same sha1)")
@click.option("--source", type=click.Path(exists=True), default=None, help="a local snli_1.0.zip or unpacked folder")
@progress_option
def data_download(dest, mirror, source, progress):
    """Fetch SNLI 1.0 (sha1 checked, resumable) and unpack it safely."""
    from bertnli.data.snli import SNLI_URL, fetch_snli

    folder = fetch_snli(dest, url=mirror or SNLI_URL, source=source, progress=progress)
    click.echo(f"SNLI ready in {folder}; train with --data {folder}")


@data.command("info")
@click.option("--data", "folder", type=click.Path(), default=TrainConfig.data, show_default=True)
def data_info(folder):
    """Split sizes, label balance and length percentiles (d2l words per pair)."""
    from bertnli.data.snli import SPLITS, read_split, split_summary

    found = False
    for name in SPLITS:
        split = read_split(folder, name, required=False)
        if split is None:
            click.echo(f"{name:5}  missing (no snli_1.0_{name}.* in {folder})")
            continue
        found = True
        s = split_summary(split)
        click.echo(
            f"{name:5}  {s['pairs']:>7,} pairs ({s['dropped_no_gold']} without gold label dropped)  "
            f"entailment {s['entailment_frac']:.3f} contradiction {s['contradiction_frac']:.3f} neutral "
            f"{s['neutral_frac']:.3f}  "
            f"words/pair p50 {s['len_p50']} p90 {s['len_p90']} p99 {s['len_p99']} max {s['len_p100']}"
        )
    if not found:
        raise BadInput(f"no SNLI split in {folder}; give --data a folder with snli_1.0_*.jsonl[.gz]")
