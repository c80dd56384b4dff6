"""`sweep --dry-run`: what a sweep would do, read from the real storage and stores, and nothing written."""

import socket

import optuna
import pytest
from tiny_sweeps import S, sweep_in_process, write_toml


def files(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_a_dry_run_of_a_new_study_prints_the_plan_and_creates_nothing(tmp_path, tiny_snli):
    toml = write_toml(tmp_path, tiny_snli, trials=4)
    before = files(tmp_path)
    r = sweep_in_process(tmp_path, toml, "--dry-run", "--workers", "2")
    assert r.exit_code == 0, r.output
    assert "study s: new; 4 trials to run" in r.output
    assert "cells queued first: truncation=longest_first, truncation=ratio" in r.output
    assert "this host: 2 worker(s)" in r.output and "space: lr" in r.output
    assert "mlflow.db (created on first run)" in r.output
    assert files(tmp_path) == before  # no journal, no MLflow store, no study folder
    assert "objectives:" not in r.output  # dev accuracy alone, as always


def test_a_dry_run_shows_a_study_over_cost_and_its_constraints(tmp_path, tiny_snli):
    toml = write_toml(tmp_path, tiny_snli, trials=4)
    extra = ("--objective", "latency_ms,dev_acc", "--constraint", "peak_mem_mib<=8000")
    r = sweep_in_process(tmp_path, toml, "--dry-run", *extra)
    assert r.exit_code == 0, r.output
    assert (
        "objectives: dev_acc:max,latency_ms_b1:min; constraints peak_mem_mib<=8000; no pruning (several objectives)"
        in r.output
    )


def test_a_dry_run_of_a_study_under_way_counts_its_trials_and_changes_nothing(tmp_path, tiny_snli):
    toml = write_toml(tmp_path, tiny_snli, trials=4)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    study = optuna.create_study(
        study_name="s", storage=JournalStorage(JournalFileBackend(str(tmp_path / "journal.log"))), direction="maximize"
    )
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 5e-3, log=True)}
    for value in (0.5, 0.6):
        study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3}, distributions=dist, value=value))
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3}, distributions=dist, state=S.RUNNING))
    study.set_user_attr("cells_enqueued", True)
    before = files(tmp_path)
    r = sweep_in_process(tmp_path, toml, "--dry-run")
    assert r.exit_code == 0, r.output
    assert "study s: 2 of 4 trials complete or pruned, 1 running" in r.output
    assert "cells queued first: none (queued when the study began)" in r.output
    assert files(tmp_path) == before


def test_a_dry_run_names_an_unreachable_database_in_one_line(tmp_path, tiny_snli):
    toml = write_toml(tmp_path, tiny_snli)
    url = f"postgresql://postgres:secret@127.0.0.1:{closed_port()}/optuna"
    r = sweep_in_process(tmp_path, toml, "--dry-run", "--storage", url)  # the last --storage wins
    assert r.exit_code == 2, r.output
    (line,) = r.output.strip().splitlines()
    assert "--storage" in line and "unreachable" in line and "secret" not in line


def test_a_dry_run_names_an_unreachable_mlflow_server_in_one_line(tmp_path, tiny_snli):
    toml = write_toml(tmp_path, tiny_snli)
    r = sweep_in_process(tmp_path, toml, "--dry-run", "--tracking-uri", f"http://127.0.0.1:{closed_port()}")
    assert r.exit_code == 2, r.output
    (line,) = r.output.strip().splitlines()
    assert "--tracking-uri" in line and "unreachable" in line


def test_a_dry_run_names_a_checkpoint_store_it_cannot_read(tmp_path, tiny_snli, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    toml = write_toml(tmp_path, tiny_snli)
    r = sweep_in_process(tmp_path, toml, "--dry-run", "--checkpoint-store", "s3://no-such-bucket/ckpt")
    assert r.exit_code == 2, r.output
    (line,) = r.output.strip().splitlines()
    assert "--checkpoint-store s3://no-such-bucket/ckpt cannot be read" in line


def test_a_dry_run_reads_a_sqlite_study_without_writing_to_it(tmp_path, tiny_snli):
    """The dry run reads a database with plain SQL (opening an RDBStorage may write its tables and version
    rows): the file stays byte for byte the same, and a database that does not exist is not created."""
    toml = write_toml(tmp_path, tiny_snli, trials=3)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    study.set_user_attr("cells_enqueued", True)
    del study
    before = (tmp_path / "optuna.db").read_bytes()
    r = sweep_in_process(tmp_path, toml, "--dry-run", "--storage", url)
    assert r.exit_code == 0, r.output
    assert "study s: 1 of 3 trials complete or pruned, 0 running" in r.output
    assert (tmp_path / "optuna.db").read_bytes() == before
    missing = f"sqlite:///{tmp_path / 'new.db'}"
    r = sweep_in_process(tmp_path, toml, "--dry-run", "--storage", missing)
    assert r.exit_code == 0 and "study s: new" in r.output and not (tmp_path / "new.db").exists()


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_dry_run_counts_imported_trials_apart_and_shows_known_configurations_and_warm_starts(
    tmp_path, tiny_snli, kind
):
    """Before: an imported trial counted as done here (the sweep does not count it), and --enqueue and
    --warm-start were left out of the plan."""
    from bertnli.sweep.storage import open_storage
    from bertnli.sweep.warm_start import IMPORTED

    toml = write_toml(tmp_path, tiny_snli, trials=4, space="lr = {low = 1e-4, high = 5e-3, log = true}")
    url = str(tmp_path / "journal.log") if kind == "journal" else f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 5e-3, log=True)}
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3}, distributions=dist, value=0.5))
    imported = optuna.trial.create_trial(
        params={"lr": 2e-3}, distributions=dist, value=0.6, user_attrs={IMPORTED: "cheap@x#0"}
    )
    study.add_trial(imported)
    source = f"cheap@{tmp_path / 'cheap.log'}"
    args = ["--dry-run", "--storage", url, "--enqueue", "lr=0.002", "--warm-start", source]
    r = sweep_in_process(tmp_path, toml, *args)
    assert r.exit_code == 2 and f"no Optuna storage at {tmp_path / 'cheap.log'}; check the path" in r.output
    assert not (tmp_path / "cheap.log").exists()
    optuna.create_study(study_name="cheap", storage=open_storage(str(tmp_path / "cheap.log")))
    r = sweep_in_process(tmp_path, toml, *args)
    assert r.exit_code == 0, r.output
    assert "study s: 1 of 4 trials complete or pruned, 0 running, 1 imported (not trained here, not counted)" in (
        r.output
    )
    assert "known configurations: lr=0.002 (queued first, once per study)" in r.output
    assert f"warm start: {source} (strict), imported as the sweep starts" in r.output
