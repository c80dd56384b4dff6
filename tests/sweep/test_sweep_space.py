"""In-process checks of the sweep's parts against real Optuna studies (no training): the space,
the pruning clock, the storage's outage policy, the parent election and the public-API rule."""

import ast
import time
from pathlib import Path

import optuna
import pytest
from sqlalchemy.exc import OperationalError

import bertnli.sweep.pool
from bertnli.config import TrackingConfig
from bertnli.sweep.params import parse_param
from bertnli.sweep.space import load_sweep_config

S = optuna.trial.TrialState


def test_booleans_in_the_space_are_booleans(tiny_snli):
    # before: --space bucket=true|false gave the strings "true"/"false", and "false" is truthy
    assert parse_param("bucket", "true|false").choices == (True, False)
    assert parse_param("amp", ["off", True]).choices == (False, True)
    from bertnli import BertnliError

    with pytest.raises(BertnliError, match="bad sweep space for bucket"):
        parse_param("bucket", "true|maybe")
    cfg = load_sweep_config(None, {"data": str(tiny_snli)}, {}, ["bucket=false"], TrackingConfig())
    bucket = next(p for p in cfg.space if p.name == "bucket")
    assert bucket.choices == (False,) and cfg.base.replace(bucket=bucket.choices[0]).bucket is False


def _package_sources() -> list[Path]:
    root = Path(bertnli.sweep.pool.__file__).parent / "__init__.py"
    return sorted(root.parent.glob("*.py")) if root.name == "__init__.py" else [root]


def test_the_sweep_uses_no_private_optuna_api_and_no_preexec_fn():
    """Private Optuna API (study._storage, _trial_id, Trial(study, id), swapping study.sampler) breaks on
    upgrades; preexec_fn forks unsafely from a threaded process (Python's subprocess docs)."""
    found = []
    for path in _package_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("_storage", "_trial_id", "_study_id"):
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Attribute) and t.attr == "sampler" for t in node.targets
            ):
                found.append(f"{path.name}:{node.lineno} sampler swap")
            if isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Attribute) and f.attr == "Trial" and getattr(f.value, "attr", "") == "trial":
                    found.append(f"{path.name}:{node.lineno} Trial(study, id)")
                if any(k.arg == "preexec_fn" for k in node.keywords):
                    found.append(f"{path.name}:{node.lineno} preexec_fn")
    assert found == []
    assert all(len(p.read_text().splitlines()) <= 400 for p in _package_sources())


def test_pruning_compares_trials_at_the_same_fraction_of_their_schedules(tiny_snli):
    """Synthetic curves: 1-epoch trials end at 0.50; 3-epoch trials pass 0.40, 0.55 and end at 0.70
    (higher). At epoch 1 a 3-epoch trial is behind the 1-epoch ones only because its schedule is
    a third done. It must not be pruned then; a hopeless 3-epoch trial still is, by its peers."""
    from bertnli.sweep.space import pruning_ticks as schedule_ticks
    from bertnli.sweep.space import report_step
    from bertnli.sweep.supervisor import TrialRun

    cfg = load_sweep_config(
        None, {"data": str(tiny_snli)}, {"pruner_startup_trials": 2}, ["epochs=1:3"], TrackingConfig()
    )
    ticks = schedule_ticks(cfg)
    assert ticks == 6 and [report_step(e, 3, ticks) for e in (1, 2, 3)] == [2, 4, 6] and report_step(1, 1, ticks) == 6

    def run(study, epochs, curve):
        study.enqueue_trial({"epochs": epochs})
        trial = study.ask()
        trial.suggest_int("epochs", 1, 3)
        relay = TrialRun(
            cfg, study, None, trial, Path("."), "", ticks
        )  # the worker's relay: report, then ask the pruner
        for epoch, value in enumerate(curve, 1):
            if relay.decide_epoch({"epoch": epoch, "dev_acc": value}) == "prune" and epoch < epochs:
                study.tell(trial, state=S.PRUNED)
                return epoch
        study.tell(trial, curve[-1])
        return None

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    for _ in range(3):
        assert run(study, 1, [0.50]) is None
    assert run(study, 3, [0.40, 0.55, 0.70]) is None  # not pruned at epoch 1: it ends highest
    assert run(study, 3, [0.42, 0.56, 0.72]) is None
    assert run(study, 3, [0.20, 0.22, 0.25]) == 1  # its peers at the same point of their schedule prune it
    assert study.best_value == pytest.approx(0.72)

    naive = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    for _ in range(3):  # what "step = epoch" did: the 3-epoch trial is pruned at epoch 1
        t = naive.ask()
        t.report(0.50, 1)
        naive.tell(t, 0.50)
    t = naive.ask()
    t.report(0.40, 1)
    assert t.should_prune()


