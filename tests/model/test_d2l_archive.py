"""d2l archives: the head count d2l does not store, and the forms an archive comes in (zip, unpacked, inner folder)."""

import json
import zipfile

import pytest
import torch
from click.testing import CliRunner
from d2l_reference import BERTModel

from bertnli import BadInput
from bertnli.config import TrainConfig
from bertnli.model.presets import build_model

WORDS = "a man woman is sitting running on the street . two dogs not".split()


def _archive(tmp_path, hidden=96, ffn=192, layers=3, heads=3, name="bert.tiny3.torch"):
    """A real d2l-format archive: d2l's own BERTModel (restated), its state_dict saved as d2l's zips hold it."""
    vocab = ["<unk>", "<pad>", "<bos>", "<eos>", "<cls>", "<sep>", "<mask>", *WORDS]
    torch.manual_seed(3)
    ref = BERTModel(len(vocab), hidden, ffn, heads, layers, 0.0, 64).eval()
    folder = tmp_path / "unpacked" / name
    folder.mkdir(parents=True)
    torch.save(ref.state_dict(), folder / "pretrained.params")
    (folder / "vocab.json").write_text(json.dumps(vocab))
    zpath = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"{name}/{f.name}")
    return folder, zpath, ref, len(vocab)


def _max_error(model, ref, vocab):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(7, vocab, (4, 12), generator=g)
    seg = torch.zeros_like(ids)
    seg[:, 6:] = 1
    lengths = torch.tensor([12, 9, 5, 12])
    model.eval()
    with torch.no_grad():
        want, got = ref.encoder(ids, seg, lengths), model.encoder(ids, seg, lengths)
    valid = torch.arange(12)[None] < lengths[:, None]
    return (got[valid] - want[valid]).abs().max().item()


def test_three_head_archive_matches_d2l_only_with_num_heads_given(tmp_path, capsys):
    folder, _, ref, vocab = _archive(tmp_path)
    model, _ = build_model(f"d2l:{folder}", dropout=0.0, num_heads=3)
    assert model.config.num_heads == 3 and model.config.num_layers == 3 and model.config.hidden_size == 96
    assert _max_error(model, ref, vocab) < 1e-5
    assert "warning" not in capsys.readouterr().err  # nothing was guessed

    guessed, _ = build_model(f"d2l:{folder}", dropout=0.0)
    assert guessed.config.num_heads == 1  # hidden/64: wrong for this archive ...
    assert _max_error(guessed, ref, vocab) > 0.05  # ... and silently wrong outputs, which is why it warns
    build_model(f"d2l:{folder}", dropout=0.0)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "guessing 1" in err[0] and "--num-heads" in err[0]  # one line, once


def test_num_heads_flows_from_config_through_prepare(tmp_path, tiny_snli):
    from bertnli.train.prepare import prepare

    folder, _, ref, vocab = _archive(tmp_path)
    cfg = TrainConfig(
        model=f"d2l:{folder}",
        num_heads=3,
        data=str(tiny_snli),
        dropout=0.0,
        max_len=32,
        cache_dir=str(tmp_path / "enc"),
    )
    assert cfg.to_flat_dict()["num_heads"] == 3
    assert _max_error(prepare(cfg).model, ref, vocab) < 1e-5
    with pytest.raises(BadInput, match="num_heads must be at least 1"):
        TrainConfig(num_heads=0)


def test_cli_has_num_heads():
    from bertnli.cli import main

    out = CliRunner().invoke(main, ["train", "--help"]).output
    assert "--num-heads" in out


@pytest.mark.slow
def test_train_cli_takes_num_heads_and_warns_only_when_it_guesses(tmp_path, tiny_snli, mlflow_uri):
    """`bertnli-exp train` as a user runs it (a process of its own, so the once-per-process warning starts fresh)."""
    import subprocess
    import sys

    from conftest import ROOT, run_env

    folder, _, _, _ = _archive(tmp_path)
    guessed = "does not store its attention head count"

    def train(out, *extra):
        cmd = [
            sys.executable,
            "-m",
            "bertnli.cli",
            "train",
            "--model",
            f"d2l:{folder}",
            *extra,
            "--epochs",
            "1",
            "--data",
            str(tiny_snli),
            "--limit-train",
            "64",
            "--max-len",
            "32",
            "--batch-size",
            "16",
            "--cache-dir",
            str(tmp_path / "enc"),
            "--out",
            str(tmp_path / out),
            "--tracking-uri",
            mlflow_uri,
            "--experiment",
            "t-heads-cli",
            "--no-progress",
            "--no-system-metrics",
        ]
        r = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads((tmp_path / out / "best" / "model_config.json").read_text()), r.stderr

    config, err = train("given", "--num-heads", "3")
    assert config["num_heads"] == 3 and config["hidden_size"] == 96 and config["num_layers"] == 3
    assert guessed not in err
    config, err = train("guessed")
    assert config["num_heads"] == 1
    warnings = [line for line in err.splitlines() if guessed in line]
    assert len(warnings) == 1 and "guessing 1" in warnings[0] and "--num-heads" in warnings[0], err[-2000:]


@pytest.mark.parametrize("form", ["zip", "outer", "inner"])
def test_every_archive_form_loads_the_same_weights(tmp_path, form):
    folder, zpath, ref, vocab = _archive(tmp_path)
    path = {"zip": zpath, "outer": folder.parent, "inner": folder}[form]
    model, tok = build_model(f"d2l:{path}", dropout=0.0, num_heads=3)
    assert tok.vocab_size == vocab and _max_error(model, ref, vocab) < 1e-5


def test_wrong_forms_are_refused_naming_the_expected_ones(tmp_path):
    folder, zpath, _, _ = _archive(tmp_path)
    (folder.parent / "bert.other").mkdir()  # two bert.* folders: which one is meant?
    empty = tmp_path / "empty"
    empty.mkdir()
    notzip = tmp_path / "weights.bin"
    notzip.write_bytes(b"not a zip")
    other_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(other_zip, "w") as zf:
        zf.writestr("readme.txt", "no weights here")
    for bad in (folder.parent, empty, notzip, tmp_path / "missing", other_zip):
        with pytest.raises(BadInput) as e:
            build_model(f"d2l:{bad}", num_heads=3)
        msg = str(e.value)
        assert "\n" not in msg and "pretrained.params and vocab.json" in msg and ".zip" in msg and "bert.*" in msg, msg
