"""The election of a study's MLflow parent run: exactly one per study, through the Optuna storage.

Election: the parent is the run of the first candidate recorded in a side study of the same
storage (`<study>.parent`). A candidate is one trial, written with its run id in one
operation, and the storage numbers trials in one order that every reader sees (the journal's
order; a lock on the study row in an RDB). So standing is the only write: nobody reads and
then writes, and a slow or stalled process cannot be overtaken by a fallback election. The
winner queues the study's cells, then publishes the parent on the study (PARENT_ATTR); the
others adopt it once published. No process compares another host's clock with its own: a
starter watches the beat of the process at work (a counter it bumps) on its own monotonic
clock. Not "the earliest start_time among MLflow runs": two processes that missed each
other's runs (or whose clocks differ) would both win.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from typing import Callable

from bertnli import BertnliError
from bertnli.sweep.objectives import describe
from bertnli.sweep.parent import pruner_tag, sampler_tag
from bertnli.sweep.reaping import owner
from bertnli.sweep.space import SweepConfig
from bertnli.sweep.storage import without_password
from bertnli.tracking.lineage import provenance, source_tags
from bertnli.tracking.store import client, default_tracking_uri, get_or_create_experiment

PARENT_ATTR = "mlflow_parent_run_id"
BEAT_ATTR = "mlflow_parent_beat"  # bumped every BEAT_S seconds by the process making the parent run
BEAT_S = 2.0
WAIT_S = 10.0  # a starter that sees no candidate and no beat move for this long stands itself
ELECTOR_WAIT_S = 300.0  # a beat that moved and then stood still this long: its process is gone


def _create_parent(cfg: SweepConfig, storage_url: str) -> str:
    from mlflow.entities import Param as MParam

    uri = cfg.tracking.tracking_uri or default_tracking_uri()
    c = client(uri)
    exp = get_or_create_experiment(c, cfg.tracking.experiment or cfg.study_name, uri)
    tags = {
        **source_tags(),
        "bertnli.role": "sweep-parent",
        "bertnli.study": cfg.study_name,
        "bertnli.storage": without_password(storage_url),  # never a password in MLflow; storage.with_password
        "bertnli.sampler": sampler_tag(cfg),
        "bertnli.pruner": pruner_tag(cfg),
        "bertnli.objectives": describe(cfg),
        **({"bertnli.constraints": ", ".join(cfg.constraints)} if cfg.constraints else {}),
        "bertnli.space": "; ".join(p.describe() for p in cfg.space),
        **provenance(),
    }
    run = c.create_run(exp, run_name=f"sweep-{cfg.study_name}", tags=tags)
    fixed = {k: v for k, v in cfg.base.to_flat_dict().items() if k not in {p.name for p in cfg.space}}
    c.log_batch(run.info.run_id, params=[MParam(f"fixed.{k}", str(v)) for k, v in fixed.items()])
    return run.info.run_id


def _usable(cfg: SweepConfig, run_id: str) -> bool:
    """False only for a parent MLflow says is gone (deleted, or from another store): a store that
    does not answer must not make a process elect a second parent while the others keep the first."""
    from mlflow.exceptions import MlflowException

    try:
        run = client(cfg.tracking.tracking_uri).get_run(run_id)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise BertnliError(
            f"MLflow could not say whether the study's parent run {run_id} exists ({str(e).splitlines()[0][:120]}); "
            "rerun once the tracking server answers"
        ) from None
    if run.info.lifecycle_stage != "active":
        return False
    if run.info.status != "RUNNING":
        client(cfg.tracking.tracking_uri).update_run(run_id, status="RUNNING")
    return True


class Watch:
    """How long the beat of the process at work has stood still, on this process's own clock."""

    def __init__(self):
        self.value, self.since, self.moved = None, time.monotonic(), False

    def quiet_for(self, value) -> float:
        if value != self.value:
            self.moved = self.moved or self.value is not None
            self.value, self.since = value, time.monotonic()
        return time.monotonic() - self.since

    def gone(self, value) -> bool:
        """Nobody at work: no beat moved for WAIT_S, or one that moved stopped for ELECTOR_WAIT_S (an
        outage stops every beat for a while, also those of live processes)."""
        return self.quiet_for(value) > (ELECTOR_WAIT_S if self.moved else WAIT_S)


