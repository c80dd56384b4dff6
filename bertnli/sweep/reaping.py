"""Trials whose worker is gone: adopt a result that was recorded, else fail the trial and retry it.

A worker can die (kill -9, power loss, a host gone) at any point of a trial. What its trial
left behind decides what happens, so that Optuna and MLflow never disagree and nothing that
finished is trained again:
- a summary (`trial.json`) or a FINISHED MLflow run: the result is adopted (COMPLETE);
- a run KILLED with `optuna.state=PRUNED`: adopted as PRUNED;
- anything else: FAIL (its MLflow run FAILED) and the configuration is queued again, to resume
  from the failed attempt's last checkpoint (RetryHeartbeatStaleTrialCallback's attributes).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from bertnli import BadInput
from bertnli.analysis.pareto import ACCURACY, MEASURED
from bertnli.files import atomic_write
from bertnli.retry import policy
from bertnli.sweep.objectives import recorded_attrs, summary_measures, values_to_tell
from bertnli.sweep.rungs import RUNG
from bertnli.sweep.space import SweepConfig
from bertnli.sweep.storage import default_storage, is_outage, trial_id, uses_heartbeat
from bertnli.tracking.store import client

ATTEMPT_ATTRS = (
    "worker",
    "heartbeat",
    "mlflow_run_id",
    "error",
    "test_acc",
    "train_seconds",
    "trial_wall_seconds",
    "interrupted",
    "timed_out",
    "diverged",
    "adopted",
    "orphan",
    "oom_beside_others",
    "gpus",
    "train_examples",
    "examples_seen",
)


def states():
    from optuna.trial import TrialState

    return TrialState


def study_dir(cfg: SweepConfig) -> Path:
    return Path(cfg.out_dir) / cfg.study_name


def storage_key(cfg: SweepConfig) -> str:
    """Which storage the study lives in, as a short digest (an RDB URL may hold a password)."""
    url = cfg.storage or default_storage()
    return hashlib.sha256((url if "://" in url else str(Path(url).resolve())).encode()).hexdigest()[:16]


def trial_identity(cfg: SweepConfig, number: int, params: dict[str, Any]) -> dict[str, Any]:
    """What a trial's summary says it belongs to: adopted only by that very trial."""
    return {"study": cfg.study_name, "storage": storage_key(cfg), "number": number, "params": params}


def claim_study_dir(cfg: SweepConfig) -> Path:
    """The study's folder under --out, marked as this study's (in this storage): a study of the same name in
    another storage would otherwise share, and adopt, its trials."""
    root = study_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    mark, mine = root / "study.json", {"study": cfg.study_name, "storage": storage_key(cfg)}
    if mark.is_file() and json.loads(mark.read_text()) != mine:
        raise BadInput(
            f"{root} holds the trials of study {cfg.study_name!r} in another storage; give this sweep "
            "another --out (or another --study-name)"
        )
    if not mark.is_file():
        atomic_write(mark, json.dumps(mine))
    return root


def trial_dir(cfg: SweepConfig, number: int) -> Path:
    """Where trial `number` writes its run folder (and, beside it, `trial-NNN.log`)."""
    return study_dir(cfg) / f"trial-{number:03d}"


def host_name() -> str:
    """This host's name in trial owners: $BERTNLI_HOST, else the hostname. Containers that share a hostname
    (but not a pid namespace) need distinct names, or each would take the other's live trials for dead."""
    return os.environ.get("BERTNLI_HOST") or socket.gethostname()


def owner() -> dict[str, Any]:
    """This process, as a trial's `worker` attribute names it."""
    return {"host": host_name(), "pid": os.getpid()}


def is_mine(t) -> bool:
    """Trial `t` is run by this process (host and pid; the attribute may carry more)."""
    worker = t.user_attrs.get("worker") or {}
    return all(worker.get(k) == v for k, v in owner().items())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def retry_history(t) -> list[int]:
    """Earlier attempts of this configuration, oldest first (Optuna's retry attributes)."""
    import warnings

    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental since Optuna 3.0, unchanged through 5.0
        return RetryHeartbeatStaleTrialCallback.retry_history(t)


def trial_run_id(cfg: SweepConfig, t) -> str | None:
    """A trial's MLflow run: from the run folder's marker, else by its tags in MLflow."""
    marker = trial_dir(cfg, t.number) / "mlflow_run.json"
    if marker.is_file():
        return json.loads(marker.read_text())["run_id"]
    c = client(cfg.tracking.tracking_uri)
    exp = c.get_experiment_by_name(cfg.tracking.experiment or cfg.study_name)
    if exp is None:
        return None
    runs = c.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`optuna.trial` = '{t.number}' and tags.`optuna.study` = '{cfg.study_name}'",
    )
    return runs[0].info.run_id if runs else None


def end_orphan_run(cfg: SweepConfig, run_id: str | None, why: str, status: str = "FAILED") -> None:
    if not run_id:
        return
    c = client(cfg.tracking.tracking_uri)
    try:
        if c.get_run(run_id).info.status == "RUNNING":
            c.set_tag(run_id, "bertnli.error" if status == "FAILED" else "bertnli.end", why)
            c.set_terminated(run_id, status)
    except Exception:  # noqa: BLE001 - a run that cannot be found has nothing to end
        pass


