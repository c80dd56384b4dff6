"""The training loop: learning, selection on dev, exact resume, divergence, DDP under torchrun."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, run_env
from tiny_runs import StopAt, tiny_cfg

from bertnli import BertnliError
from bertnli.train.checkpoint import load_selected
from bertnli.train.evaluation import evaluate
from bertnli.train.fit import fit
from bertnli.train.prepare import prepare
from bertnli.train.state import TrainingDiverged


def test_learns_selects_on_dev_and_tests_the_selected_weights(tiny_snli, tmp_path):
    r = fit(tiny_cfg(tiny_snli, tmp_path, epochs=8), tmp_path / "run", progress=False)
    assert r.best_dev_acc > 0.6  # chance is 1/3; the tiny data is learnable
    assert r.best_epoch == max(r.history, key=lambda m: m.dev_acc).epoch
    model, tok, meta = load_selected(tmp_path / "run" / "best")
    assert meta["epoch"] == r.best_epoch
    prep = prepare(tiny_cfg(tiny_snli, tmp_path))
    assert evaluate(model, prep.test).acc == pytest.approx(r.test.acc)
    assert evaluate(model, prep.dev).acc == pytest.approx(r.best_dev_acc)
    assert all(m.examples_per_sec > 0 for m in r.history)


def test_resume_mid_epoch_equals_uninterrupted(tiny_snli, tmp_path):
    cfg = tiny_cfg(tiny_snli, tmp_path, epochs=2, checkpoint_every=4, dropout=0.1, limit_train=160)  # 10 steps/epoch
    full = fit(cfg, tmp_path / "a", progress=False)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "b", callbacks=[StopAt(15)], progress=False)  # epoch 2, after the step-4 checkpoint of it
    ck = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"]) == (2, 4)
    resumed = fit(cfg, tmp_path / "b", resume=True, progress=False)
    a, b = load_selected(tmp_path / "a" / "best")[0], load_selected(tmp_path / "b" / "best")[0]
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k
    assert [m.train_loss for m in resumed.history] == pytest.approx([m.train_loss for m in full.history], abs=1e-6)
    assert resumed.test.acc == full.test.acc


@pytest.mark.parametrize("resumed", [False, True])
def test_the_selected_dev_scores_are_those_of_the_weights_in_best(tiny_snli, tmp_path, resumed, monkeypatch):
    """The end reuses the best epoch's own dev pass instead of a second one; after a resume that pass is
    not in memory (it is not checkpointed) and dev is scored again. Either way: the weights in best/."""
    import bertnli.train.fit

    cfg = tiny_cfg(
        tiny_snli, tmp_path, epochs=4, eval_test=False, checkpoint_every=3, limit_train=160
    )  # 10 steps/epoch
    if resumed:
        with pytest.raises(KeyboardInterrupt):
            fit(
                cfg, tmp_path / "run", callbacks=[StopAt(35)], progress=False
            )  # in epoch 4: epochs 1-3 only in the checkpoint
    passes = []
    monkeypatch.setattr(
        bertnli.train.fit, "evaluate", lambda *a, **k: passes.append(1) or evaluate(*a, **k)
    )  # counts the real passes
    r = fit(cfg, tmp_path / "run", resume=resumed, progress=False)
    assert r.test is None and r.dev.acc == r.best_dev_acc
    epochs_run = 1 if resumed else 4
    assert len(passes) == epochs_run + (resumed and r.best_epoch < 4)  # a second pass only where the best one was lost
    fresh = evaluate(load_selected(tmp_path / "run" / "best")[0], prepare(cfg).dev)
    assert (fresh.preds == r.dev.preds).all() and fresh.probs == pytest.approx(r.dev.probs, abs=1e-5)
    assert fresh.loss == pytest.approx(r.dev.loss, abs=1e-5)


def test_nan_loss_fails_loudly(tiny_snli, tmp_path):
    cfg = tiny_cfg(tiny_snli, tmp_path)
    prep = prepare(cfg)
    with torch.no_grad():
        prep.model.classifier.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 1 step 1"):
        fit(cfg, tmp_path / "run", prepared=prep, progress=False)


def test_resume_with_a_damaged_checkpoint_is_a_clear_error(tiny_snli, tmp_path):
    cfg = tiny_cfg(tiny_snli, tmp_path, epochs=1)
    fit(cfg, tmp_path / "run", progress=False)
    (tmp_path / "run" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(BertnliError, match="cannot resume .* damaged"):
        fit(cfg, tmp_path / "run", resume=True, progress=False)


def test_missing_train_split_is_named(tmp_path, tiny_snli):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "snli_1.0_dev.jsonl.gz").write_bytes((tiny_snli / "snli_1.0_dev.jsonl.gz").read_bytes())
    with pytest.raises(BertnliError, match="no train split"):
        fit(tiny_cfg(tmp_path / "d", tmp_path), tmp_path / "run", progress=False)


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(tiny_snli, tmp_path, mlflow_uri):
    """torchrun --nproc_per_node 2 (gloo) gives the single-process result for the same global batch.

    In fp32 (--no-amp), to 1e-4: under bf16 autocast (the default on CPUs with native bf16) the two
    batch splits round differently, by about 1e-4 in the loss."""
    two, one = _ddp_and_one_process(tiny_snli, tmp_path, mlflow_uri, batch_size=16, limit_train=160, port=29613)
    for h1, h2 in zip(one.history, two["history"], strict=True):
        assert h2["train_loss"] == pytest.approx(h1.train_loss, abs=1e-4)
        assert h2["dev_loss"] == pytest.approx(h1.dev_loss, abs=1e-4)
    assert two["best_dev_acc"] == pytest.approx(one.best_dev_acc, abs=1e-9)


def _ddp_and_one_process(data, tmp_path, mlflow_uri, batch_size, limit_train, port):
    """`bertnli-exp train` under torchrun (2 CPU processes, gloo; rank 0 records to MLflow), then the same
    configuration (read back from the run's config.json) fitted in one process, here: (DDP result.json, FitResult).
    """
    from bertnli.config import load_config

    args = [
        "--model",
        "tiny-d2l-random",
        "--data",
        str(data),
        "--epochs",
        "2",
        "--batch-size",
        str(batch_size),
        "--lr",
        "2e-3",
        "--max-len",
        "32",
        "--schedule",
        "constant",
        "--optimizer",
        "adam",
        "--dropout",
        "0",
        "--limit-train",
        str(limit_train),
        "--no-amp",
        "--cache-dir",
        str(tmp_path / "enc"),
        "--tracking-uri",
        mlflow_uri,
        "--no-progress",
    ]
    ddp = _torchrun(["-m", "bertnli.cli", "train", *args, "--out", str(tmp_path / "two")], port=port)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    cfg = load_config(None, json.loads((tmp_path / "two" / "config.json").read_text()))
    assert (cfg.batch_size, cfg.limit_train, cfg.amp, cfg.dropout) == (batch_size, limit_train, False, 0.0)
    one = fit(cfg, tmp_path / "one", progress=False)
    return json.loads((tmp_path / "two" / "result.json").read_text()), one


def _torchrun(args, nproc=2, port=29614, timeout=180, **env):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(port),
            *args,
        ],
        cwd=ROOT,
        env=run_env(OMP_NUM_THREADS="1", **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.parametrize("n_train", [33, 35])
def test_ddp_uneven_last_batch_matches_one_process(tiny_snli, tmp_path, mlflow_uri, n_train):
    """A last global batch of 1 (33 = 8 x 4 + 1) leaves rank 1 with nothing: it must neither crash nor hang the
    other rank. A last batch of 3 (35) splits 2 + 1: every example must weigh the same, as in one process."""
    two, one = _ddp_and_one_process(
        tiny_snli, tmp_path, mlflow_uri, batch_size=4, limit_train=n_train, port=29615 + n_train
    )
    for h1, h2 in zip(one.history, two["history"], strict=True):
        assert h2["train_loss"] == pytest.approx(h1.train_loss, abs=1e-4)
        assert h2["dev_loss"] == pytest.approx(h1.dev_loss, abs=1e-4)


@pytest.mark.slow
def test_ddp_ranks_draw_their_own_dropout_masks(tiny_snli, tmp_path):
    """The same seed on every rank would drop the same units everywhere: less regularisation than one process."""
    r = _torchrun([str(ROOT / "tests" / "ddp_probe.py"), str(tiny_snli)], port=29660, PROBE_OUT=str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    m0, m1 = torch.load(tmp_path / "mask_0.pt"), torch.load(tmp_path / "mask_1.pt")
    assert m0.shape == m1.shape and 0.3 < m0.float().mean() < 0.7  # dropout 0.5 really dropped about half
    assert not torch.equal(m0, m1)


@pytest.mark.slow
def test_sigkill_of_a_train_process_mid_epoch_then_resume_equals_uninterrupted(tmp_path, new_store):
    """A real `bertnli-exp train` process killed with SIGKILL (no handler runs) in the middle of epoch 2.

    Stated tolerance: the resumed run's selected weights equal the uninterrupted run's to 1e-6,
    and their dev/test accuracies are identical; the MLflow run is the same one, ends FINISHED.
    The uninterrupted reference is the same configuration (the killed run's config.json) fitted in
    this process; the killed and the resumed run are real processes.
    """
    import os
    import signal
    import time

    from conftest import make_rows, write_jsonl_gz
    from mlflow import MlflowClient

    from bertnli.config import load_config

    data = tmp_path / "snli"
    data.mkdir()
    for split, n, seed in (("train", 1200, 11), ("dev", 200, 12), ("test", 200, 13)):
        write_jsonl_gz(data / f"snli_1.0_{split}.jsonl.gz", make_rows(n, seed))
    uri = new_store(tmp_path / "mlflow.db")
    train = [
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
        "--seed",
        "3",
        "--cache-dir",
        str(tmp_path / "enc"),
        "--tracking-uri",
        uri,
        "--out",
        str(tmp_path / "killed"),
        "--no-progress",
    ]
    proc = subprocess.Popen(train, cwd=ROOT, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last, deadline, ck = tmp_path / "killed" / "last.pt", time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        try:
            ck = torch.load(last, weights_only=True, map_location="cpu")
        except Exception:  # not written yet, or being replaced this instant
            ck = None
        if ck and ck["epoch"] == 2 and ck["step_in_epoch"] > 0:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-epoch"
    ck = torch.load(last, weights_only=True, map_location="cpu")
    cfg = load_config(None, json.loads((tmp_path / "killed" / "config.json").read_text()))
    steps_per_epoch = -(-len(prepare(cfg).train) // cfg.batch_size)
    assert ck["epoch"] == 2 and 0 < ck["step_in_epoch"] < steps_per_epoch  # what survived: a mid-epoch-2 checkpoint
    run_id = json.loads((tmp_path / "killed" / "mlflow_run.json").read_text())["run_id"]
    c = MlflowClient(uri)
    assert c.get_run(run_id).info.status == "RUNNING"  # SIGKILL leaves no chance to record anything

    resumed = subprocess.run(
        [sys.executable, "-m", "bertnli.cli", "train", "--resume", str(tmp_path / "killed"), "--no-progress"],
        cwd=ROOT,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {last}: epoch 2, step {ck['step_in_epoch']}" in resumed.stdout

    full = fit(cfg, tmp_path / "full", progress=False)  # the uninterrupted run
    assert f"best dev_acc {full.best_dev_acc:.4f} (epoch {full.best_epoch}); test_acc {full.test.acc:.4f};" in (
        resumed.stdout
    )
    done = json.loads((tmp_path / "killed" / "result.json").read_text())
    assert (done["best_epoch"], done["best_dev_acc"], done["test_acc"]) == (
        full.best_epoch,
        full.best_dev_acc,
        full.test.acc,
    )
    assert [h["train_loss"] for h in done["history"]] == pytest.approx([m.train_loss for m in full.history], abs=1e-6)
    a, b = load_selected(tmp_path / "full" / "best")[0], load_selected(tmp_path / "killed" / "best")[0]
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED" and f"run {run_id}" in resumed.stdout  # the same MLflow run, finished
    assert run.data.metrics["test_acc"] == full.test.acc
    assert [m.step for m in c.get_metric_history(run_id, "dev_acc")] == [1, 2, 3]  # each epoch once


@pytest.mark.parametrize("amp", [True, False])
def test_matmuls_run_in_bf16_exactly_where_the_cpu_does_bf16_natively(tiny_snli, tmp_path, amp):
    from bertnli.train.runtime import cpu_has_native_bf16, numeric_precision

    cfg = tiny_cfg(tiny_snli, tmp_path, epochs=1, amp=amp, limit_train=32)
    prep = prepare(cfg)
    seen = set()
    prep.model.classifier.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype))
    fit(cfg, tmp_path / "run", prepared=prep, progress=False)
    expected = torch.bfloat16 if amp and cpu_has_native_bf16() else torch.float32
    assert seen == {expected}
    assert numeric_precision(torch.device("cpu"), amp) == ("bf16-autocast" if expected == torch.bfloat16 else "fp32")


def test_padding_to_a_multiple_of_8_changes_no_result(tiny_snli, tmp_path):
    """Rounded widths only add masked padding: the same probabilities as exact widths, and training the same."""
    from bertnli.data.batches import collate, eval_batches

    cfg = tiny_cfg(tiny_snli, tmp_path, amp=False, dropout=0.0)
    prep = prepare(cfg)
    widths = {collate(prep.dev, idx, multiple=8)["input_ids"].shape[1] for idx in eval_batches(prep.dev.lengths, 7)}
    assert widths and all(w % 8 == 0 or w == cfg.max_len for w in widths)
    exact, rounded = (evaluate(prep.model, prep.dev, 7, amp=False, pad_multiple=m) for m in (1, 8))
    assert torch.allclose(torch.from_numpy(exact.probs), torch.from_numpy(rounded.probs), atol=1e-5)
    runs = [
        fit(tiny_cfg(tiny_snli, tmp_path, epochs=2, amp=False, pad_multiple=m), tmp_path / f"m{m}", progress=False)
        for m in (1, 8)
    ]
    assert [h.train_loss for h in runs[0].history] == pytest.approx([h.train_loss for h in runs[1].history], abs=1e-5)


def test_fp16_with_a_loss_scaler_trains_and_resumes_exactly(tiny_snli, tmp_path):
    """The fallback for GPUs without native bf16, run on the CPU: the scaler's state is part of the checkpoint."""
    import math

    from bertnli.data.batches import train_batches
    from bertnli.train.loop import Loop, train_epoch
    from bertnli.train.optimizer import make_optimizer
    from bertnli.train.runtime import grad_scaler
    from bertnli.train.state import TrainState

    cfg = tiny_cfg(tiny_snli, tmp_path, limit_train=96, batch_size=8)
    device = torch.device("cpu")

    def fresh():
        torch.manual_seed(0)
        model = prepare(cfg).model
        return TrainState(model, make_optimizer(model, cfg, device), grad_scaler(device, "fp16-autocast"))

    enc = prepare(cfg).train
    batches = train_batches(enc.lengths, 8, 0, 1)
    loop = Loop(device, "fp16-autocast", total_steps=len(batches))
    full = fresh()
    train_epoch(full, full.model, enc, batches, cfg, loop)
    assert full.scaler.is_enabled() and full.scaler.get_scale() > 0
    assert math.isfinite(full.accum["loss"]) and full.accum["seen"] == 96

    half = fresh()
    train_epoch(half, half.model, enc, batches, cfg, loop, max_steps=5)
    saved = half.state_dict()
    resumed = fresh()
    resumed.load_state_dict(saved)
    assert resumed.scaler.get_scale() == half.scaler.get_scale()
    train_epoch(resumed, resumed.model, enc, batches, cfg, loop)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


@pytest.mark.slow  # torch.compile's inductor starts compile workers and runs the C++ compiler: processes
def test_compiled_forward_trains_like_eager(tiny_snli, tmp_path):
    """`compile` changes how the forward runs, not what it computes (fp32, no dropout: to 1e-4)."""
    runs = [
        fit(
            tiny_cfg(tiny_snli, tmp_path, epochs=1, limit_train=64, amp=False, compile=c, eval_test=False),
            tmp_path / f"c{c}",
            progress=False,
        )
        for c in (False, True)
    ]
    assert runs[1].history[0].train_loss == pytest.approx(runs[0].history[0].train_loss, abs=1e-4)
    assert runs[1].history[0].dev_loss == pytest.approx(runs[0].history[0].dev_loss, abs=1e-4)
