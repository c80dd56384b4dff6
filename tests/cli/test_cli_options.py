"""Every option and argument of every command, given a wrong type or an impossible value:
one line on stderr that names it, exit status 2, nothing else run.

The cases are generated from the click command tree, so a new option is covered the day it is
added; a new free-text option fails `test_every_text_option_is_classified` until someone says
what an impossible value for it is (or that any text is valid).
"""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from bertnli.cli import main

# What an impossible value is for options whose type the parser cannot check (command, param name).
IMPOSSIBLE_TEXT = {
    ("train", "model"): ("bert-huge", "unknown model 'bert-huge'"),
    ("train", "device"): ("tpu", "device 'tpu'"),
    ("train", "config_path"): ("/nope.toml", "config file /nope.toml not found"),
    ("train", "resume_dir"): ("/no-such-run", "/no-such-run has no config.json"),
    ("train", "tracking_uri"): ("bogus://x", "is not an MLflow tracking URI"),
    ("sweep", "model"): ("bert-huge", "unknown model 'bert-huge'"),
    ("sweep", "device"): ("tpu", "device 'tpu'"),
    ("sweep", "config_path"): ("/nope.toml", "config file /nope.toml not found"),
    ("sweep", "tracking_uri"): ("bogus://x", "is not an MLflow tracking URI"),
    ("sweep", "storage"): ("bogus://x", "is not a usable database URL"),
    ("sweep", "checkpoint_store"): ("bogus://x", "--checkpoint-store bogus://x is no artifact store MLflow knows"),
    ("sweep", "space"): ("lr=abc", "bad sweep space for lr"),
    ("sweep", "gpus"): ("99", "--gpus 99: CUDA on this host sees"),
    ("sweep", "enqueue"): ("nosuch=1", "--enqueue nosuch=1: nosuch is not in the sweep space"),
    ("sweep", "warm_start"): ("nosuch", "--warm-start nosuch: write NAME@STORAGE"),
    ("sweep", "objective"): ("dev_acc,beauty", "bad --objective 'beauty': 'beauty' is not measured; choose from"),
    ("sweep", "constraints"): ("gpu_watts<=300", "bad --constraint 'gpu_watts<=300': 'gpu_watts' is not measured"),
    ("reproduce", "name"): ("no-such-experiment", "config file experiments/no-such-experiment.toml not found"),
    ("reproduce", "tracking_uri"): ("bogus://x", "is not an MLflow tracking URI"),
    ("report", "experiments"): ("no-such-experiment", "no MLflow experiment no-such-experiment"),
    ("report", "study"): ("no-such-study", "no runs match"),
    ("report", "parent_run"): ("0" * 32, "no runs match"),
    ("report", "tags"): ("no-equals-sign", "is not KEY=VALUE"),
    ("report", "tracking_uri"): ("bogus://x", "is not an MLflow tracking URI"),
    ("data download", "mirror"): ("not-a-url", "'not-a-url' is not an http(s) URL"),
    ("evaluate", "checkpoint"): ("/no-such-run-folder", "no MLflow run /no-such-run-folder"),
    ("evaluate", "tracking_uri"): ("bogus://x", "is not an MLflow tracking URI"),
    ("predict", "checkpoint"): ("/no-such-run-folder", "no MLflow run /no-such-run-folder"),
    ("predict", "tracking_uri"): ("bogus://x", "is not an MLflow tracking URI"),
    ("report", "cell_by"): ("no_such_param", "no_such_param: not a run param"),
    ("report", "replay"): ("no-such-study", "no finished or pruned trials of study 'no-such-study'"),
    ("train", "seeds"): ("0,x", "is not a list of integers"),
    ("compare", "a"): ("no-such-run", "no MLflow run no-such-run"),
    ("compare", "b"): ("no-such-run", "no MLflow run"),
    ("compare", "cells"): ("no-equals-sign", "is not key=value"),
    ("compare", "experiments"): ("no-such-experiment", "no MLflow experiment no-such-experiment"),
    ("compare", "tracking_uri"): ("bogus://x", "is not an MLflow tracking URI"),
    ("sweep", "register_name"): ("a/b", "is not a registered-model name"),
}
# Text where every value is valid: names and free sentences.
ANY_TEXT = {
    ("train", "experiment"),
    ("train", "run_name"),
    ("sweep", "experiment"),
    ("sweep", "study_name"),
    ("reproduce", "experiment"),
    ("predict", "premise"),
    ("predict", "hypothesis"),
}


