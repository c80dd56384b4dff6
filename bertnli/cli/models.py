"""`bertnli-exp models`: the presets and where their weights are."""

from __future__ import annotations

import click


@click.command()
def models():
    """The model presets and where their weights are."""
    from bertnli.model.presets import PRESETS, preset_location

    for p in PRESETS.values():
        click.echo(f"{p.name:16} {p.description}\n{'':16} weights: {preset_location(p.name)}")
    click.echo(
        f"{'hf:<folder>':16} any Hugging Face BERT folder (config.json, model.safetensors or pytorch_model.bin, "
        "vocab.txt)"
    )
    click.echo(
        f"{'d2l:<path>':16} a d2l BERT archive: its .zip, the folder it unpacks into, or the bert.* folder "
        "(pretrained.params, vocab.json); give --num-heads, d2l does not store it"
    )
