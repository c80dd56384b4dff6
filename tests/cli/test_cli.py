"""`bertnli-exp` as a user runs it: a real process, real files, one-line errors."""

import subprocess
import sys

import pytest
from conftest import ROOT, run_env
from tiny_runs import cli

pytestmark = pytest.mark.slow  # every test here runs `bertnli-exp` as a process of its own


@pytest.fixture(scope="module")
def trained(tiny_snli, tmp_path_factory, mlflow_uri):
    tmp = tmp_path_factory.mktemp("cli")
    toml = tmp / "exp.toml"
    toml.write_text(
        f'[train]\nmodel = "tiny-d2l-random"\ndata = "{tiny_snli}"\nepochs = 5\nlr = 0.5\n'
        f'max_len = 32\nbatch_size = 16\ncache_dir = "{tmp / "enc"}"\n'
    )
    r = cli(
        "train",
        "--config",
        toml,
        "--lr",
        "2e-3",
        "--seed",
        "0",
        "--optimizer",
        "adam",
        "--schedule",
        "constant",
        "--out",
        tmp / "run",
        "--tracking-uri",
        mlflow_uri,
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "run", r.stdout


def test_train_prints_result_and_options_override_the_file(trained):
    import json

    run, out = trained
    assert "best dev_acc" in out and "mlflow ui --backend-store-uri" in out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["lr"] == 2e-3 and cfg["epochs"] == 5 and cfg["model"] == "tiny-d2l-random"  # option beat the file's 0.5


def test_predict_and_evaluate_from_the_checkpoint(trained, tiny_snli, tmp_path):
    run, _ = trained
    r = cli("predict", run, "A man is sitting on the street.", "A man is not sitting on the street.")
    assert r.returncode == 0, r.stderr
    label, *scores = r.stdout.split("\t")[0].split()
    assert label in ("entailment", "contradiction", "neutral")
    probs = [float(s.split("=")[1]) for s in scores]
    assert sum(probs) == pytest.approx(1.0, abs=2e-3)
    r = cli("evaluate", run, "--data", tiny_snli, "--split", "dev", cwd=tmp_path)  # its encoding cache there
    assert r.returncode == 0 and "dev: accuracy" in r.stdout and "confusion" in r.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--lr", "abc"], "'abc' is not a valid float"),
        (["train", "--truncation", "middle"], "'middle' is not one of"),
        (["train", "--epochs", "0"], "0 is not in the range x>=1"),
        (["train", "--batch-size", "-3"], "range"),
        (["train", "--frobnicate"], "No such option"),
        (["train", "--seed", "-1"], "range"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(args, needle):
    r = cli(*args)
    assert r.returncode == 2
    assert needle in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--data", "/nonexistent", "--model", "tiny-d2l-random"], "data folder /nonexistent not found"),
        (
            ["train", "--data", "/nonexistent", "--model", "tiny-d2l-random", "--seeds", "0,1"],
            "data folder /nonexistent",
        ),
        (["train", "--data", ".", "--model", "tiny-d2l-random"], "no train split in ."),
        (["train", "--model", "hf:."], ". has no config.json"),
        (
            ["train", "--model", "tiny-d2l-random", "--max-len", "1000"],
            "max_len 1000 exceeds the model's 512 positions",
        ),
        (["sweep", "--data", "/nonexistent", "--model", "tiny-d2l-random"], "data folder /nonexistent not found"),
        (["sweep", "--data", ".", "--model", "tiny-d2l-random"], "no train split in ."),
        (["train", "--config", "/nope.toml"], "config file /nope.toml not found"),
        (["train", "--model", "bert-huge"], "unknown model 'bert-huge'"),
        (["train", "--lr", "-1"], "-1.0 is not in the range x>0"),
        (["predict", "/nonexistent-run-folder", "a", "b"], "no MLflow run"),
    ],
)
def test_bad_values_are_one_line_errors(args, needle, tmp_path):
    """And leave nothing behind: no failed MLflow run, no empty output folder (a mistyped --data made both)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = cli(*args, cwd=tmp_path, MLFLOW_TRACKING_URI=uri)
    assert r.returncode == 2 and needle in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlruns").exists()
    if (tmp_path / "mlflow.db").exists():
        runs = MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()])
        assert not runs, [r.data.tags.get("bertnli.error") for r in runs]


def test_models_and_data_info(tiny_snli):
    r = cli("models")
    assert r.returncode == 0 and "d2l-bert-base" in r.stdout and "minilm-l3" in r.stdout
    r = cli("data", "info", "--data", tiny_snli)
    assert r.returncode == 0 and "train" in r.stdout and "pairs" in r.stdout


def test_reproduce_ends_with_a_verdict(tiny_snli, tmp_path, mlflow_uri):
    toml = tmp_path / "mini.toml"
    toml.write_text(
        f'[train]\nmodel = "tiny-d2l-random"\ndata = "{tiny_snli}"\nepochs = 2\nlr = 2e-3\noptimizer = "adam"\n'
        f'max_len = 32\nbatch_size = 16\ncache_dir = "{tmp_path / "enc"}"\n\n[expect]\nmetric = "best_dev_acc"\ntarget '
        "= 0.2\n"
    )
    r = cli("reproduce", toml, "--tracking-uri", mlflow_uri, "--no-progress", cwd=tmp_path)  # its outputs/ there
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "outputs" / "mini" / "run" / "best").is_dir()
    verdict = r.stdout.strip().splitlines()[-1]
    assert verdict.startswith("verdict: mini: target best_dev_acc >= 0.2000, measured ") and "PASS; run " in verdict
    toml.write_text(toml.read_text().replace("target = 0.2", "target = 0.99"))
    r = cli("reproduce", toml, "--tracking-uri", mlflow_uri, "--no-progress", cwd=tmp_path)
    assert r.returncode == 1 and ": FAIL; run " in r.stdout


def test_reproduce_says_when_it_needs_a_gpu_and_offers_the_reduced_variant():
    r = cli("reproduce", "bert_base_086")
    assert r.returncode == 2 and "needs the official SNLI train split" in r.stderr and "reproduce quick_cpu" in r.stderr


def test_report_command_writes_tables(trained, tmp_path, mlflow_uri):
    r = cli("report", "--tracking-uri", mlflow_uri, "--out", tmp_path / "rep", "--format", "md")
    assert r.returncode == 0, r.stderr
    assert "by model x truncation" in r.stdout and (tmp_path / "rep" / "report.md").is_file()
    assert not (tmp_path / "rep" / "report.html").exists()


def test_predict_from_the_mlflow_run_id(trained, mlflow_uri, tmp_path):
    import re

    run, out = trained
    run_id = re.search(r"^run ([0-9a-f]{32});", out, re.M).group(1)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("A man is sitting.\tA man is not sitting.\nTwo dogs are running.\tTwo dogs are running outside.\n")
    r = cli("predict", run_id, "--file", pairs, MLFLOW_TRACKING_URI=mlflow_uri)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.split()[0] in ("entailment", "contradiction", "neutral") for line in lines)
    direct = cli("predict", run / "best", "--file", pairs)
    assert direct.stdout == r.stdout  # the MLflow artifact is the same checkpoint as the run folder's


def test_resume_refuses_changed_hyperparameters_in_one_line(trained):
    """Before: `train --resume DIR --lr X` merged X into the saved config and went on from the old
    optimizer state and step, while MLflow kept the old params."""
    run, _ = trained
    r = cli("train", "--resume", run, "--lr", "0.01", "--epochs", "7", "--no-progress")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    line = r.stderr.strip()
    assert "--resume" in line and "epochs (saved 5, given 7)" in line and "lr (saved 0.002, given 0.01)" in line
    import json

    from bertnli.config import load_config
    from bertnli.config import resume_changes as _check_resume_changes

    saved = load_config(None, json.loads((run / "config.json").read_text()))
    # the same values, and settings that do not change the trajectory, pass (--progress and such are not settings)
    assert _check_resume_changes(saved, {"lr": 2e-3, "epochs": 5, "eval_batch_size": 64, "cache_dir": "elsewhere"}) == {
        "eval_batch_size": 64,
        "cache_dir": "elsewhere",
    }


def test_predict_file_errors_are_one_line_naming_the_file_and_line(trained, tmp_path):
    run, _ = trained
    broken = tmp_path / "pairs.jsonl"
    broken.write_text('{"sentence1": "A man sits.", "sentence2": "A man is sitting."}\n{"sentence1": "A dog", \n')
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"sentence1": "A man sits."}\n')
    empty = tmp_path / "empty.tsv"
    empty.write_text("\n\n")
    for path, expect in (
        (broken, f"{broken}:2: not valid JSON"),
        (missing, f"{missing}:1: no 'sentence2' field"),
        (empty, f"{empty}: no sentence pairs in it"),
    ):
        r = cli("predict", run, "--file", path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"bertnli-exp: error: {expect}"), r.stderr[
            -1500:
        ]


def test_sigterm_marks_a_train_run_killed_and_it_resumes(tmp_path, new_store):
    """Before: only Ctrl-C was classified; SIGTERM (schedulers, `timeout`, `docker stop`) left the run RUNNING."""
    import signal
    import time

    from conftest import make_rows, write_jsonl_gz
    from mlflow import MlflowClient

    data = tmp_path / "snli"
    data.mkdir()
    for split, n, seed in (("train", 1200, 11), ("dev", 100, 12), ("test", 100, 13)):
        write_jsonl_gz(data / f"snli_1.0_{split}.jsonl.gz", make_rows(n, seed))
    uri = new_store(tmp_path / "mlflow.db")
    cmd = [
        sys.executable,
        "-m",
        "bertnli.cli",
        "train",
        "--model",
        "tiny-d2l-random",
        "--data",
        str(data),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "2e-3",
        "--max-len",
        "32",
        "--checkpoint-every",
        "5",
        "--cache-dir",
        str(tmp_path / "enc"),
        "--tracking-uri",
        uri,
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "run" / "last.pt").is_file():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.strip().splitlines()[-1].startswith("bertnli-exp: terminated"), err[-2000:]
    c = MlflowClient(uri)
    (killed,) = c.search_runs([c.get_experiment_by_name("bertnli").experiment_id])
    assert killed.info.status == "KILLED"
    r = cli("train", "--resume", tmp_path / "run", "--no-progress", "--tracking-uri", uri)
    assert r.returncode == 0, r.stderr[-2000:]
    (done,) = c.search_runs([c.get_experiment_by_name("bertnli").experiment_id])
    assert done.info.run_id == killed.info.run_id and done.info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(done.info.run_id, "dev_acc")] == [1, 2, 3]