def commands(group: click.Group = main, prefix: str = ""):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from commands(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


def is_text(p: click.Parameter) -> bool:
    return isinstance(p.type, click.types.StringParamType)


def bad_values(p: click.Parameter, a_file: str, a_dir: str):
    """(value, what the message must say) for every way the parser can refuse this option."""
    t = p.type
    if isinstance(t, (click.types.IntParamType, click.types.FloatParamType)):
        yield "abc", "abc"
        if isinstance(t, click.types._NumberRangeBase) and t.min is not None:
            yield str(t.min - 1), "range"
        if isinstance(t, click.types._NumberRangeBase) and t.max is not None:
            yield str(t.max + 1), "range"
    elif isinstance(t, click.Choice):
        yield "no-such-choice", "is not one of"
    elif isinstance(t, click.Path):
        if t.exists:
            yield "/no/such/path", "does not exist"
        if not t.file_okay:
            yield a_file, "is a file"
        if not t.dir_okay:
            yield a_dir, "is a directory"


def wrong_value_cases():
    cases = []
    for cmd_name, cmd in commands():
        for p in cmd.params:
            if isinstance(p, click.Option) and (p.is_flag or p.is_bool_flag):
                continue  # --x/--no-x takes no value
            for value, needle in bad_values(p, "A_FILE", "A_DIR"):
                cases.append(pytest.param(cmd_name, p.name, value, needle, id=f"{cmd_name}:{p.name}={value}"))
            if is_text(p) and (cmd_name, p.name) in IMPOSSIBLE_TEXT:
                value, needle = IMPOSSIBLE_TEXT[(cmd_name, p.name)]
                cases.append(pytest.param(cmd_name, p.name, value, needle, id=f"{cmd_name}:{p.name}={value}"))
    return cases


def test_every_text_option_is_classified():
    unclassified = [
        (c, p.name)
        for c, cmd in commands()
        for p in cmd.params
        if is_text(p) and (c, p.name) not in IMPOSSIBLE_TEXT and (c, p.name) not in ANY_TEXT
    ]
    assert not unclassified, (
        f"say what an impossible value is for {unclassified} (IMPOSSIBLE_TEXT) or that any text is valid (ANY_TEXT)"
    )
    stale = [k for k in IMPOSSIBLE_TEXT if k not in {(c, p.name) for c, cmd in commands() for p in cmd.params}]
    assert not stale, f"IMPOSSIBLE_TEXT names options that no longer exist: {stale}"


@pytest.fixture(scope="module")
def checkpoint(tiny_snli, tmp_path_factory):
    """A real (tiny) trained run folder, so evaluate/predict get past CHECKPOINT to their options."""
    from bertnli.config import TrainConfig
    from bertnli.train.fit import fit

    out = tmp_path_factory.mktemp("ckpt") / "run"
    fit(
        TrainConfig(
            model="tiny-d2l-random",
            data=str(tiny_snli),
            epochs=1,
            max_len=32,
            batch_size=32,
            eval_test=False,
            cache_dir=str(out.parent / "enc"),
        ),
        out,
        progress=False,
    )
    return out


def invocation(cmd_name: str, param: click.Parameter, value: str, valid: dict[str, str]) -> list[str]:
    """A command line that is valid except for `param`, which gets `value`."""
    base = {
        "train": ["--data", valid["data"], "--model", "tiny-d2l-random", "--out", valid["out"], "--no-progress"],
        "sweep": [
            "--data",
            valid["data"],
            "--model",
            "tiny-d2l-random",
            "--trials",
            "1",
            "--storage",
            valid["journal"],
            "--out",
            valid["out"],
        ],
        "reproduce": ["quick_cpu"],
        "report": ["--out", valid["out"]],
        "compare": ["0" * 32, "1" * 32],
        "evaluate": [valid["checkpoint"], "--data", valid["data"]],
        "predict": [valid["checkpoint"], "a man", "a woman"],
        "data download": ["--dest", valid["out"]],
        "data info": [],
        "models": [],
    }[cmd_name]
    args = cmd_name.split() + base
    if isinstance(param, click.Argument):
        positional = [a for a in base if not a.startswith("--")]
        i = [p.name for p in main.commands[cmd_name].params if isinstance(p, click.Argument)].index(param.name)
        args[args.index(positional[i])] = value
        return args
    return args + [param.opts[0], value]  # given last, it wins over the base's value


@pytest.mark.parametrize("cmd_name,param_name,value,needle", wrong_value_cases())
def test_wrong_value_is_one_line_and_exit_2(
    cmd_name, param_name, value, needle, tiny_snli, checkpoint, tmp_path, monkeypatch, new_store
):
    monkeypatch.chdir(tmp_path)  # nothing a case writes lands in the repo
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tmp_path / "mlflow.db"))
    a_file, a_dir = tmp_path / "a-file", tmp_path / "a-dir"
    a_file.write_text("x")
    a_dir.mkdir()
    value = {"A_FILE": str(a_file), "A_DIR": str(a_dir)}.get(value, value)
    group = main
    for word in cmd_name.split()[:-1]:
        group = group.commands[word]
    param = next(p for p in group.commands[cmd_name.split()[-1]].params if p.name == param_name)
    valid = {
        "data": str(tiny_snli),
        "out": str(tmp_path / "out"),
        "journal": str(tmp_path / "journal.log"),
        "checkpoint": str(checkpoint),
    }
    if cmd_name == "reproduce" and param_name != "name":
        (tmp_path / "experiments").mkdir()
        (tmp_path / "experiments" / "quick_cpu.toml").write_text(
            f'[train]\nmodel = "tiny-d2l-random"\ndata = "{tiny_snli}"\n'
        )
    r = CliRunner().invoke(
        main, invocation(cmd_name, param, value, valid), prog_name="bertnli-exp", catch_exceptions=False
    )
    err = r.stderr.strip()
    assert r.exit_code == 2, (r.exit_code, err[-2000:], r.stdout[-500:])
    assert err.count("\n") == 0 and err.startswith("bertnli-exp"), err
    assert needle in err, err
    if isinstance(param, click.Option) and needle in (
        "abc",
        "range",
        "is not one of",
        "does not exist",
        "is a file",
        "is a directory",
    ):
        assert param.opts[0] in err, err  # the message names the option
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.pt")), (
        "a refused command trained anyway"
    )
