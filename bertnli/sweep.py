"""The Optuna study: search space from TOML, TPE + median pruning, resumable storage, workers.

Each trial runs in a fresh process (`python -m bertnli.sweep trial ...`), so one trial's
crash, NaN or OOM fails that trial only and frees all its memory. A worker (a thread of
`bertnli-exp sweep`) asks Optuna for a trial, records who runs it (host, pid, heartbeat)
in the trial's attributes, starts the trial process and tells Optuna how it ended.
Running the same command again continues the study until it holds N complete-or-pruned
trials: trials whose worker died (kill -9, power loss) are found by host+pid or a stale
heartbeat, marked FAIL (and their MLflow run FAILED), and their configuration is retried.

MLflow: one parent run per study, reused on resume; one child run per trial with
`mlflow.parentRunId`, statuses FINISHED / KILLED + `optuna.state=PRUNED` / FAILED.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bertnli import BadInput, BertnliError
from bertnli.config import TrackingConfig, TrainConfig, config_from_dict, read_toml

PRUNED_EXIT = 3  # a trial process exits with this when Optuna pruned it
HEARTBEAT_S = 5.0


# ---------------------------------------------------------------- the space and settings


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "float", "int", "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial):
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.name}=" + "|".join(map(str, self.choices))
        return f"{self.name}={self.low:g}:{self.high:g}" + (":log" if self.log else "")


@dataclass(frozen=True)
class SweepConfig:
    base: TrainConfig
    space: tuple[Param, ...]
    trials: int = 20
    study_name: str = "bertnli-sweep"
    storage: str | None = None  # None: a journal file under mlruns/
    seed: int = 0
    workers: int = 1
    timeout: float | None = None  # seconds for this invocation
    pruner_startup_trials: int = 4
    pruner_warmup_epochs: int = 0
    keep_checkpoints: str = "best"  # "best" or "all"
    grace_s: float = 60.0  # heartbeat age after which a RUNNING trial of another host is stale
    max_retries: int = 2  # a failed configuration is tried again at most this often
    fail_limit: int = 3  # stop after this many configurations in a row failed every try (a broken setup)
    out_dir: str = "outputs/sweeps"
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sampler: str = "tpe"  # "random": i.i.d. trials, no pruning, no enqueued cells (expected validation performance is valid)


SWEEP_KEYS = {"trials", "study_name", "storage", "seed", "workers", "timeout", "pruner_startup_trials", "pruner_warmup_epochs",
              "keep_checkpoints", "grace_s", "max_retries", "fail_limit", "out_dir", "sampler"}


def parse_param(name: str, spec: Any) -> Param:
    """TOML `{low, high, log}` / list of choices, or CLI text `1e-5:1e-3:log`, `1:3`, `a|b`."""
    known = {f for f in TrainConfig.__dataclass_fields__}
    if name not in known:
        raise BadInput(f"bad sweep space: {name!r} is not a train setting; use one of {', '.join(sorted(known))}")
    kind_of = str(TrainConfig.__dataclass_fields__[name].type)
    try:
        if isinstance(spec, str):
            if "|" in spec:
                spec = spec.split("|")
            else:
                parts = spec.split(":")
                spec = {"low": float(parts[0]), "high": float(parts[1]), "log": len(parts) > 2 and parts[2] == "log"}
        if isinstance(spec, list):
            if not spec:
                raise ValueError("no choices")
            if "int" in kind_of:
                spec = [int(x) for x in spec]
            elif "float" in kind_of:
                spec = [float(x) for x in spec]
            return Param(name, "categorical", choices=tuple(spec))
        low, high, log = float(spec["low"]), float(spec["high"]), bool(spec.get("log", False))
    except (KeyError, ValueError, IndexError, TypeError) as e:
        raise BadInput(f"bad sweep space for {name}: {spec!r} ({e}); write low:high[:log] or a|b|c") from None
    if not low < high or (log and low <= 0):
        raise BadInput(f"bad sweep space for {name}: need low < high (and low > 0 for log)")
    return Param(name, "int" if "int" in kind_of else "float", low, high, log)


def load_sweep_config(path: str | Path | None, train_overrides: dict[str, Any], sweep_overrides: dict[str, Any],
                      space_overrides: list[str], tracking: TrackingConfig) -> SweepConfig:
    doc = read_toml(path) if path else {}
    train_values = {**doc.get("train", {}), **{k: v for k, v in train_overrides.items() if v is not None}}
    base = config_from_dict(train_values)
    sweep_doc = dict(doc.get("sweep", {}))
    space_doc = dict(sweep_doc.pop("space", {}) or {"lr": {"low": 1e-5, "high": 2e-4, "log": True}})
    for item in space_overrides:
        if "=" not in item:
            raise BadInput(f"bad --space {item!r}; write NAME=low:high[:log] or NAME=a|b|c")
        name, spec = item.split("=", 1)
        space_doc[name.strip()] = spec.strip()
    unknown = set(sweep_doc) - SWEEP_KEYS
    if unknown:
        raise BadInput(f"bad [sweep] setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(SWEEP_KEYS))}")
    values = {**sweep_doc, **{k: v for k, v in sweep_overrides.items() if v is not None}}
    space = tuple(parse_param(k, v) for k, v in space_doc.items())
    cfg = SweepConfig(base=base, space=space, tracking=tracking, **values)
    if cfg.trials < 1 or cfg.workers < 1 or cfg.fail_limit < 1:
        raise BadInput("bad sweep: trials, workers and fail_limit must be at least 1")
    if cfg.keep_checkpoints not in ("best", "all"):
        raise BadInput("bad sweep: keep_checkpoints is best or all")
    if cfg.sampler not in ("tpe", "random"):
        raise BadInput(f"bad sweep: sampler {cfg.sampler!r}; use tpe or random")
    return cfg


def check_runnable(cfg: SweepConfig) -> None:
    """Refuse, before a study or run is created, a sweep whose every trial would fail the same way."""
    from bertnli.engine import resolve_device
    from bertnli.model import check_model_spec

    resolve_device(cfg.base.device)
    for spec in next((p.choices for p in cfg.space if p.name == "model"), (cfg.base.model,)):
        check_model_spec(str(spec))
    if not Path(cfg.base.data).is_dir():
        raise BadInput(f"data folder {cfg.base.data} not found; give --data a folder with snli_1.0_*.jsonl[.gz]")


# ---------------------------------------------------------------- storage and study


def default_storage() -> str:
    """A journal file beside the MLflow store: safe for several processes on one host."""
    return str((Path.cwd() / "mlruns" / "optuna-journal.log").resolve())


def _is_outage(e: BaseException | None) -> bool:
    """True when `e` (or what caused it) says the database could not be reached, not that a query was wrong."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    while e is not None:
        if isinstance(e, (OperationalError, InterfaceError)) or (isinstance(e, DBAPIError) and e.connection_invalidated):
            return True
        e = e.__cause__ or e.__context__
    return False


