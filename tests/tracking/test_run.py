"""MLflow records, against a real SQLite-backed store: params, metrics, artifacts, true status, resume."""

import pytest
import torch
from mlflow import MlflowClient
from tiny_runs import StopAt, tiny_cfg

from bertnli.config import TrackingConfig
from bertnli.tracking.run import train_run
from bertnli.train.prepare import prepare
from bertnli.train.state import TrainingDiverged


def _artifacts(c, run_id, path=""):
    out = []
    for f in c.list_artifacts(run_id, path):
        out += _artifacts(c, run_id, f.path) if f.is_dir else [f.path]
    return out


def test_finished_run_has_params_metrics_and_artifacts(tiny_snli, tmp_path, mlflow_uri):
    cfg = tiny_cfg(tiny_snli, tmp_path, epochs=2)
    result, run_id = train_run(cfg, tmp_path / "run", TrackingConfig(mlflow_uri, "t-finished"), progress=False)
    c = MlflowClient(mlflow_uri)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {k: str(v) for k, v in cfg.to_flat_dict().items()}
    hist = c.get_metric_history(run_id, "dev_acc")
    assert [m.step for m in hist] == [1, 2]
    assert [m.value for m in hist] == pytest.approx([m.dev_acc for m in result.history])
    for key in ("train_loss", "train_acc", "dev_loss", "examples_per_sec"):
        assert len(c.get_metric_history(run_id, key)) == 2
    assert run.data.metrics["best_dev_acc"] == pytest.approx(result.best_dev_acc)
    assert run.data.metrics["test_acc"] == pytest.approx(result.test.acc)
    for cost in ("params", "peak_mem_mib", "latency_ms_b1", "latency_ms_b256"):  # what --objective reads
        assert run.data.metrics[cost] == pytest.approx(result.costs[cost])
    files = set(_artifacts(c, run_id))
    assert {
        "checkpoint/model.safetensors",
        "checkpoint/model_config.json",
        "checkpoint/vocab.json",
        "learning_curves.png",
        "confusion_test.png",
        "confusion_test.csv",
        "digests.json",
    } <= files
    assert run.data.tags["data.train.sha256"] == result.info["digests"]["train"]


def test_runs_record_per_example_predictions_on_dev_and_test(tiny_snli, tmp_path, mlflow_uri):
    from bertnli.data.snli import read_split
    from bertnli.tracking.predictions import PREDICTION_COLUMNS, load_predictions

    cfg = tiny_cfg(tiny_snli, tmp_path, epochs=2, limit_eval=50)
    result, run_id = train_run(cfg, tmp_path / "run", TrackingConfig(mlflow_uri, "t-preds"), progress=False)
    run = MlflowClient(mlflow_uri).get_run(run_id)
    for split, evaluated in (("dev", result.dev), ("test", result.test)):
        frame = load_predictions(run_id, split, mlflow_uri)
        truth = read_split(tiny_snli, split).head(50)
        assert list(frame.columns) == PREDICTION_COLUMNS and len(frame) == 50
        assert list(frame["id"]) == truth.ids and list(frame["gold"]) == truth.labels
        assert (frame["pred"] == frame[["p_entailment", "p_contradiction", "p_neutral"]].to_numpy().argmax(1)).all()
        assert frame[["p_entailment", "p_contradiction", "p_neutral"]].sum(axis=1).to_numpy() == pytest.approx(
            1, abs=1e-5
        )
        assert (frame["pred"] == frame["gold"]).mean() == pytest.approx(evaluated.acc)
    test = load_predictions(run_id, "test", mlflow_uri)
    assert (test["pred"] == test["gold"]).mean() == pytest.approx(
        run.data.metrics["test_acc"]
    )  # test evaluated once: these are its predictions


def test_nan_run_is_failed_with_the_reason(tiny_snli, tmp_path, mlflow_uri):
    cfg = tiny_cfg(tiny_snli, tmp_path)
    prep = prepare(cfg)
    with torch.no_grad():
        prep.model.classifier.bias.fill_(float("inf"))
    import bertnli.tracking.run as tr

    real_fit = tr.fit
    tr_fit = lambda *a, **k: real_fit(*a, **{**k, "prepared": prep})  # noqa: E731 - inject the broken model
    tr.fit = tr_fit
    try:
        with pytest.raises(TrainingDiverged):
            train_run(cfg, tmp_path / "run", TrackingConfig(mlflow_uri, "t-nan"), progress=False)
    finally:
        tr.fit = real_fit
    run = MlflowClient(mlflow_uri).search_runs(
        [MlflowClient(mlflow_uri).get_experiment_by_name("t-nan").experiment_id]
    )[0]
    assert run.info.status == "FAILED" and "loss became nan" in run.data.tags["bertnli.error"]