def test_a_write_whose_acknowledgement_was_lost_is_not_repeated(tmp_path, monkeypatch, new_store):
    """The commit of create_new_trial lands, then the connection drops before the reply: repeating the
    call would make a second RUNNING trial. The storage raises instead; the reaper fails the orphan."""
    from optuna.storages import RDBStorage

    from bertnli.sweep.storage import open_storage

    real, calls = RDBStorage.create_new_trial, []

    def lost_ack(self, *a, **kw):
        out = real(self, *a, **kw)
        calls.append(out)
        if len(calls) == 1:
            raise OperationalError("INSERT INTO trials", {}, Exception("server closed the connection unexpectedly"))
        return out

    monkeypatch.setattr(RDBStorage, "create_new_trial", lost_ack)
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    with pytest.raises(OperationalError):
        study.ask()
    assert len(study.get_trials()) == 1  # before: 2, the retried write made a duplicate RUNNING trial

    from bertnli.sweep.reaping import Sightings, reap

    seen = Sightings()  # one memory of the trials, as one sweep process keeps

    cfg = load_sweep_config(
        None,
        {"data": str(tmp_path)},
        {"grace_s": 0.2, "out_dir": str(tmp_path / "out")},
        [],
        TrackingConfig(new_store(tmp_path / "mlflow.db")),
    )
    reap(study, storage, cfg, seen, log=lambda *_: None)  # the reaper starts watching the ownerless trial ...
    assert study.get_trials()[0].state == S.RUNNING
    time.sleep(0.5)
    reap(study, storage, cfg, seen, log=lambda *_: None)  # ... and fails it once it has stayed ownerless for `grace`
    orphan = study.get_trials()[0]
    assert orphan.state == S.FAIL and orphan.user_attrs["orphan"] is True
    assert [
        t for t in study.get_trials() if t.state == S.WAITING
    ] == []  # nothing to retry: it never had a configuration


def test_one_parent_run_even_when_a_late_starter_runs_60_s_behind(tmp_path, monkeypatch, new_store):
    """Processes that miss each other's runs, or whose clocks differ, must still agree on one parent.
    Before: the earliest start_time won, so a starter whose clock runs 60 s behind took over."""
    from mlflow import MlflowClient

    from bertnli.sweep.election import parent_run
    from bertnli.sweep.storage import open_storage

    uri = new_store(tmp_path / "mlflow.db")
    cfg = load_sweep_config(None, {"data": str(tmp_path)}, {"study_name": "s"}, [], TrackingConfig(uri, None))
    storage = open_storage(str(tmp_path / "journal.log"))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    first = parent_run(study, storage, cfg, "journal", elector=True)
    real = time.time
    with monkeypatch.context() as m:
        m.setattr(time, "time", lambda: real() - 60)  # the second host's clock
        second = parent_run(optuna.load_study(study_name="s", storage=storage), storage, cfg, "journal", elector=False)
    c = MlflowClient(uri)
    parents = [
        r
        for r in c.search_runs([c.get_experiment_by_name("s").experiment_id])
        if r.data.tags.get("bertnli.role") == "sweep-parent"
    ]
    assert first == second and [r.info.run_id for r in parents] == [first]


@pytest.mark.slow  # runs pytest in a subprocess
def test_under_ci_a_skipped_postgresql_or_chromium_test_fails(tmp_path):
    """CI was green with its real-server tests skipped when apt failed."""
    import subprocess
    import sys

    from conftest import ROOT, run_env

    test = tmp_path / "test_needs.py"
    test.write_text(
        'import pytest\n\n@pytest.mark.skip(reason="PostgreSQL server binaries not installed")\ndef test_pg():\n    '
        "pass\n\n"
        '@pytest.mark.skip(reason="no GPU here")\ndef test_other():\n    pass\n'
    )

    def run(ci: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "ci_servers", "-p", "no:cacheprovider", str(test)],
            cwd=tmp_path,
            env=run_env(CI=ci, PYTHONPATH=str(ROOT / "tests")),
            capture_output=True,
            text=True,
        )

    assert run("false").returncode == 0
    ci = run("true")
    assert ci.returncode == 1 and "1 skipped, 1 error" in ci.stdout and "CI must run it with postgresql" in ci.stdout, (
        ci.stdout[-1500:]
    )


def test_an_epochs_range_too_wide_for_the_pruning_clock_is_one_line():
    """lcm(1..50) does not fit the 32-bit step column of Optuna's RDB storage: refused before any trial runs."""
    from bertnli import BadInput
    from bertnli.config import TrackingConfig
    from bertnli.sweep.space import load_sweep_config

    with pytest.raises(BadInput, match="too wide for the pruning clock"):
        load_sweep_config(None, {}, {}, ["epochs=1:50"], TrackingConfig())
    assert load_sweep_config(None, {}, {}, ["epochs=1:6"], TrackingConfig()).space
