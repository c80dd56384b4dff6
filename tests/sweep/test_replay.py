"""Pruning replay: Optuna's real pruners over recorded curves; MedianPruner's replay equals its live decisions."""

import numpy as np
import optuna
import pytest

from bertnli.sweep.replay import Curve, parse_pruner_tag, replay, summarize
from bertnli.sweep.replay import rank_by_epoch as rank_agreement


def live_study(curves_full, epochs, n_startup, n_warmup):
    """A real Optuna study pruned live by MedianPruner, as the sweep does it (never after the last epoch)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=n_startup, n_warmup_steps=n_warmup)
    )
    recorded = []

    def objective(trial):
        values = curves_full[trial.number]
        for epoch, v in enumerate(values[: epochs[trial.number]], start=1):
            trial.report(v, epoch)
            recorded[-1].append(v)
            if epoch < epochs[trial.number] and trial.should_prune():
                raise optuna.TrialPruned()
        return max(values[: epochs[trial.number]])

    for _ in curves_full:
        recorded.append([])
        study.optimize(objective, n_trials=1)
    return study, recorded


@pytest.mark.parametrize("seed,n_startup,n_warmup", [(0, 1, 0), (1, 3, 0), (2, 2, 1), (3, 5, 0)])
def test_median_pruner_replay_equals_live_decisions(seed, n_startup, n_warmup):
    rng = np.random.default_rng(seed)
    n = 25
    epochs = rng.integers(1, 5, n)
    curves_full = [
        list(np.clip(0.4 + rng.normal(0, 0.08) + np.cumsum(rng.normal(0.03, 0.03, 4)), 0, 1)) for _ in range(n)
    ]
    study, recorded = live_study(curves_full, epochs, n_startup, n_warmup)
    S = optuna.trial.TrialState
    live = [len(t.intermediate_values) if t.state == S.PRUNED else None for t in study.trials]
    assert any(live) and not all(live)  # the case is not trivial: some pruned, some not
    curves = [
        Curve(t.number, recorded[t.number], int(epochs[t.number]), t.state == S.PRUNED, t.value) for t in study.trials
    ]
    decisions = replay(curves, optuna.pruners.MedianPruner(n_startup_trials=n_startup, n_warmup_steps=n_warmup))
    assert decisions == live
    summary = summarize(curves, {"n_startup_trials": n_startup, "n_warmup_steps": n_warmup, "max_epochs": 4}).set_index(
        "pruner"
    )
    assert summary.loc["MedianPruner", "same_as_live"] == n and summary.loc["MedianPruner", "unresolved"] == 0
    assert summary.loc["live", "pruned"] == sum(d is not None for d in live)


def test_summary_counts_compute_and_the_winner():
    # trial 0 and 1 finish; 2 is far behind and gets pruned by every halving pruner after epoch 1
    curves = [
        Curve(0, [0.5, 0.6, 0.7], 3, final=0.7, epoch_seconds=[10, 10, 10]),
        Curve(1, [0.55, 0.65, 0.75], 3, final=0.75, epoch_seconds=[10, 10, 10]),
        Curve(2, [0.2, 0.25, 0.3], 3, final=0.3, epoch_seconds=[20, 20, 20]),
    ]
    s = summarize(curves, {"n_startup_trials": 1, "n_warmup_steps": 0, "max_epochs": 3}).set_index("pruner")
    assert s.loc["live", "pruned"] == 0 and s.loc["live", "seconds_saved"] == 0
    med = s.loc["MedianPruner"]
    assert med["pruned"] == 1 and med["epochs_saved"] == 2 and med["seconds_saved"] == 40 and not med["winner_pruned"]
    assert med["saved_fraction"] == pytest.approx(40 / 120)


def test_rank_agreement_per_epoch():
    curves = [Curve(i, v, 2, final=max(v)) for i, v in enumerate([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]])]
    r = rank_agreement(curves)
    assert list(r["kendall_tau"]) == pytest.approx([-1.0, 1.0])


def test_pruner_tag_parses():
    assert parse_pruner_tag("MedianPruner(n_startup_trials=4, n_warmup_steps=0)") == {
        "n_startup_trials": 4,
        "n_warmup_steps": 0,
    }
    assert parse_pruner_tag("MedianPruner(n_startup_trials=3) at the fraction of each schedule; warmup 1 epochs") == {
        "n_startup_trials": 3,
        "warmup_epochs": 1,
    }


# ---------------------------------------------------------------- from a real sweep recorded in MLflow


@pytest.mark.slow(85)  # seconds on the 2-core machine: conftest runs the longest files first
def test_replay_of_a_real_sweep_reproduces_its_live_pruning(tiny_snli, tmp_path, new_store):
    """A real one-worker sweep (journal storage, MLflow store, trial processes); the replay reads MLflow only."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    from tiny_runs import cli

    from bertnli.sweep.replay import replay_study

    # One lr that learns this toy data within an epoch and one that cannot, queued first (as a user may queue
    # configurations): the live pruner stops the second at its first report. Then two sampled configurations.
    toml = tmp_path / "sweep.toml"
    toml.write_text(
        f'[train]\nmodel = "tiny-d2l-random"\ndata = "{tiny_snli}"\nmax_len = 32\nbatch_size = 4\noptimizer = "adam"\n'
        f'schedule = "constant"\ncache_dir = "{tmp_path / "enc"}"\ndropout = 0.0\n\n'
        '[sweep]\ntrials = 4\nstudy_name = "r"\npruner_startup_trials = 1\n\n'
        "[sweep.space]\nlr = {low = 1e-5, high = 5e-2, log = true}\nepochs = {low = 2, high = 3}\n"
    )
    queued = optuna.create_study(
        study_name="r", storage=JournalStorage(JournalFileBackend(str(tmp_path / "journal.log"))), direction="maximize"
    )
    for lr in (2e-3, 1e-5):
        queued.enqueue_trial({"lr": lr, "epochs": 2})
    uri = new_store(tmp_path / "mlflow.db")
    r = cli(
        "sweep",
        "--config",
        toml,
        "--storage",
        tmp_path / "journal.log",
        "--tracking-uri",
        uri,
        "--out",
        tmp_path / "out",
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(study_name="r", storage=JournalStorage(JournalFileBackend(str(tmp_path / "journal.log"))))
    S = optuna.trial.TrialState
    live_pruned = sum(t.state == S.PRUNED for t in study.trials)
    assert live_pruned >= 1  # the live pruner acted: there is something to reproduce
    tables = replay_study("r", uri)
    s = tables["pruner_replay"].set_index("pruner")
    assert s.loc["live", "pruned"] == live_pruned and s.loc["live", "trials"] == 4
    assert s.loc["MedianPruner", "same_as_live"] == 4 and s.loc["MedianPruner", "unresolved"] == 0
    assert (s.loc["MedianPruner", "pruned"], s.loc["MedianPruner", "epochs_run"]) == (
        s.loc["live", "pruned"],
        s.loc["live", "epochs_run"],
    )
    assert set(tables["rank_by_epoch"]["epoch"]) >= {1, 2}
    r = cli("report", "--replay-pruners", "r", "--tracking-uri", uri, "--out", tmp_path / "rep", "--cell-by", "epochs")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "pruner replay (study r)" in r.stdout and (tmp_path / "rep" / "pruner_replay.csv").is_file()
    assert (tmp_path / "rep" / "rank_by_epoch.csv").is_file()
    assert "TPESampler" in (tmp_path / "rep" / "report.md").read_text()  # EVP on a TPE study is flagged
