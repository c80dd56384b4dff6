"""Warm starts: an earlier study's finished trials as what the new study's sampler already knows.

A cheap study (a data subset, the CPU) is rarely the last: its results should steer the expensive
one. Each complete trial of a source study is added to the new study with Optuna's `add_trial`,
under the parameters both spaces share, so TPE counts it and no one trains it again. A trial is
only evidence for the new study if it was trained the same way apart from the searched
parameters, so a trial whose other settings differ (read from its MLflow run) is skipped unless
`--warm-start-mode loose`, and a source trained on other data is refused unless loose.

Imported trials carry the user attribute IMPORTED; they never count towards `--trials`, never win
the study (their weights are not here), and have no run under the new parent, which links to its
sources instead (tag `bertnli.warm_start`, table `warm_start.csv`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertnli import BadInput
from bertnli.sweep.params import Param
from bertnli.sweep.space import SweepConfig
from bertnli.sweep.storage import with_password, without_password

IMPORTED = "imported_from"  # user attribute of an imported trial: "<source>#<its number there>"
DONE_ATTR = "warm_started"  # study user attribute: the sources already imported, each once
# Settings that decide where and how fast a run goes, not what it learns (the data is compared by digest).
NOT_LEARNED = {"data", "device", "eval_test", "cache_dir", "checkpoint_every", "eval_batch_size", "compile"}
DIGESTED = ("train", "dev")  # the splits a trial's value depends on


@dataclass(frozen=True)
class Source:
    study: str
    storage: str
    label: str  # as the user wrote it (an mlflow: experiment names several studies)

    @property
    def key(self) -> str:
        """The study itself, whatever named it: what a study records as imported (a URL's password left out)."""
        return f"{self.study}@{without_password(self.storage)}"


@dataclass
class Imported:
    """What one source gave: the trials to add, and why the others were left out."""

    source: Source
    trials: list = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> trials
    dropped: Counter = field(default_factory=Counter)  # "lr=0.5 outside lr=..." -> trials

    def summary(self) -> str:
        said = f"warm start from {self.source.key}: {len(self.trials)} trial(s) imported"
        if self.skipped:
            said += "; skipped " + ", ".join(f"{n} ({why})" for why, n in self.skipped.most_common())
        if self.dropped:
            said += "; values dropped " + ", ".join(f"{n} ({why})" for why, n in self.dropped.most_common())
        return said


def is_imported(t) -> bool:
    return IMPORTED in t.user_attrs


def trained_here(trials) -> list:
    """The trials this study trained itself (not imported from a warm start)."""
    return [t for t in trials if not is_imported(t)]


def parse_source(text: str, tracking_uri: str | None, known: tuple[str | None, ...] = ()) -> list[Source]:
    """`NAME@STORAGE` (an Optuna study), or `mlflow:PARENT_RUN_ID` / `mlflow:EXPERIMENT` (the study of a sweep
    parent run, or of every sweep parent run in an experiment, by name or id). A parent run records its storage
    without the password: the one of `known` (this sweep's --storage) it came from gives it back."""
    if text.startswith("mlflow:"):
        sources = _mlflow_sources(text, text.removeprefix("mlflow:"), tracking_uri)
        return [Source(s.study, with_password(s.storage, known), s.label) for s in sources]
    name, at, storage = text.partition("@")
    if not (at and name and storage):
        raise BadInput(
            f"--warm-start {text}: write NAME@STORAGE (an Optuna study and its journal file or database URL) "
            "or mlflow:PARENT_RUN_ID_OR_EXPERIMENT"
        )
    return [Source(name, storage, text)]


def source_runs(trials, tracking_uri: str | None) -> dict[str, Any]:
    """The MLflow runs of a source's complete trials that this store holds (a run elsewhere is simply absent)."""
    from mlflow.exceptions import MlflowException

    from bertnli.tracking.store import client, default_tracking_uri

    c, runs = client(tracking_uri or default_tracking_uri()), {}
    for t in trials:
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id and t.state.name == "COMPLETE":
            try:
                runs[run_id] = c.get_run(run_id)
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":  # an outage must not import nothing for good
                    raise
    return runs


def plan_all(cfg: SweepConfig) -> list[Imported]:
    """Every --warm-start source, read and checked before anything is made (a source not found, or trained
    on other data, is one line)."""
    if not cfg.warm_start:
        return []
    from bertnli.data.snli import find_split
    from bertnli.files import file_digest
    from bertnli.sweep.storage import default_storage

    splits = {s: find_split(cfg.base.data, s) for s in DIGESTED}
    digests = {s: file_digest(p) for s, p in splits.items() if p is not None}  # as a run's data.<split>.sha256
    plans = []
    for text in cfg.warm_start:
        for source in parse_source(text, cfg.tracking.tracking_uri, (cfg.storage,)):
            if source.study == cfg.study_name and source.storage == (cfg.storage or default_storage()):
                continue  # mlflow:<this study's own experiment>
            trials = load_source(source).get_trials(deepcopy=False)
            plans.append(import_plan(cfg, source, trials, source_runs(trials, cfg.tracking.tracking_uri), digests))
    return plans


def _mlflow_sources(text: str, ref: str, tracking_uri: str | None) -> list[Source]:
    from mlflow.exceptions import MlflowException

    from bertnli.tracking.store import client, default_tracking_uri

    c = client(tracking_uri or default_tracking_uri())
    try:
        runs = [c.get_run(ref)]
    except MlflowException:
        exp = c.get_experiment_by_name(ref)
        if exp is None and ref.isdigit():
            try:
                exp = c.get_experiment(ref)
            except MlflowException:
                exp = None
        if exp is None:
            raise BadInput(
                f"--warm-start {text}: no run or experiment {ref} in the MLflow store; check the id"
            ) from None
        runs = c.search_runs([exp.experiment_id], "tags.`bertnli.role` = 'sweep-parent'", max_results=1000)
    parents = [r for r in runs if r.data.tags.get("bertnli.role") == "sweep-parent"]
    if not parents:
        raise BadInput(f"--warm-start {text}: {ref} holds no sweep parent run; give a sweep's parent run id")
    return [Source(r.data.tags["bertnli.study"], r.data.tags["bertnli.storage"], text) for r in parents]


def check_storage_file(source: Source) -> None:
    """A journal file or SQLite database that is not there: opening it would create an empty one."""
    local = source.storage.removeprefix("sqlite:///")
    path = local.split("?")[0] if "://" not in local else None
    if path is not None and not Path(path).is_file():
        raise BadInput(f"--warm-start {source.label}: no Optuna storage at {path}; check the path")


def load_source(source: Source):
    import optuna

    from bertnli.sweep.storage import open_storage

    check_storage_file(source)
    try:
        return optuna.load_study(study_name=source.study, storage=open_storage(source.storage))
    except KeyError:
        raise BadInput(
            f"--warm-start {source.label}: no study {source.study!r} in {source.storage}; check the name"
        ) from None


def import_plan(cfg: SweepConfig, source: Source, trials, runs: dict[str, Any], digests: dict[str, str]) -> Imported:
    """The source's complete trials, as trials of the new study; `runs` maps a trial's MLflow run id to its run
    (params and tags), `digests` are this study's data digests."""
    loose = cfg.warm_start_mode == "loose"
    space = {p.name: p for p in cfg.space}
    wanted = {k: str(v) for k, v in cfg.base.to_flat_dict().items() if k not in space and k not in NOT_LEARNED}
    out = Imported(source)
    for t in trials:
        if t.state.name != "COMPLETE" or IMPORTED in t.user_attrs:  # imported there: its own source says it
            out.skipped[
                f"not complete: {t.state.name.lower()}" if t.state.name != "COMPLETE" else "imported there"
            ] += 1
            continue
        run = runs.get(t.user_attrs.get("mlflow_run_id", ""))
        if run is None and not loose:
            out.skipped["its MLflow run is not in this store"] += 1
            continue
        if run is not None:
            theirs = [(s, run.data.tags.get(f"data.{s}.sha256"), digests.get(s)) for s in DIGESTED]
            other_data = [s for s, a, b in theirs if a and b and a != b]
            if other_data and not loose:
                raise BadInput(
                    f"--warm-start {source.label}: its trials were trained on other data ({', '.join(other_data)} "
                    "digests differ from this study's); add --warm-start-mode loose to import them anyway"
                )
            differ = sorted(k for k, v in wanted.items() if run.data.params.get(k, v) != v)
            if differ and not loose:
                k = differ[0]
                theirs, mine = run.data.params[k] or "unset", wanted[k] or "unset"
                out.skipped[f"{k} {theirs} vs {mine}" + (" and more" if differ[1:] else "")] += 1
                continue
        outside = [k for k, v in t.params.items() if k in space and not _inside(space[k], v)]
        if outside and not loose:  # trained outside this space: not this study's kind of trial
            k = outside[0]
            out.skipped[f"{k}={t.params[k]} outside {space[k].describe()}"] += 1
            continue
        out.trials.append(_as_new_trial(t, space, source, out.dropped))
    return out


def _as_new_trial(t, space: dict[str, Param], source: Source, dropped: Counter):
    import optuna

    params, dists = {}, {}
    for name, p in space.items():  # parents first (params.parse_space): a condition reads what was kept
        if name not in t.params:
            continue
        value = t.params[name]
        if not _inside(p, value):
            dropped[f"{name}={value} outside {p.describe()}"] += 1
            continue
        if not p.active(params):  # here a trial of these values has no such parameter
            parent = p.when[0]
            where = f"{parent}={params[parent]}" if parent in params else f"no {parent}"
            dropped[f"{name}={value} where {where} (only if {p.condition()} here)"] += 1
            continue
        params[name], dists[name] = value, distribution(p)
    attrs = {IMPORTED: f"{source.key}#{t.number}", "source_run_id": t.user_attrs.get("mlflow_run_id")}
    # dev accuracy: the value of a study over it alone, the first of a study over accuracy and costs
    return optuna.trial.create_trial(params=params, distributions=dists, value=t.values[0], user_attrs=attrs)


def distribution(p: Param):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if p.kind == "categorical":
        return CategoricalDistribution(list(p.choices))
    if p.kind == "int":
        return IntDistribution(int(p.low), int(p.high), log=p.log)
    return FloatDistribution(p.low, p.high, log=p.log)


def _inside(p: Param, value: Any) -> bool:
    if p.kind == "categorical":
        return any(value == c and type(value) is type(c) for c in p.choices)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and p.low <= value <= p.high