class OutageTolerantStorage:
    """An Optuna RDB storage whose calls wait out a database restart instead of failing the trial.

    A sweep runs for hours; a PostgreSQL restart or failover of a few seconds must not turn
    running trials into FAIL. Calls are retried with backoff for up to `patience_s`.
    """

    def __init__(self, inner, patience_s: float = 300.0):
        self._inner, self._patience_s = inner, patience_s

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            deadline, delay = time.time() + self._patience_s, 0.5
            while True:
                try:
                    return attr(*args, **kwargs)
                except Exception as e:
                    if not _is_outage(e) or time.time() > deadline:
                        raise
                    print(f"bertnli: Optuna storage unreachable ({type(e).__name__}); retrying in {delay:.1f} s", file=sys.stderr, flush=True)
                    time.sleep(delay)
                    delay = min(delay * 2, 10.0)

        return call


def open_storage(url: str | None):
    import optuna

    url = url or default_storage()
    if "://" in url:
        kwargs = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs = {"connect_args": {"timeout": 60}}
        # Workers started together on a fresh database race in Optuna's table creation; the loser
        # finds the tables made a moment later.
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

        for attempt in range(6):
            try:
                return OutageTolerantStorage(optuna.storages.RDBStorage(url, engine_kwargs=kwargs))
            except (ArgumentError, NoSuchModuleError, ImportError) as e:
                raise BadInput(f"--storage {url.split('@')[-1]!r} is not a usable database URL ({str(e).splitlines()[0][:120]}); "
                               "give postgresql://user@host/db, sqlite:///file.db or a journal file path") from None
            except SQLAlchemyError as e:
                if attempt == 5:
                    raise BertnliError(f"cannot open Optuna storage {url.split('@')[-1]}: {str(e).splitlines()[0][:200]}") from None
                time.sleep(0.5 + random.random() * 2 ** attempt)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if Path(url).is_dir():
        raise BadInput(f"--storage {url} is a folder; give a journal file path such as {Path(url) / 'optuna-journal.log'}")
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(url))