@contextlib.contextmanager
def _beating(study):
    """Bump BEAT_ATTR every BEAT_S while this process makes or publishes the parent, so the others wait."""
    stop = threading.Event()

    def beat():
        n = 0
        while True:
            with contextlib.suppress(Exception):  # a lost beat only makes the others wait less
                study.set_user_attr(BEAT_ATTR, {**owner(), "beat": n})
            n += 1
            if stop.wait(BEAT_S):
                return

    thread = threading.Thread(target=beat, daemon=True, name="parent-beat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=BEAT_S)  # a beat stuck in an outage is left to end on its own


def _ballot(storage, study_name: str, previous: str | None, what: str = "") -> int:
    """A side study whose first trial decides: the parent, or (`what`) who publishes it. Its name holds
    the study's id (a study deleted and made again holds a new election) and a "/", which bertnli
    refuses in study names, so it cannot be a user's study; a parent that became unusable gets a
    ballot of its own."""
    import optuna

    name = f"{study_name}/parent/{storage.get_study_id_from_name(study_name)}"
    name += (f"/after/{previous}" if previous else "") + (f"/{what}" if what else "")
    try:
        return storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], name)
    except optuna.exceptions.DuplicatedStudyError:
        return storage.get_study_id_from_name(name)


def _first_candidate(storage, ballot: int) -> str | None:
    """The run id of the first candidate in the storage's order (trial numbers), if any stood."""
    trials = [t for t in storage.get_all_trials(ballot, deepcopy=False) if "run_id" in t.user_attrs]
    return min(trials, key=lambda t: t.number).user_attrs["run_id"] if trials else None


def _stand(storage, ballot: int, run_id: str) -> None:
    """One write, with the run id in it: there is no moment at which a candidate is half recorded."""
    from optuna.trial import create_trial

    storage.create_new_trial(ballot, template_trial=create_trial(value=0.0, user_attrs={"run_id": run_id, **owner()}))


def parent_run(
    study, storage, cfg: SweepConfig, storage_url: str, elector: bool, on_elected: Callable[[], None] = lambda: None
) -> str:
    """The study's parent run id: the published one if usable, else the winner of an election.

    The study's creator (`elector`) stands at once; another starter stands only when no candidate
    has appeared and nothing beats. The winner calls `on_elected` (queue the study's cells) before
    it publishes the parent, so that is done before anyone adopts the parent; should the winner
    stop before publishing, the first starter to see its beat stand still does both.
    """
    previous = study.user_attrs.get(PARENT_ATTR)
    while not (previous and _usable(cfg, previous)):
        previous = _elect(study, storage, cfg, storage_url, elector, on_elected, previous)
    return previous


def _elect(study, storage, cfg: SweepConfig, storage_url: str, elector: bool, on_elected, previous) -> str:
    ballot, watch = _ballot(storage, cfg.study_name, previous), Watch()
    while (winner := _first_candidate(storage, ballot)) is None:
        if elector or watch.gone(study.user_attrs.get(BEAT_ATTR)):
            with _beating(study):
                mine = _create_parent(cfg, storage_url)
                try:
                    _stand(storage, ballot, mine)
                finally:  # also on Ctrl-C, SIGTERM or a storage error: no losing candidate is left RUNNING
                    with contextlib.suppress(Exception):  # the storage may be what failed: the run is left then
                        if _first_candidate(storage, ballot) != mine:
                            _lose(cfg, mine)
                winner = _first_candidate(storage, ballot)
                if winner == mine:
                    _publish(study, mine, on_elected)
                    return mine
            break
        time.sleep(0.5)
    return _adopt(study, storage, cfg, winner, on_elected, previous, watch)


def _adopt(study, storage, cfg: SweepConfig, winner: str, on_elected, previous, watch: Watch) -> str:
    """Wait for the winner's maker to queue the cells and publish it. Should it stop before, one
    process, itself elected through a ballot, takes over (queues and publishes); should that one
    stop too, the next process to see it publishes the winner without the cells."""
    taker, token = None, uuid.uuid4().hex
    while (published := study.user_attrs.get(PARENT_ATTR)) in (None, previous):
        if watch.gone(study.user_attrs.get(BEAT_ATTR)):  # stopped before publishing (killed, or this is its rerun)
            if taker is None:
                taker = _ballot(storage, cfg.study_name, previous, "publish")
                _stand(storage, taker, token)
                if _first_candidate(storage, taker) == token:
                    with _beating(study):
                        _publish(study, winner, on_elected)
                    return winner
                watch = Watch()  # another process took over: wait for it in turn
            else:
                study.set_user_attr(PARENT_ATTR, winner)
                return winner
        time.sleep(0.5)
    return published  # the winner, or a successor published meanwhile (parent_run checks it)


def _publish(study, run_id: str, on_elected: Callable[[], None]) -> None:
    on_elected()
    study.set_user_attr(PARENT_ATTR, run_id)


def _lose(cfg: SweepConfig, mine: str) -> None:
    client(cfg.tracking.tracking_uri).delete_run(mine)
