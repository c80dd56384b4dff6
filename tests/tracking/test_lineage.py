"""What a run saw and ran, against a real SQLite MLflow store: dataset inputs, provenance tags, experiment kind,
and `reproduce` checking the data digests."""

import hashlib
import multiprocessing
import shutil
import subprocess

import pytest
from click.testing import CliRunner
from conftest import make_rows, write_jsonl_gz
from mlflow import MlflowClient
from tiny_runs import tiny_cfg

from bertnli import PACKAGE_DIR
from bertnli.config import TrackingConfig
from bertnli.data.snli import SNLI_URL
from bertnli.files import file_digest
from bertnli.tracking.lineage import data_source_uri, installed_packages, log_split_inputs
from bertnli.tracking.run import train_run


@pytest.fixture(scope="module")
def recorded(tiny_snli, tmp_path_factory, mlflow_uri):
    tmp = tmp_path_factory.mktemp("lineage")
    cfg = tiny_cfg(tiny_snli, tmp, epochs=1, limit_train=64)
    result, run_id = train_run(cfg, tmp / "run", TrackingConfig(mlflow_uri, "t-lineage"), progress=False)
    return MlflowClient(mlflow_uri), run_id, result, cfg


def test_each_split_is_a_dataset_input_with_its_digest_and_source(recorded, tiny_snli):
    c, run_id, result, cfg = recorded
    inputs = {i.dataset.name: i for i in c.get_run(run_id).inputs.dataset_inputs}
    assert set(inputs) == {"train", "dev", "test"}
    for split, inp in inputs.items():
        full = file_digest(next(tiny_snli.glob(f"snli_1.0_{split}.*")))
        assert full == result.info["digests"][split]
        assert inp.dataset.digest == full[:36]  # MLflow's digest column holds 36 characters
        assert f'"sha256": "{full}"' in inp.dataset.profile
        assert inp.dataset.source == f'{{"uri": "{tiny_snli.resolve().as_uri()}"}}'
        assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == split
    assert '"examples_used": 64' in inputs["train"].dataset.profile
    # a resumed run logs them again: nothing is duplicated
    log_split_inputs(c, run_id, cfg.data, result.info["digests"], {"train": 64})
    assert len(c.get_run(run_id).inputs.dataset_inputs) == 3


def test_snli_download_folder_names_the_snli_url(tmp_path):
    folder = tmp_path / "data" / "snli_1.0.extracted" / "snli_1.0"
    folder.mkdir(parents=True)
    assert data_source_uri(folder) == SNLI_URL
    assert data_source_uri(tmp_path) == tmp_path.resolve().as_uri()


def test_every_run_has_git_commit_dirty_flag_and_packages_hash(recorded):
    c, run_id, _, _ = recorded
    tags = c.get_run(run_id).data.tags
    git = lambda *a: subprocess.run(["git", *a], cwd=PACKAGE_DIR, capture_output=True, text=True).stdout.strip()  # noqa: E731
    assert tags["mlflow.source.git.commit"] == git("rev-parse", "HEAD")
    assert tags["bertnli.git_dirty"] == str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower()
    assert tags["bertnli.packages_sha256"] == hashlib.sha256("\n".join(installed_packages()).encode()).hexdigest()[:16]
    assert any(p.startswith("torch==") for p in installed_packages())
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]


def test_experiment_opens_on_model_training_not_genai(recorded, mlflow_uri):
    c, run_id, _, _ = recorded
    exp = c.get_experiment(c.get_run(run_id).info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # an experiment made before bertnli set the kind gets it on its next run
    old = c.create_experiment("t-old-kind")
    from bertnli.tracking.store import get_or_create_experiment

    assert get_or_create_experiment(c, "t-old-kind", mlflow_uri) == old
    assert c.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def _experiment(tmp_path, data):
    path = tmp_path / "tiny_exp.toml"
    path.write_text(
        f'[train]\nmodel = "tiny-d2l-random"\ndata = "{data}"\nepochs = 1\nbatch_size = 16\nlr = 2e-3\n'
        f'max_len = 32\nlimit_train = 48\ncache_dir = "{tmp_path / "enc"}"\n\n'
        '[expect]\nmetric = "best_dev_acc"\ntarget = 0.0\n'
    )
    return path


def _sums(data, **wrong):
    lines = [
        f"{wrong.get(s, file_digest(data / f'snli_1.0_{s}.jsonl.gz'))}  snli_1.0_{s}.jsonl.gz"
        for s in ("train", "dev", "test")
    ]
    (data / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def test_reproduce_checks_data_digests(tmp_path, tiny_snli, mlflow_uri, monkeypatch):
    from bertnli.cli import main

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    shutil.copytree(tiny_snli, data)
    toml = _experiment(tmp_path, data)
    args = ["reproduce", str(toml), "--tracking-uri", mlflow_uri, "--no-progress"]
    _sums(data, train="0" * 64)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "differs from" in r.output and "train is" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1

    _sums(data)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert f"(match {data / 'SHA256SUMS'})" in r.output and "PASS" in r.output
    assert f"dev {file_digest(data / 'snli_1.0_dev.jsonl.gz')[:12]}" in r.output

    (data / "SHA256SUMS").unlink()  # the data change: the next run says its figures are not comparable
    write_jsonl_gz(data / "snli_1.0_dev.jsonl.gz", make_rows(60, 9))
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "saw other data (dev is" in r.output, r.output


def _log_rounds(uri, run_ids, folder, digests, barrier):
    """One trial process per column: in each round, wait until every process is ready, then log the splits."""
    c = MlflowClient(uri)
    c.search_experiments(max_results=1)  # connect before the race, not in it
    for run_id in run_ids:
        barrier.wait(60)
        log_split_inputs(c, run_id, folder, digests, {"train": 8})


@pytest.mark.slow  # starts processes
def test_trials_starting_together_log_the_same_datasets_without_a_duplicate_key_error(tmp_path, new_store, tiny_snli):
    """MLflow looks for an experiment's dataset and inserts it when absent, so two trials of a new sweep that log
    the same splits at once both insert it and one dies of a unique-key error (a CI failure of the OOM test)."""
    uri = new_store(tmp_path / "mlflow.db")
    c = MlflowClient(uri)
    digests = {s: hashlib.sha256(s.encode()).hexdigest() for s in ("train", "dev", "test")}
    procs, rounds = 4, 3  # each round a new experiment, so its datasets are new to every process
    exps = [c.create_experiment(f"race-{r}") for r in range(rounds)]
    runs = [[c.create_run(e).info.run_id for _ in range(procs)] for e in exps]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(procs)
    columns = [[rnd[p] for rnd in runs] for p in range(procs)]
    ps = [ctx.Process(target=_log_rounds, args=(uri, col, str(tiny_snli), digests, barrier)) for col in columns]
    for p in ps:
        p.start()
    for p in ps:
        p.join(120)
    assert [p.exitcode for p in ps] == [0] * procs
    for run_id in (r for rnd in runs for r in rnd):
        assert {i.dataset.name for i in c.get_run(run_id).inputs.dataset_inputs} == set(digests)