def sampler_for(cfg: SweepConfig, number: int = 0):
    """TPE seeded by (sweep seed, trial number).

    One seed per process would make every worker process draw the same "random" configurations
    (a 4-process sweep ran trials with identical lr); seeding by trial number keeps a sweep
    reproducible and makes each trial's draw its own, however many processes ask.
    """
    import optuna

    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed * 1_000_003 + number)
    return optuna.samplers.TPESampler(seed=cfg.seed * 1_000_003 + number, n_startup_trials=max(4, len(cells(cfg))))


def sampler_tag(cfg: SweepConfig) -> str:
    return f"RandomSampler(seed={cfg.seed})" if cfg.sampler == "random" else f"TPESampler(seed={cfg.seed})"


def pruner_tag(cfg: SweepConfig) -> str:
    if cfg.sampler == "random":
        return "NopPruner()"
    return f"MedianPruner(n_startup_trials={cfg.pruner_startup_trials}, n_warmup_steps={cfg.pruner_warmup_epochs})"


def make_study(cfg: SweepConfig, storage=None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = sampler_for(cfg)
    pruner = (optuna.pruners.NopPruner() if cfg.sampler == "random" else  # a random design is only i.i.d. unpruned
              optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup_trials, n_warmup_steps=cfg.pruner_warmup_epochs))
    return optuna.create_study(study_name=cfg.study_name, storage=storage or open_storage(cfg.storage), sampler=sampler,
                               pruner=pruner, direction="maximize", load_if_exists=True)