def tag_run(cfg: SweepConfig, run_id: str | None, key: str, value: str) -> None:
    """A tag on a trial's run, whatever its status (best effort: a run that cannot be found keeps none)."""
    if run_id:
        with contextlib.suppress(Exception):
            client(cfg.tracking.tracking_uri).set_tag(run_id, key, value)


def recorded_result(cfg: SweepConfig, t) -> dict[str, Any] | None:
    """What a gone worker's trial already recorded: {"state", "value", ...}, or None."""
    summary = trial_dir(cfg, t.number) / "trial.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        mine = trial_identity(cfg, t.number, t.params)
        if any(s.get(k) != v for k, v in mine.items()):
            return None  # another trial's (or another study's) summary: never adopted
        return {"state": "COMPLETE", **s}
    run_id = trial_run_id(cfg, t)
    if not run_id:
        return None
    run = client(cfg.tracking.tracking_uri).get_run(run_id)
    metrics, tags = run.data.metrics, run.data.tags
    if tags.get("optuna.trial") != str(t.number) or tags.get("bertnli.study_storage", storage_key(cfg)) != storage_key(
        cfg
    ):
        return None  # another trial's run (or another study's, in another storage)
    if run.info.status == "FINISHED" and "best_dev_acc" in metrics:
        return {
            "state": "COMPLETE",
            "value": metrics["best_dev_acc"],
            "test_acc": metrics.get("test_acc"),
            "run_id": run_id,
            "train_seconds": metrics.get("train_seconds"),
            "costs": {k: metrics[k] for k in MEASURED if k in metrics and k != ACCURACY},
        }
    if run.info.status == "KILLED" and tags.get("optuna.state") == "PRUNED":
        return {"state": "PRUNED", "run_id": run_id, "diverged": tags.get("bertnli.diverged") == "true"}
    return None


def patiently(call, patience_s: float = 300.0):
    """Repeat `call` through a storage outage; for calls that are safe to repeat (tell_unless_finished, ask)."""
    return policy(is_outage, patience_s=patience_s)(call)


def set_own_attr(trial, key: str, value) -> None:
    """A user attribute on our own trial; a trial that another process finished meanwhile keeps its own."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        trial.set_user_attr(key, value)
    except UpdateFinishedTrialError:
        pass


def set_trial_attr(study, storage, number: int, key: str, value) -> None:
    """A user attribute on trial `number` of a study this process may not own; a finished trial keeps its own."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        storage.set_trial_user_attr(trial_id(storage, study.study_name, number), key, value)
    except UpdateFinishedTrialError:
        pass


def tell_unless_finished(study, storage, number: int, *values, **kwargs) -> bool:
    """Finish trial `number`; False when another process finished it first.

    Another worker's reaper, or the trial's own worker back from an outage, can finish the trial
    between any check and the write: the storage's refusal of the write (UpdateFinishedTrialError)
    is the one answer that cannot go stale, so the caller that gets True alone acts on the end."""
    from optuna.exceptions import UpdateFinishedTrialError

    def finished() -> bool:
        return storage.get_trial(trial_id(storage, study.study_name, number)).state.is_finished()

    if finished():
        return False
    try:
        study.tell(number, *values, **kwargs)
    except UpdateFinishedTrialError:
        return False
    except ValueError:  # Optuna's own check: "Cannot tell a COMPLETE trial"
        if finished():
            return False
        raise
    return True


def adopt(study, storage, cfg: SweepConfig, t, result: dict[str, Any], log=print) -> bool:
    """Record what the trial already recorded elsewhere, instead of training it again; False, with nothing written,
    when it cannot (a result without a cost this study optimises: the trial is failed and retried instead)."""
    S = states()
    values = values_to_tell(cfg, summary_measures(result)) if result["state"] == "COMPLETE" else None
    if result["state"] == "COMPLETE" and values is None:
        return False
    attrs = {"adopted": True, "mlflow_run_id": result.get("run_id")}
    if result["state"] == "COMPLETE":
        attrs |= recorded_attrs(result)
    for key, value in attrs.items():
        if value is not None:
            set_trial_attr(study, storage, t.number, key, value)
    if values is not None:
        # Its constraints are not set for the sampler (Optuna sets them through the Trial of the process that asked
        # it); the front and the champion read its measures, so only the sampler's steering misses this one.
        told = tell_unless_finished(study, storage, t.number, *([values] if len(values) > 1 else values))
    else:
        told = tell_unless_finished(study, storage, t.number, state=S.PRUNED)
    if told:
        log(f"trial {t.number}: its worker is gone but its result was recorded; adopted as {result['state']}")
    return True


