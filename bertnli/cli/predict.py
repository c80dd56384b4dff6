"""`bertnli-exp evaluate` and `predict`: score a checkpoint on a split, or label sentence pairs."""

from __future__ import annotations

from pathlib import Path

import click

from bertnli.cli.options import progress_option, tracking_uri_option
from bertnli.config import TrainConfig


def _load_checkpoint(source: str, tracking_uri: str | None):
    from bertnli.train.checkpoint import load_selected

    path = Path(source)
    if path.is_dir():
        if (path / "best").is_dir() and not (path / "model.safetensors").exists():
            path = path / "best"
        return load_selected(path)
    from bertnli.tracking.models import resolve_run_checkpoint

    return load_selected(resolve_run_checkpoint(source, tracking_uri))


@click.command()
@click.argument("checkpoint")
@click.option("--data", "folder", type=click.Path(), default=TrainConfig.data, show_default=True)
@click.option("--split", type=click.Choice(["train", "dev", "test"]), default="test", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=TrainConfig.cache_dir,
    show_default=True,
    help="encoded splits are cached here, as `train --cache-dir`",
)
@tracking_uri_option
@progress_option
def evaluate(checkpoint, folder, split, limit, cache_dir, tracking_uri, progress):
    """Score a checkpoint (a run folder, its best/ folder, an MLflow run id, or models:/NAME@champion) on a split."""
    from bertnli.data.cache import encode_split
    from bertnli.data.snli import LABEL_NAMES, read_split
    from bertnli.train.evaluation import evaluate as run_eval

    model, tok, meta = _load_checkpoint(checkpoint, tracking_uri)
    cfg = meta.get("config", {})
    s = read_split(folder, split, required=True)
    enc = encode_split(s, tok, cfg.get("max_len", 128), cfg.get("truncation", "longest_first"), cache_dir).head(limit)
    r = run_eval(model, enc, 256, "cpu", progress=progress)
    click.echo(f"{split}: accuracy {r.acc:.4f} over {len(enc)} pairs")
    for name, d in r.per_class().items():
        click.echo(
            f"  {name:13} precision {d['precision']:.3f} recall {d['recall']:.3f} f1 {d['f1']:.3f} support "
            f"{d['support']}"
        )
    m = r.confusion()
    click.echo("confusion (rows gold, columns predicted): " + "  ".join(LABEL_NAMES))
    for i, name in enumerate(LABEL_NAMES):
        click.echo(f"  {name:13} " + " ".join(f"{int(x):>7}" for x in m[i]))


@click.command()
@click.argument("checkpoint")
@click.argument("premise", required=False)
@click.argument("hypothesis", required=False)
@click.option(
    "--file",
    "pairs_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="TSV (premise<TAB>hypothesis) or JSONL (sentence1, sentence2)",
)
@tracking_uri_option
def predict(checkpoint, premise, hypothesis, pairs_file, tracking_uri):
    """Label sentence pairs with a checkpoint (a run folder, its best/ folder, an MLflow run id, or
    models:/NAME@champion).
    """
    from bertnli.data.snli import LABEL_NAMES
    from bertnli.train.evaluation import predict as run_predict

    if pairs_file:
        from bertnli.data.pair_files import read_pairs

        premises, hypotheses = read_pairs(pairs_file)
    elif premise and hypothesis:
        premises, hypotheses = [premise], [hypothesis]
    else:
        raise click.UsageError("give PREMISE and HYPOTHESIS, or --file")
    model, tok, meta = _load_checkpoint(checkpoint, tracking_uri)
    cfg = meta.get("config", {})
    probs = run_predict(
        model, tok, premises, hypotheses, cfg.get("max_len", 128), cfg.get("truncation", "longest_first")
    )
    for p, h, pr in zip(premises, hypotheses, probs):
        label = LABEL_NAMES[int(pr.argmax())]
        scores = " ".join(f"{n}={v:.3f}" for n, v in zip(LABEL_NAMES, pr))
        click.echo(f"{label:13} {scores}\t{p} ||| {h}")