def cells(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Every model x truncation combination in the space (each is tried early)."""
    grid = [p for p in cfg.space if p.kind == "categorical" and p.name in ("model", "truncation")]
    combos: list[dict[str, Any]] = [{}]
    for p in grid:
        combos = [{**c, p.name: v} for c in combos for v in p.choices]
    return combos if grid else []


def _states():
    from optuna.trial import TrialState

    return TrialState


def done_count(study) -> int:
    S = _states()
    return sum(t.state in (S.COMPLETE, S.PRUNED) for t in study.get_trials(deepcopy=False))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def reap_stale_trials(study, cfg: SweepConfig, log=print) -> list[int]:
    """Fail RUNNING trials whose worker is gone; retry their configuration. Returns the numbers failed."""
    S = _states()
    storage, failed = study._storage, []
    host = socket.gethostname()
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(S.RUNNING,)):
        owner = t.user_attrs.get("worker", {})
        beat = t.user_attrs.get("heartbeat", t.datetime_start.timestamp() if t.datetime_start else 0)
        dead = (owner.get("host") == host and not _alive(owner.get("pid", -1))) if owner else False
        stale = now - beat > cfg.grace_s
        if not (dead or stale):
            continue
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            storage.set_trial_state_values(t._trial_id, state=S.FAIL)
        except UpdateFinishedTrialError:
            continue
        failed.append(t.number)
        end_orphan_run(cfg, trial_run_id(cfg, t), "worker died (stale trial found on resume)")
        retry(study, t, cfg, log)
        log(f"trial {t.number}: its worker is gone ({'pid dead' if dead else 'no heartbeat'}); marked FAIL")
    return failed


def retry(study, t, cfg: SweepConfig, log=print) -> None:
    """Queue the same configuration again, at most max_retries times."""
    tries = int(t.user_attrs.get("retry_of_count", 0))
    if tries >= cfg.max_retries:
        log(f"trial {t.number}: configuration failed {tries + 1} times; not retried again")
        return
    study.enqueue_trial(t.params, user_attrs={"retry_of": t.user_attrs.get("retry_of", t.number), "retry_of_count": tries + 1})


def study_dir(cfg: SweepConfig) -> Path:
    return Path(cfg.out_dir) / cfg.study_name


def trial_dir(cfg: SweepConfig, number: int) -> Path:
    """Where trial `number` writes its run folder (and, beside it, `trial-NNN.log`)."""
    return study_dir(cfg) / f"trial-{number:03d}"


def trial_run_id(cfg: SweepConfig, t) -> str | None:
    """A trial's MLflow run: from Optuna, else the run folder's marker, else by its tags in MLflow."""
    if t.user_attrs.get("mlflow_run_id"):
        return t.user_attrs["mlflow_run_id"]
    marker = trial_dir(cfg, t.number) / "mlflow_run.json"
    if marker.is_file():
        return json.loads(marker.read_text())["run_id"]
    from bertnli.tracking import client

    c = client(cfg.tracking.tracking_uri)
    exp = c.get_experiment_by_name(cfg.tracking.experiment or cfg.study_name)
    if exp is None:
        return None
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`optuna.trial` = '{t.number}' and tags.`optuna.study` = '{cfg.study_name}'")
    return runs[0].info.run_id if runs else None


def end_orphan_run(cfg: SweepConfig, run_id: str | None, why: str) -> None:
    if not run_id:
        return
    from bertnli.tracking import client

    c = client(cfg.tracking.tracking_uri)
    try:
        if c.get_run(run_id).info.status == "RUNNING":
            c.set_tag(run_id, "bertnli.error", why)
            c.set_terminated(run_id, "FAILED")
    except Exception:  # noqa: BLE001 - a run that cannot be found has nothing to end
        pass


# ---------------------------------------------------------------- MLflow parent run


def parent_run(study, cfg: SweepConfig, storage_url: str) -> str:
    """The study's parent run: reused on resume (its id is a study attribute), else created."""
    from bertnli.tracking import client, code_version, get_or_create_experiment, default_tracking_uri

    uri = cfg.tracking.tracking_uri or default_tracking_uri()
    c = client(uri)
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id:
        try:
            if c.get_run(run_id).info.status != "RUNNING":
                c.update_run(run_id, status="RUNNING")
            return run_id
        except Exception:  # noqa: BLE001 - parent deleted from MLflow: make a new one
            pass
    exp = get_or_create_experiment(c, cfg.tracking.experiment or cfg.study_name, uri)
    tags = {"bertnli.role": "sweep-parent", "bertnli.study": cfg.study_name, "bertnli.storage": storage_url,
            "bertnli.sampler": sampler_tag(cfg), "bertnli.pruner": pruner_tag(cfg),
            "bertnli.space": "; ".join(p.describe() for p in cfg.space), **code_version()}
    run = c.create_run(exp, run_name=f"sweep-{cfg.study_name}", tags=tags)
    from mlflow.entities import Param as MParam

    fixed = {k: v for k, v in cfg.base.to_flat_dict().items() if k not in {p.name for p in cfg.space}}
    c.log_batch(run.info.run_id, params=[MParam(f"fixed.{k}", str(v)) for k, v in fixed.items()])
    # Several processes may start the same study at once, and Optuna has no compare-and-set for
    # study attributes: every starter adopts the earliest parent of this study, losers delete theirs.
    rivals = c.search_runs([exp], filter_string=f"tags.`bertnli.role` = 'sweep-parent' and tags.`bertnli.study` = '{cfg.study_name}'",
                           max_results=100)
    winner = min(rivals, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if rivals else run.info.run_id
    if winner != run.info.run_id:
        c.delete_run(run.info.run_id)
    study.set_user_attr("mlflow_parent_run_id", winner)
    return winner


# ---------------------------------------------------------------- one trial, in its own process


class PruneOnDev:
    """Engine callback: report dev accuracy to Optuna each epoch; raise TrialPruned when told."""

    def __init__(self, trial, parent_pid: int | None = None, epochs: int | None = None):
        self.trial, self.parent_pid, self.epochs = trial, parent_pid, epochs

    def on_fit_start(self, info):
        pass

    def on_step(self, step, loss):
        if self.parent_pid and os.getppid() != self.parent_pid:  # our worker is gone: stop
            os._exit(1)

    def on_epoch_end(self, m):
        import optuna

        self.trial.report(m.dev_acc, m.epoch)
        if m.epoch < (self.epochs or m.epoch + 1) and self.trial.should_prune():  # after the last epoch there is nothing left to save
            raise optuna.TrialPruned(f"pruned after epoch {m.epoch} (dev_acc {m.dev_acc:.4f})")

    def on_fit_end(self, result):
        pass


def classify(exc: BaseException) -> tuple[str, dict[str, str]]:
    import optuna

    from bertnli.tracking import default_classify

    if isinstance(exc, optuna.TrialPruned):
        return "KILLED", {"optuna.state": "PRUNED", "bertnli.end": str(exc)}
    status, tags = default_classify(exc)
    return status, {**tags, "optuna.state": "FAIL" if status == "FAILED" else "KILLED"}


def run_trial(cfg: SweepConfig, trial_number: int, parent_run_id: str, parent_pid: int | None) -> int:
    """Body of a trial process: train with the trial's params; the exit code says how it ended."""
    import optuna

    from bertnli.tracking import train_run

    study = make_study(cfg)
    t = study.get_trials(deepcopy=False)[trial_number]
    trial = optuna.trial.Trial(study, t._trial_id)
    train_cfg = cfg.base.replace(**t.params)
    out = trial_dir(cfg, trial_number)
    shutil.rmtree(out, ignore_errors=True)  # a retried number never happens; a stale folder is junk
    tags = {"optuna.trial": str(trial_number), "optuna.study": cfg.study_name, "bertnli.role": "sweep-trial"}
    if "retry_of" in t.user_attrs:
        tags["bertnli.retry_of"] = str(t.user_attrs["retry_of"])
    tracking = TrackingConfig(cfg.tracking.tracking_uri, cfg.tracking.experiment or cfg.study_name,
                              f"trial-{trial_number:03d}", tags)

    try:
        result, run_id = train_run(train_cfg, out, tracking, parent_run_id=parent_run_id,
                                   callbacks=[PruneOnDev(trial, parent_pid, train_cfg.epochs)], classify=classify,
                                   keep_checkpoint=cfg.keep_checkpoints == "all", progress=False)
    except optuna.TrialPruned:
        return PRUNED_EXIT
    finally:
        marker = out / "mlflow_run.json"
        if marker.is_file():
            study._storage.set_trial_user_attr(t._trial_id, "mlflow_run_id", json.loads(marker.read_text())["run_id"])
    summary = {"value": result.best_dev_acc, "test_acc": result.test.acc if result.test else None,
               "best_epoch": result.best_epoch, "run_id": run_id, "wall_seconds": result.wall_seconds,
               "train_seconds": sum(h.train_seconds for h in result.history)}
    (out / "trial.json").write_text(json.dumps(summary))
    return 0


# ---------------------------------------------------------------- workers


def _die_with_parent() -> None:
    """Linux: the trial process gets SIGKILL when its worker dies, so no orphan keeps training."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Outcome:
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    seconds: float
    test_acc: float | None = None
    train_seconds: float = 0.0
    error: str = ""


class Sweep:
    def __init__(self, cfg: SweepConfig, log=print):
        check_runnable(cfg)
        self.cfg, self.log = cfg, log
        self.storage_url = cfg.storage or default_storage()
        self.study = make_study(cfg)
        self.lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self.stop = threading.Event()
        self.deadline = time.time() + cfg.timeout if cfg.timeout else None
        self.active: set[int] = set()
        self.failed_in_a_row: list[Outcome] = []

    def seed_cells(self) -> None:
        """Enqueue every model x truncation cell once per study (other params sampled)."""
        if self.study.user_attrs.get("cells_enqueued") or self.cfg.sampler == "random":  # enqueued trials are not random draws
            return
        self.study.set_user_attr("cells_enqueued", True)
        for cell in cells(self.cfg):
            self.study.enqueue_trial(cell, skip_if_exists=True)

    def _counts(self) -> tuple[int, int]:
        """(complete-or-pruned, running) trials, from one read of the storage."""
        S = _states()
        trials = self.study.get_trials(deepcopy=False)
        return sum(t.state in (S.COMPLETE, S.PRUNED) for t in trials), sum(t.state == S.RUNNING for t in trials)

    def _worker(self, parent_run_id: str, bar) -> None:
        while not self.stop.is_set():
            if self.deadline and time.time() > self.deadline:
                return
            with self.lock:
                done, running = self._counts()
                if done + running >= self.cfg.trials:
                    if done >= self.cfg.trials or not running:
                        return
                    trial = None
                else:
                    trial = self.study.ask()
                    if self._step_aside(trial):
                        time.sleep(random.uniform(0.2, 2.0))  # two that both stepped aside do not collide again
                        continue
                    self.study.sampler = sampler_for(self.cfg, trial.number)
                    for p in self.cfg.space:
                        p.suggest(trial)
                    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
                    trial.set_user_attr("heartbeat", time.time())
            if trial is None:  # others are still running trials that may fail: wait and look again
                time.sleep(1.0)
                with self.lock:
                    reap_stale_trials(self.study, self.cfg, self.log)
                continue
            outcome = self._run_one(trial, parent_run_id)
            with self.lock:
                self.outcomes.append(outcome)
                self.failed_in_a_row = self.failed_in_a_row + [outcome] if outcome.state == "FAIL" else []
                if len(self.failed_in_a_row) >= self.cfg.fail_limit * (self.cfg.max_retries + 1):
                    self.stop.set()  # every trial fails: the setup is broken, not the configurations
                bar.update(1 if outcome.state in ("COMPLETE", "PRUNED") else 0)
                self._keep_best_checkpoint()
            params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in outcome.params.items())
            value = f"dev_acc {outcome.value:.4f}" if outcome.value is not None else ""
            self.log(f"trial {outcome.number:3d} {outcome.state:8} {value:15} {params} ({outcome.seconds:.0f} s)")

    def _step_aside(self, trial) -> bool:
        """Exactly N trials, even with workers on many hosts asking at the same moment.

        Checked after `ask()`: a worker that then sees more than N running-or-done trials
        withdraws its own (FAIL, marked `stepped_aside`, its queued configuration put back).
        Of two racing workers, the later to check always sees the other, so both never stay;
        both may step aside, and then the loop simply asks again.
        """
        S = _states()
        live = sum(t.state in (S.COMPLETE, S.PRUNED, S.RUNNING) for t in self.study.get_trials(deepcopy=False))
        if live <= self.cfg.trials:
            return False
        frozen = self.study._storage.get_trial(trial._trial_id)
        trial.set_user_attr("stepped_aside", True)
        self.study.tell(trial, state=S.FAIL)
        if "fixed_params" in frozen.system_attrs:  # it came from the queue (a cell or a retry): queue it again
            self.study.enqueue_trial(frozen.system_attrs["fixed_params"], user_attrs=dict(frozen.user_attrs))
        return True

    def _run_one(self, trial, parent_run_id: str) -> Outcome:
        S = _states()
        t0 = time.time()
        # The trial runs this very bertnli, wherever it was imported from (a checkout, a worktree).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                         os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "bertnli.sweep", "trial", "--spec", str(self.spec_path), "--number", str(trial.number),
               "--parent-run", parent_run_id, "--parent-pid", str(os.getpid())]
        out = trial_dir(self.cfg, trial.number)
        logf = out.with_name(out.name + ".log")
        logf.parent.mkdir(parents=True, exist_ok=True)
        with open(logf, "w") as log_handle:
            proc = subprocess.Popen(cmd, stdout=log_handle, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
            self.active.add(proc.pid)
            while proc.poll() is None:
                try:
                    proc.wait(timeout=HEARTBEAT_S)
                except subprocess.TimeoutExpired:
                    self.study._storage.set_trial_user_attr(trial._trial_id, "heartbeat", time.time())
            self.active.discard(proc.pid)
        seconds = time.time() - t0
        frozen = self.study._storage.get_trial(trial._trial_id)
        if proc.returncode == 0 and (out / "trial.json").is_file():
            summary = json.loads((out / "trial.json").read_text())
            trial.set_user_attr("test_acc", summary["test_acc"])
            trial.set_user_attr("train_seconds", summary["train_seconds"])
            trial.set_user_attr("trial_wall_seconds", seconds)
            self.study.tell(trial, summary["value"])
            return Outcome(trial.number, "COMPLETE", summary["value"], frozen.params, seconds, summary["test_acc"], summary["train_seconds"])
        if proc.returncode == PRUNED_EXIT:
            self.study.tell(trial, state=S.PRUNED)
            last = max(frozen.intermediate_values.items(), default=(0, None))[1]
            return Outcome(trial.number, "PRUNED", last, frozen.params, seconds)
        tail = logf.read_text()[-400:].strip().splitlines()[-1:] if logf.is_file() else []
        error = tail[0] if tail else f"exit {proc.returncode}"
        trial.set_user_attr("error", error)
        self.study.tell(trial, state=S.FAIL)
        end_orphan_run(self.cfg, trial_run_id(self.cfg, frozen), f"trial process exited {proc.returncode}")
        retry(self.study, self.study._storage.get_trial(trial._trial_id), self.cfg, self.log)
        return Outcome(trial.number, "FAIL", None, frozen.params, seconds, error=f"{error} ({logf})")

    def _keep_best_checkpoint(self) -> None:
        """Trials keep no optimizer state; only the best complete trial keeps its weights (unless 'all')."""
        S = _states()
        trials = self.study.get_trials(deepcopy=False)
        running = {t.number for t in trials if t.state == S.RUNNING}
        number = lambda p: int(p.parent.name.split("-")[1])  # noqa: E731 - trial-NNN/<file>
        for last in study_dir(self.cfg).glob("trial-*/last.pt"):
            if number(last) not in running:
                last.unlink(missing_ok=True)
        if self.cfg.keep_checkpoints == "all":
            return
        complete = [t for t in trials if t.state == S.COMPLETE]
        best = max(complete, key=lambda t: t.value).number if complete else None
        for ck in study_dir(self.cfg).glob("trial-*/best"):
            if number(ck) != best and number(ck) not in running:
                shutil.rmtree(ck, ignore_errors=True)

    def run(self) -> dict[str, Any]:
        from tqdm import tqdm

        t0 = time.time()
        reap_stale_trials(self.study, self.cfg, self.log)
        self.seed_cells()
        parent = parent_run(self.study, self.cfg, self.storage_url)
        root = study_dir(self.cfg)
        root.mkdir(parents=True, exist_ok=True)
        self.spec_path = root / "sweep-spec.json"
        self.spec_path.write_text(json.dumps(spec_to_json(self.cfg)))
        done = done_count(self.study)
        self.log(f"study {self.cfg.study_name}: {done}/{self.cfg.trials} trials done; "
                 f"storage {self.storage_url}; MLflow parent run {parent}")
        bar = tqdm(total=self.cfg.trials, initial=min(done, self.cfg.trials), desc="trials", unit="trial")
        threads = [threading.Thread(target=self._worker, args=(parent, bar), daemon=True) for _ in range(self.cfg.workers)]
        status = "FINISHED"
        try:
            for th in threads:
                th.start()
            while any(th.is_alive() for th in threads):
                for th in threads:
                    th.join(timeout=0.5)
        except KeyboardInterrupt:
            self.stop.set()
            for pid in list(self.active):
                try:
                    os.kill(pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
            for th in threads:
                th.join(timeout=30)
            status = "KILLED"
            raise
        finally:
            bar.close()
            if done_count(self.study) < self.cfg.trials and status == "FINISHED":
                broken = self.stop.is_set() and bool(self.failed_in_a_row)
                status = "KILLED" if (self.stop.is_set() or self.deadline) and not broken else "FAILED"
            summary = finish_parent(self.study, self.cfg, parent, status, time.time() - t0)
        summary["wall_seconds"] = time.time() - t0
        summary["outcomes"] = self.outcomes
        if self.failed_in_a_row and self.stop.is_set():
            raise BertnliError(f"stopped: the last {len(self.failed_in_a_row)} trials all failed (a broken setup, not bad luck); "
                               f"the last said: {self.failed_in_a_row[-1].error}")
        return summary


def spec_to_json(cfg: SweepConfig) -> dict:
    from dataclasses import asdict

    d = asdict(cfg)
    d["space"] = [asdict(p) for p in cfg.space]
    return d


def spec_from_json(d: dict) -> SweepConfig:
    d = dict(d)
    d["base"] = TrainConfig(**d["base"])
    d["space"] = tuple(Param(**{**p, "choices": tuple(p["choices"])}) for p in d["space"])
    d["tracking"] = TrackingConfig(**d["tracking"])
    return SweepConfig(**d)


# ---------------------------------------------------------------- the parent's summary


def trials_frame(study):
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "dev_acc": t.value, "test_acc": t.user_attrs.get("test_acc"),
                     **{f"param_{k}": v for k, v in t.params.items()},
                     "epochs_reported": len(t.intermediate_values), "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
                     "retry_of": t.user_attrs.get("retry_of"), "seconds": t.user_attrs.get("trial_wall_seconds"),
                     "train_seconds": t.user_attrs.get("train_seconds")})
    return pd.DataFrame(rows)


def _with_retries(write: Callable[[], Any], attempts: int = 4) -> Any:
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            return write()
        except MlflowException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 + random.random() * 0.5)


def finish_parent(study, cfg: SweepConfig, parent_run_id: str, status: str, wall: float) -> dict[str, Any]:
    """Best trial's params and metrics, the trials table and Optuna's plots onto the parent run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bertnli.tracking import client

    c = client(cfg.tracking.tracking_uri)
    S = _states()
    frame = trials_frame(study)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == S.COMPLETE]
    out: dict[str, Any] = {"parent_run_id": parent_run_id, "done": done_count(study), "trials": frame}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frame.to_csv(tmp / "trials.csv", index=False)
        c.log_artifact(parent_run_id, str(tmp / "trials.csv"))
        if complete:
            best = max(complete, key=lambda t: t.value)
            out["best"] = best
            # Workers finishing together all write these; MLflow's SQL store inserts a new tag key
            # after checking it is absent, so two writers can collide: the loser writes again.
            def tag(key: str, value: Any) -> None:
                _with_retries(lambda: c.set_tag(parent_run_id, key, str(value)))

            _with_retries(lambda: c.log_metric(parent_run_id, "best_dev_acc", best.value))
            if best.user_attrs.get("test_acc") is not None:
                _with_retries(lambda: c.log_metric(parent_run_id, "best_trial_test_acc", best.user_attrs["test_acc"]))
            for k, v in best.params.items():
                tag(f"best.{k}", v)
            tag("best.trial", best.number)
            tag("best.mlflow_run_id", best.user_attrs.get("mlflow_run_id"))
            for key, value in _verdict_tags(cfg, parent_run_id).items():
                tag(key, value)
            _log_best_checkpoint(c, cfg, best)
            plots = {"optimization_history.png": "plot_optimization_history", "param_importances.png": "plot_param_importances",
                     "slice.png": "plot_slice", "parallel_coordinate.png": "plot_parallel_coordinate"}
            import optuna.visualization.matplotlib as ovm
            import warnings

            for name, fn in plots.items():
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        ax = getattr(ovm, fn)(study)
                        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
                        fig.set_size_inches(10, 5)
                        fig.tight_layout()
                        fig.savefig(tmp / name, dpi=100)
                    plt.close(fig)
                    c.log_artifact(parent_run_id, str(tmp / name), "plots")
                except Exception as e:  # noqa: BLE001 - e.g. importances need >1 complete trial
                    why = str(e)[:200]
                    _with_retries(lambda key=f"bertnli.plot_skipped.{name}", why=why: c.set_tag(parent_run_id, key, why))
    _with_retries(lambda: c.log_metric(parent_run_id, "trials_done", out["done"]))
    _with_retries(lambda: c.set_terminated(parent_run_id, status))
    return out


def _verdict_tags(cfg: SweepConfig, parent_run_id: str) -> dict[str, str]:
    """Best cell vs runner-up, paired (bertnli.compare); a sweep never fails for want of a verdict."""
    from bertnli.compare import sweep_verdict
    from bertnli.report import load_runs

    try:
        runs = load_runs(None, cfg.tracking.tracking_uri, parent_run_id=parent_run_id)
        keys = [p.name for p in cfg.space if p.kind == "categorical"] or ["model", "truncation"]
        return sweep_verdict(runs, keys, cfg.tracking.tracking_uri)
    except Exception as e:  # noqa: BLE001 - e.g. trials recorded before per-example predictions
        return {"bertnli.verdict": f"not computed: {str(e).splitlines()[0][:200]}"}


def _log_best_checkpoint(c, cfg: SweepConfig, best) -> None:
    run_id = best.user_attrs.get("mlflow_run_id")
    folder = trial_dir(cfg, best.number) / "best"
    if not run_id or not folder.is_dir():
        return
    if c.get_run(run_id).data.tags.get("bertnli.checkpoint_logged") == "true":
        return
    from bertnli.tracking import log_selected

    log_selected(c, run_id, folder)  # checkpoint/ artifacts + the pyfunc model (runs:/<id>/model), for --register
    _with_retries(lambda: c.set_tag(run_id, "bertnli.checkpoint_logged", "true"))


# ---------------------------------------------------------------- entry for trial processes


def _trial_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bertnli.sweep trial")
    ap.add_argument("command", choices=["trial"])
    ap.add_argument("--spec", required=True)
    ap.add_argument("--number", type=int, required=True)
    ap.add_argument("--parent-run", required=True)
    ap.add_argument("--parent-pid", type=int, default=None)
    a = ap.parse_args(argv)
    cfg = spec_from_json(json.loads(Path(a.spec).read_text()))
    try:
        return run_trial(cfg, a.number, a.parent_run, a.parent_pid)
    except BertnliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_trial_main(sys.argv[1:]))