def retry(study, t, cfg: SweepConfig, log=print, always: bool = False, by_plan: bool = False) -> None:
    """Queue the failed configuration again (at most max_retries times unless `always`), through
    Optuna's RetryHeartbeatStaleTrialCallback so retried_trial_number/retry_history work.

    A multi-fidelity trial above rung 0 is queued again by the halving plan only (`by_plan`), which
    also decides when its configuration has failed every try: two queuers would train it twice."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    if t.user_attrs.get("stepped_aside") or t.user_attrs.get("orphan"):
        return
    if int(t.params.get(RUNG, 0)) > 0 and not by_plan:
        return
    trials = study.get_trials(deepcopy=False)
    counted = [n for n in [*retry_history(t), t.number] if not trials[n].user_attrs.get("oom_beside_others")]
    if not always and len(counted) > cfg.max_retries:  # tries that ran out of memory beside others do not count
        log(f"trial {t.number}: configuration failed {len(counted)} times; not retried again")
        return
    clean = copy.deepcopy(t)
    clean.user_attrs = {k: v for k, v in t.user_attrs.items() if k not in ATTEMPT_ATTRS}
    RetryHeartbeatStaleTrialCallback(max_retry=None, inherit_intermediate_values=True)(study, clean)


def fail_and_retry(study, storage, cfg: SweepConfig, t, why: str, log=print) -> bool:
    """Fail the trial and queue its configuration again; False (nothing done) when another process ended it first."""
    S = states()
    set_trial_attr(study, storage, t.number, "error", why)
    if not tell_unless_finished(study, storage, t.number, state=S.FAIL):
        return False
    end_orphan_run(cfg, trial_run_id(cfg, t), why)
    retry(study, study.get_trials(deepcopy=False)[t.number], cfg, log)
    log(f"trial {t.number}: {why}; marked FAIL")
    return True


def stale_callback(cfg: SweepConfig, log=print):
    """For Optuna's heartbeat (RDB): a trial it failed gets its run FAILED and is retried."""

    def callback(study, t) -> None:
        end_orphan_run(cfg, trial_run_id(cfg, t), "no heartbeat (its worker is gone)")
        retry(study, t, cfg, log)
        log(f"trial {t.number}: no heartbeat for {cfg.grace_s:.0f} s; marked FAIL")

    return callback


class Sightings:
    """What this process has seen of each RUNNING trial's heartbeat, timed on its own monotonic clock.

    A heartbeat time (and a trial's datetime_start) is written on its worker's host clock; hosts
    whose clocks differ by more than `grace` would fail each other's live trials if the reaper
    compared that time with its own clock. So staleness is a heartbeat that has not *changed* for
    `grace` seconds of this process's clock, whatever the clocks say. (On RDB storage Optuna's own
    heartbeat is used instead, compared on the database's clock.)
    """

    def __init__(self):
        self.seen: dict[tuple[str, int], tuple[Any, float]] = {}

    def unchanged_for(self, study_name: str, number: int, value) -> float:
        """Seconds since this process first saw trial `number` holding `value` (0 for a new value)."""
        now, key = time.monotonic(), (study_name, number)
        if key not in self.seen or self.seen[key][0] != value:
            self.seen[key] = (value, now)
        return now - self.seen[key][1]


def reap(study, storage, cfg: SweepConfig, seen: Sightings, log=print) -> None:
    """Look at every RUNNING trial once: adopt, fail + retry, or leave it to its live owner.

    Staleness (another host's trial) is judged only after this process has seen `grace`
    seconds of working storage: an outage stops every heartbeat, also those of live workers.
    Another host's clock is never compared with ours: `seen` is what this process has watched of each
    trial (one Sightings per sweep process, shared by its worker threads).
    """
    S = states()
    host = host_name()
    judged = storage.connected_for() >= cfg.grace_s
    for t in study.get_trials(deepcopy=False, states=(S.RUNNING,)):
        owner = t.user_attrs.get("worker")
        if owner is None:  # asked, but its worker never wrote it down (a lost acknowledgement)
            ownerless_for = seen.unchanged_for(study.study_name, t.number, "ownerless")
            if judged and ownerless_for > cfg.grace_s:
                set_trial_attr(study, storage, t.number, "orphan", True)
                failed = fail_and_retry(study, storage, cfg, t, "orphan: created but never owned")
                if failed and "fixed_params" in t.system_attrs:  # queued again as a fresh attempt
                    fresh = {k: v for k, v in t.user_attrs.items() if k not in (*ATTEMPT_ATTRS, "stepped_aside")}
                    study.enqueue_trial(t.system_attrs["fixed_params"], user_attrs=fresh)
            continue
        dead = owner.get("host") == host and not alive(owner.get("pid", -1))
        quiet_for = seen.unchanged_for(study.study_name, t.number, t.user_attrs.get("heartbeat"))
        stale = judged and not uses_heartbeat(storage) and quiet_for > cfg.grace_s
        if not (dead or stale or judged):
            continue
        result = recorded_result(cfg, t)
        if result is not None and adopt(study, storage, cfg, t, result, log):
            continue
        if dead or stale:
            fail_and_retry(
                study, storage, cfg, t, f"its worker is gone ({'pid dead' if dead else 'no heartbeat'})", log
            )
    if judged and uses_heartbeat(storage):
        import optuna

        # Optuna's own stale-trial check (database clock, grace_period), on a study over the bare RDBStorage.
        optuna.storages.fail_stale_trials(optuna.load_study(study_name=study.study_name, storage=storage.inner))