def test_interrupted_run_is_killed_then_resumed_into_the_same_run(tiny_snli, tmp_path, mlflow_uri):
    cfg = tiny_cfg(tiny_snli, tmp_path, epochs=2, checkpoint_every=5)
    tracking = TrackingConfig(mlflow_uri, "t-resume")
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "run", tracking, callbacks=[StopAt(20)], progress=False)
    c = MlflowClient(mlflow_uri)
    exp = c.get_experiment_by_name("t-resume").experiment_id
    (killed,) = c.search_runs([exp])
    assert killed.info.status == "KILLED"
    result, run_id = train_run(cfg, tmp_path / "run", tracking, resume=True, progress=False)
    runs = c.search_runs([exp])
    assert len(runs) == 1 and run_id == killed.info.run_id and runs[0].info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(run_id, "dev_acc")] == [1, 2]
    assert runs[0].data.tags["bertnli.resumed"] == "True"


def test_system_metrics_are_logged_by_mlflow_and_can_be_turned_off(tiny_snli, tmp_path, mlflow_uri, monkeypatch):
    cfg = tiny_cfg(tiny_snli, tmp_path, epochs=1, limit_train=64)
    _, on = train_run(
        cfg, tmp_path / "on", TrackingConfig(mlflow_uri, "t-sys", system_metrics_interval=0.5), progress=False
    )
    c = MlflowClient(mlflow_uri)
    metrics = c.get_run(on).data.metrics
    for key in (
        "system/cpu_utilization_percentage",
        "system/system_memory_usage_megabytes",
        "system/system_memory_usage_percentage",
    ):
        assert key in metrics and metrics[key] > 0, key
    _, off = train_run(cfg, tmp_path / "off", TrackingConfig(mlflow_uri, "t-sys", system_metrics=False), progress=False)
    assert not [k for k in c.get_run(off).data.metrics if k.startswith("system/")]

    from click.testing import CliRunner

    from bertnli.cli import main

    monkeypatch.setenv("BERTNLI_SYSTEM_METRICS", "1")  # restored after the test; the flag sets it for trial processes
    args = [
        "train",
        "--model",
        "tiny-d2l-random",
        "--data",
        str(tiny_snli),
        "--epochs",
        "1",
        "--limit-train",
        "32",
        "--max-len",
        "32",
        "--cache-dir",
        str(tmp_path / "enc"),
        "--tracking-uri",
        mlflow_uri,
        "--experiment",
        "t-sys-cli",
        "--out",
        str(tmp_path / "cli"),
        "--no-progress",
        "--no-system-metrics",
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    (run,) = c.search_runs([c.get_experiment_by_name("t-sys-cli").experiment_id])
    assert not [k for k in run.data.metrics if k.startswith("system/")]


class DieBeforeLogging:
    """Runs before the MLflow callback: the end of epoch 1 is checkpointed, then the process dies
    before MLflow logs that epoch (the window of a kill between the two)."""

    def on_fit_start(self, info):
        pass

    def on_fit_end(self, result):
        pass

    def on_epoch_end(self, m):
        if m.epoch == 1:
            raise KeyboardInterrupt


def test_a_resumed_run_logs_the_epoch_its_checkpoint_holds_but_mlflow_lacks(tiny_snli, tmp_path, mlflow_uri):
    import json

    from bertnli.tracking.run import MLflowRun, recorded
    from bertnli.train.fit import fit

    cfg = tiny_cfg(tiny_snli, tmp_path, epochs=2)
    tracking = TrackingConfig(mlflow_uri, "t-lost-epoch")
    run = MLflowRun(cfg, tracking)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mlflow_run.json").write_text(json.dumps({"run_id": run.run_id, "tracking_uri": run.uri}))
    with pytest.raises(KeyboardInterrupt), recorded(run):
        fit(cfg, tmp_path / "run", callbacks=[DieBeforeLogging(), run], progress=False)
    c = MlflowClient(mlflow_uri)
    assert c.get_metric_history(run.run_id, "dev_acc") == []  # the epoch is in last.pt only
    result, run_id = train_run(cfg, tmp_path / "run", tracking, resume=True, progress=False)
    hist = c.get_metric_history(run_id, "dev_acc")
    assert run_id == run.run_id and [m.step for m in hist] == [1, 2]
    assert [m.value for m in hist] == pytest.approx([m.dev_acc for m in result.history])
