"""Every long-running command takes --no-progress, and with it writes no progress bar."""

import pytest
from click.testing import CliRunner
from conftest import make_rows, write_jsonl_gz

from bertnli.cli import main
from bertnli.model.presets import build_model
from bertnli.train.checkpoint import save_selected

LONG_RUNNING = [["train"], ["sweep"], ["reproduce"], ["evaluate"], ["data", "download"]]


@pytest.mark.parametrize("command", LONG_RUNNING, ids=" ".join)
def test_long_running_commands_take_no_progress(command):
    r = CliRunner().invoke(main, [*command, "--help"])
    assert r.exit_code == 0 and "--no-progress" in r.output


def test_evaluate_without_progress_writes_no_bar(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the encoding cache goes under the working directory
    model, tok = build_model("tiny-d2l-random")
    save_selected(model, tok, tmp_path / "best", {"epoch": 1, "config": {"max_len": 32}})
    (tmp_path / "data").mkdir()
    write_jsonl_gz(tmp_path / "data" / "snli_1.0_dev.jsonl.gz", make_rows(600))
    args = ["evaluate", str(tmp_path / "best"), "--data", str(tmp_path / "data"), "--split", "dev"]
    quiet = CliRunner().invoke(main, [*args, "--no-progress"])
    assert quiet.exit_code == 0 and "dev: accuracy" in quiet.stdout
    assert quiet.stderr == ""
    shown = CliRunner().invoke(main, [*args, "--progress"])
    assert shown.exit_code == 0 and "it/s" in shown.stderr  # tqdm's bar
