"""Where the study lives: a journal file (one host) or an RDB (many hosts), and what an outage may do.

Outage policy (RDB): reads and idempotent writes wait out a database restart (retried with
backoff for up to `patience_s`); writes that are not idempotent (`create_new_trial`,
`set_trial_state_values`, ...) are never retried blindly, because a commit whose acknowledgement
was lost would be applied twice (a duplicate RUNNING trial). Their callers decide: `tell` is
repeated with `skip_if_finished=True`; `ask` is repeated, and a trial that a lost acknowledgement
created without an owner is failed by the reaper as an orphan.

Heartbeats (RDB): Optuna's own (`heartbeat_interval`, `grace_period`, a stale-trial callback),
recorded and compared on the database's clock, so clock skew between hosts does not matter.
The storage also remembers how long it has been reachable without a break, so that stale
trials are only judged after the reaper has watched `grace` seconds of working connection (an
outage stops every heartbeat, not only dead workers').
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from bertnli import BadInput, BertnliError
from bertnli.retry import policy
from bertnli.sweep.objectives import STUDY_ATTR, directions, identity, is_multi
from bertnli.sweep.rungs import RUNG
from bertnli.sweep.space import SweepConfig, cells

HEARTBEAT_S = 5.0

# Calls that are safe to repeat when the first attempt's outcome is unknown.
IDEMPOTENT = (
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "get_trial",
    "get_all_trials",
    "get_n_trials",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_params",
    "get_trial_param",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_best_trial",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "set_study_user_attr",
    "set_study_system_attr",
    "set_trial_intermediate_value",
    "set_trial_param",
    "record_heartbeat",
    "check_trial_is_updatable",
)


PASSWORD = re.compile(r"://([^:/@]+):[^@]*@")


def without_password(url: str) -> str:
    """A URL as it may be shown or recorded (console, MLflow tags, a study's attributes): its password masked."""
    return PASSWORD.sub(r"://\1:***@", url)


def with_password(recorded: str, known: tuple[str | None, ...] = ()) -> str:
    """A URL recorded `without_password`, to connect with: the URL of `known` it was recorded from, else without
    a password (PostgreSQL then takes it from PGPASSWORD or ~/.pgpass)."""
    for url in known:
        if url and without_password(url) == recorded:
            return url
    return recorded.replace(":***@", "@")


def default_storage() -> str:
    """A journal file beside the MLflow store: safe for several processes on one host."""
    return str((Path.cwd() / "mlruns" / "optuna-journal.log").resolve())


def is_outage(e: BaseException | None) -> bool:
    """True when `e` (or what caused it) says the database could not be reached, not that a query was wrong."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    while e is not None:
        if isinstance(e, (OperationalError, InterfaceError)) or (
            isinstance(e, DBAPIError) and e.connection_invalidated
        ):
            return True
        e = e.__cause__ or e.__context__
    return False


class PatientStorage:
    """An Optuna RDBStorage behind the outage policy above, through its public methods only.

    Composition, not a subclass: Optuna wraps an RDBStorage in a cache that calls its private
    methods (`_create_new_trial`, `_get_trials`, ...), which a policy on the public ones would
    miss. A plain object is used by Optuna as it is. `inner` is the RDBStorage itself, for
    Optuna's heartbeat machinery (`fail_stale_trials`), which needs a study on a real RDB.
    """

    def __init__(self, inner, patience_s: float = 300.0):
        self.inner, self.patience_s = inner, patience_s
        self.connected_since = time.monotonic()

    def mark_unreachable(self) -> None:
        self.connected_since = time.monotonic()

    def connected_for(self) -> float:
        """Seconds since the last call that found the database unreachable (or since opening)."""
        return time.monotonic() - self.connected_since

    def __getattr__(self, name: str):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr
        repeat = name in IDEMPOTENT or name.startswith("get_")

        def once(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except Exception as e:
                if is_outage(e):
                    self.mark_unreachable()
                raise

        if not repeat:
            return once

        def say(e: BaseException, seconds: float) -> None:
            print(
                f"bertnli: Optuna storage unreachable ({type(e).__name__}); retrying in {seconds:.1f} s",
                file=sys.stderr,
                flush=True,
            )

        return lambda *args, **kwargs: policy(is_outage, patience_s=self.patience_s, on_wait=say)(once, *args, **kwargs)


def _journal(url: str):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if Path(url).is_dir():
        raise BadInput(
            f"--storage {url} is a folder; give a journal file path such as {Path(url) / 'optuna-journal.log'}"
        )
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(url))
    opened = time.monotonic()
    # Optuna 5.0.0: JournalStorage is not a BaseHeartbeat (no heartbeat_interval, no stale-trial
    # callback), so journal studies keep the owner's host, pid and heartbeat in user attributes.
    storage.connected_for = lambda: time.monotonic() - opened  # a local file: reachable since opened
    return storage


def open_storage(url: str | None, grace_s: float = 60.0, stale_callback=None):
    """The study's storage; `stale_callback(study, frozen_trial)` runs for trials Optuna's heartbeat failed."""
    url = url or default_storage()
    if "://" not in url:
        return _journal(url)
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    kwargs = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}
    heartbeat = {
        "heartbeat_interval": int(HEARTBEAT_S),
        "grace_period": int(grace_s),
        "heartbeat_stale_trial_callback": stale_callback,
    }
    from optuna.storages import RDBStorage

    # Workers started together on a fresh database race in Optuna's table creation; the loser
    # finds the tables made a moment later.
    unusable = (ArgumentError, NoSuchModuleError, ImportError)
    race = lambda e: isinstance(e, SQLAlchemyError) and not isinstance(e, unusable)  # noqa: E731
    try:
        return policy(race, attempts=6, first=0.5, cap=16.0, jitter=1.0)(
            lambda: PatientStorage(RDBStorage(url, engine_kwargs=kwargs, **heartbeat))
        )
    except unusable as e:
        raise BadInput(
            f"--storage {without_password(url)!r} is not a usable database URL ({str(e).splitlines()[0][:120]}); "
            "give postgresql://user@host/db, sqlite:///file.db or a journal file path"
        ) from None
    except SQLAlchemyError as e:
        shown = without_password(url)
        raise BertnliError(f"cannot open Optuna storage {shown}: {str(e).splitlines()[0][:200]}") from None


def uses_heartbeat(storage) -> bool:
    """Optuna's heartbeat is on (RDB with heartbeat_interval); BaseHeartbeat itself is not exported."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and interval() is not None


def trial_id(storage, study_name: str, number: int) -> int:
    """A trial's storage id from its study and number, through the storage's public API."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def sampler_for(seed: int, startup: int, kind: str = "tpe"):
    """TPE (or Optuna's RandomSampler, or NSGA-II with a population of `startup`) seeded by (sweep seed, trial
    number), through Optuna's public sampler interface. TPE and NSGA-II take several objectives, and read each
    trial's constraints from the trial (objectives.set_constraints).

    One seed per process would make every worker process draw the same "random" configurations
    (a 4-process sweep ran trials with identical lr); seeding by trial number keeps a sweep
    reproducible and makes each trial's draw its own, however many processes ask.
    """
    import optuna

    def make(number: int):
        own = seed * 1_000_003 + number
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=own)
        if kind == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=startup, seed=own)
        return optuna.samplers.TPESampler(seed=own, n_startup_trials=startup)

    class TrialSeeded(optuna.samplers.BaseSampler):
        def __init__(self):
            self._inner = make(0)

        def reseed_rng(self) -> None:
            self._inner.reseed_rng()

        def before_trial(self, study, trial) -> None:
            self._inner = make(trial.number)
            self._inner.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self._inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self._inner.after_trial(study, trial, state, values)

    return TrialSeeded()


def study_sampler(cfg: SweepConfig):
    """The per-trial-seeded sampler; under multi-fidelity every sampled configuration starts at rung 0."""
    base = sampler_for(cfg.seed, max(4, len(cells(cfg))), cfg.sampler)
    if cfg.fidelity != "data":
        return base
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental since Optuna 2.4, unchanged through 5.0
        return optuna.samplers.PartialFixedSampler({RUNG: 0}, base)


def min_trials(cfg: SweepConfig) -> int:
    """Trials that must have reported at a step before the median pruner judges it: 1 (Optuna's default), or the
    startup count in a warm-started study, whose imported trials count as complete but report nothing."""
    return cfg.pruner_startup_trials if cfg.warm_start else 1


def open_study(cfg: SweepConfig, storage):
    """(study, created): `created` is True for exactly one process, the one whose create_study won."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A random design is i.i.d. only unpruned; multi-fidelity prunes by its rungs (median pruning across
    # rungs would compare dev accuracies reached on different amounts of data).
    pruner = (
        optuna.pruners.NopPruner()
        if cfg.sampler == "random" or cfg.fidelity == "data" or is_multi(cfg)
        else optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup_trials, n_min_trials=min_trials(cfg))
    )
    kw = dict(study_name=cfg.study_name, storage=storage, sampler=study_sampler(cfg), pruner=pruner)
    try:
        study = optuna.create_study(directions=directions(cfg), **kw)
        study.set_user_attr(STUDY_ATTR, identity(cfg))
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**kw)
    had = study.user_attrs.get(STUDY_ATTR)  # absent: written before bertnli had objectives, or a moment ago
    if [d.name.lower() for d in study.directions] != directions(cfg) or had not in (None, identity(cfg)):
        had = had or ("dev_acc:max" if len(study.directions) == 1 else "other objectives")
        raise BadInput(
            f"study {cfg.study_name} optimises {had}, not {identity(cfg)}; give the same --objective and "
            "--constraint to resume it, or another --study-name"
        )
    return study, False
