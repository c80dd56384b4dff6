"""The search space and the sweep's settings: TOML `[sweep]` + `--space`, the `[train]` table via config.

Also the pruning clock (`report_step`): intermediate values are reported at the fraction of each
trial's own schedule it has reached, so the median pruner compares like with like (see there).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bertnli import BadInput
from bertnli.analysis.pareto import parse_constraint, parse_objectives
from bertnli.config import TrackingConfig, TrainConfig, load_config, read_toml
from bertnli.data.snli import split_path
from bertnli.model.presets import check_model_spec
from bertnli.sweep.params import Param, known_configuration, parse_space, values_trained
from bertnli.sweep.rungs import RUNG, rung_fractions
from bertnli.train.runtime import resolve_device


@dataclass(frozen=True)
class SweepConfig:
    base: TrainConfig
    space: tuple[Param, ...]
    trials: int = 20
    study_name: str = "bertnli-sweep"
    storage: str | None = None  # None: a journal file under mlruns/
    seed: int = 0
    workers: int | None = None  # trial processes at once on this host; None: one per device slot (slots.py)
    gpus: str | None = None  # CUDA indices trials may use, "0,1,3"; None: every GPU CUDA sees (none: the CPU)
    trials_per_gpu: int = 1  # trials that share one GPU at a time
    gpus_per_trial: int = 1  # GPUs one trial sees, one process (rank) per GPU
    procs_per_trial: int = 1  # processes (gloo ranks) per trial on the CPU: the multi-GPU path without a GPU
    enqueue: tuple[dict[str, Any], ...] = ()  # known configurations, run first; queued once per study
    warm_start: tuple[str, ...] = ()  # earlier studies whose complete trials the sampler starts from (warm_start.py)
    warm_start_mode: str = "strict"  # "loose": also trials trained with other settings or data
    timeout: float | None = None  # seconds for this invocation
    trial_timeout: float | None = None  # seconds one trial may run before it is killed and FAILED "timed out"
    pruner_startup_trials: int = 4
    pruner_warmup_epochs: int = 0
    keep_checkpoints: str = "best"  # "best" or "all"
    checkpoint_store: str = "auto"  # where epoch checkpoints go for retries on other hosts: "run" (its MLflow run's
    # artifacts), "none", an artifact URI (a folder, s3://..., gs://...); "auto": run with an MLflow server, else none
    trial_start: str = "fork"  # "fork": from a server that imported torch and MLflow once; "exec": a fresh interpreter
    grace_s: float = 60.0  # heartbeat age after which a RUNNING trial of another host is stale
    max_retries: int = 2  # a failed configuration is tried again at most this often
    fail_limit: int = 3  # stop after this many configurations in a row failed every try (a broken setup)
    out_dir: str = "outputs/sweeps"
    sampler: str = (
        "tpe"  # "random": i.i.d. trials, no pruning, no enqueued cells (expected validation performance is valid)
    )
    fidelity: str = (
        "none"  # "data": successive halving over the training-set fraction (sweep/halving.py); `trials` configurations
    )
    eta: int = 3  # multi-fidelity: the best 1/eta of a rung is promoted, on eta times the data
    min_fraction: float = 1 / 9  # multi-fidelity: the smallest rung's share of the train split (rungs eta^-k >= this)
    promotion: str = "sync"  # multi-fidelity: "sync" (a rung starts when the one below has ended) or "async" (ASHA)
    objective: str = "dev_acc"  # "dev_acc,latency_ms:min,...": several make a Pareto study (analysis/pareto.py)
    constraints: tuple[str, ...] = ()  # "peak_mem_mib<=8000": a trial that breaks one is never on the front
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


SWEEP_KEYS = {f.name for f in fields(SweepConfig)} - {"base", "space", "tracking"}


def _fidelity_table(sweep_doc: dict) -> dict:
    """`[sweep.fidelity]` (eta, min_fraction; its presence means fidelity "data") folded into `sweep_doc`."""
    if not isinstance(sweep_doc.get("fidelity"), dict):
        return {}
    table = dict(sweep_doc.pop("fidelity"))
    sweep_doc["fidelity"] = table.pop("resource", "data")
    unknown = set(table) - {"eta", "min_fraction", "promotion"}
    if unknown:
        raise BadInput(
            f"bad [sweep.fidelity] setting(s) {', '.join(sorted(unknown))}; "
            "known: eta, min_fraction, promotion, resource"
        )
    sweep_doc |= table
    return table


def _space_doc(sweep_doc: dict, space_overrides: list[str]) -> dict:
    """`[sweep.space]` (default: lr over 1e-5..2e-4, log) with each `--space NAME=SPEC` over it."""
    space_doc = dict(sweep_doc.pop("space", {}) or {"lr": {"low": 1e-5, "high": 2e-4, "log": True}})
    for item in space_overrides:
        if "=" not in item:
            raise BadInput(f"bad --space {item!r}; write NAME=low:high[:log] or NAME=a|b|c")
        name, spec = (part.strip() for part in item.split("=", 1))
        before = space_doc.get(name)
        if " if " not in spec:  # a new range or new choices keep the parameter's condition
            if isinstance(before, dict) and "when" in before:
                spec = f"{spec} if {before['when']}"
            elif isinstance(before, str) and " if " in before:
                spec = f"{spec} if {before.split(' if ', 1)[1].strip()}"
        space_doc[name] = spec
    return space_doc


def _check_fidelity(cfg: SweepConfig, schedule_set_outside: bool) -> None:
    if cfg.promotion not in ("sync", "async"):
        raise BadInput(f"bad sweep: promotion {cfg.promotion!r}; use sync or async")
    if cfg.fidelity != "data":
        if schedule_set_outside:  # (`--fidelity none` over a [sweep.fidelity] table is a full-data run)
            raise BadInput(
                "bad sweep: eta, min_fraction and promotion set a multi-fidelity schedule; add --fidelity data "
                "(or a [sweep.fidelity] table), or drop them"
            )
        return
    if cfg.eta < 2 or not 0 < cfg.min_fraction < 1 / cfg.eta + 1e-12:
        raise BadInput(
            f"bad sweep: multi-fidelity needs eta >= 2 and 0 < min_fraction <= 1/eta (got eta {cfg.eta}, "
            f"min_fraction {cfg.min_fraction:g}); e.g. eta = 3, min_fraction = 0.111"
        )
    rungs = len(rung_fractions(cfg.eta, cfg.min_fraction))
    if cfg.trials < cfg.eta ** (rungs - 1):
        raise BadInput(
            f"bad sweep: {rungs} rungs with eta {cfg.eta} need at least {cfg.eta ** (rungs - 1)} "
            f"configurations (--trials {cfg.trials} would train the last one twice); "
            "raise --trials or --min-fraction"
        )
    if any(p.name in ("train_fraction", RUNG) for p in cfg.space):
        raise BadInput("bad sweep: with --fidelity data the sweep sets train_fraction itself; drop it from the space")


STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _check_store_uri(uri: str) -> None:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        get_artifact_repository(uri)
    except Exception as e:  # noqa: BLE001 - an unknown scheme, a malformed URI
        raise BadInput(
            f"bad sweep: --checkpoint-store {uri} is no artifact store MLflow knows ({str(e).splitlines()[0][:120]}); "
            "give run, none, a folder or a URI such as s3://bucket/ckpt"
        ) from None


def _check_settings(cfg: SweepConfig) -> None:
    if not STUDY_NAME.fullmatch(cfg.study_name):  # it names a folder under --out: a path would escape it
        raise BadInput(
            f"bad sweep: study name {cfg.study_name!r} is not a name; use letters, digits, '.', '_' and '-' "
            "(not starting with '.' or '-')"
        )
    if cfg.trials < 1 or (cfg.workers is not None and cfg.workers < 1) or cfg.fail_limit < 1:
        raise BadInput("bad sweep: trials, workers and fail_limit must be at least 1")
    if cfg.keep_checkpoints not in ("best", "all"):
        raise BadInput("bad sweep: keep_checkpoints is best or all")
    if cfg.trial_start not in ("fork", "exec"):
        raise BadInput(f"bad sweep: trial_start {cfg.trial_start!r}; use fork or exec")
    if cfg.checkpoint_store not in ("auto", "run", "none"):
        _check_store_uri(cfg.checkpoint_store)
    if cfg.sampler not in ("tpe", "random", "nsga2"):
        raise BadInput(f"bad sweep: sampler {cfg.sampler!r}; use tpe, random or nsga2")
    if cfg.fidelity not in ("none", "data"):
        raise BadInput(
            f"bad sweep: fidelity {cfg.fidelity!r}; use data (successive halving over the training-set "
            "fraction) or none"
        )
    objectives = parse_objectives(cfg.objective)
    for c in cfg.constraints:
        parse_constraint(c)
    if len(objectives) > 1 and cfg.fidelity == "data":
        raise BadInput(
            "bad sweep: --objective with costs and --fidelity data: halving ranks on dev accuracy alone; "
            "drop one (a multi-objective study trains every trial to its end)"
        )
    if cfg.constraints and cfg.fidelity == "data":
        raise BadInput("bad sweep: --constraint with --fidelity data: halving promotes on dev accuracy alone; drop one")
    if len(objectives) > 1 and cfg.warm_start:
        raise BadInput("bad sweep: --warm-start into a study with several objectives is not supported; drop one")
    if cfg.warm_start_mode not in ("strict", "loose"):
        raise BadInput(f"bad sweep: warm_start_mode {cfg.warm_start_mode!r}; use strict or loose")
    if cfg.warm_start and cfg.fidelity == "data":
        raise BadInput("bad sweep: --warm-start with --fidelity data is not supported; warm-start a full-data study")
    if cfg.enqueue and cfg.sampler == "random":
        raise BadInput("bad sweep: --enqueue with --sampler random: chosen trials are no random draws; use tpe")
    if cfg.enqueue and cfg.fidelity == "data":
        raise BadInput("bad sweep: --enqueue with --fidelity data is not supported; queue them in a full-data study")
    if len(cfg.enqueue) > cfg.trials:
        raise BadInput(f"bad sweep: {len(cfg.enqueue)} configurations to enqueue but --trials {cfg.trials}; raise it")
    if pruning_ticks(cfg) > 2**31 - 1:  # Optuna's RDB storage keeps steps as 32-bit integers
        raise BadInput(
            "bad sweep: the epochs range is too wide for the pruning clock (lcm of its values over 2^31); "
            "narrow it, e.g. --space epochs=1:6"
        )


def load_sweep_config(
    path: str | Path | None,
    train_overrides: dict[str, Any],
    sweep_overrides: dict[str, Any],
    space_overrides: list[str],
    tracking: TrackingConfig,
) -> SweepConfig:
    """The TOML's `[train]` and `[sweep]` tables with the command line's options over them (None: not given)."""
    doc = read_toml(path) if path else {}
    base = load_config(path, train_overrides)  # the one place TOML becomes a TrainConfig
    sweep_doc = dict(doc.get("sweep", {}))
    table = _fidelity_table(sweep_doc)
    space_doc = _space_doc(sweep_doc, space_overrides)
    unknown = set(sweep_doc) - SWEEP_KEYS
    if unknown:
        raise BadInput(f"bad [sweep] setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(SWEEP_KEYS))}")
    sweep_overrides = dict(sweep_overrides)
    table_known = sweep_doc.pop("enqueue", [])  # [[sweep.enqueue]] tables, then each --enqueue
    known = [
        *([table_known] if isinstance(table_known, dict) else table_known),
        *(sweep_overrides.pop("enqueue", None) or ()),
    ]
    in_toml = sweep_doc.pop("warm_start", [])
    warm = (*([in_toml] if isinstance(in_toml, str) else in_toml), *(sweep_overrides.pop("warm_start", None) or ()))
    in_toml = sweep_doc.pop("constraints", [])
    limits = (*([in_toml] if isinstance(in_toml, str) else in_toml), *(sweep_overrides.pop("constraints", None) or ()))
    if isinstance(sweep_doc.get("objective"), list):  # objective = ["dev_acc", "latency_ms"]
        sweep_doc["objective"] = ",".join(map(str, sweep_doc["objective"]))
    values = {**sweep_doc, **{k: v for k, v in sweep_overrides.items() if v is not None}}
    space = parse_space(space_doc)
    enqueue = tuple(known_configuration(item, space) for item in known)
    cfg = SweepConfig(
        base=base, space=space, tracking=tracking, enqueue=enqueue, warm_start=warm, constraints=limits, **values
    )
    _check_settings(cfg)
    outside = any(
        sweep_overrides.get(k) is not None or (k in sweep_doc and k not in table)
        for k in ("eta", "min_fraction", "promotion")
    )
    _check_fidelity(cfg, outside)
    return cfg


def check_runnable(cfg: SweepConfig) -> None:
    """Refuse, before a study or run is created, a sweep whose every trial would fail the same way."""
    resolve_device(cfg.base.device)
    for spec in values_trained(cfg.space, "model", cfg.base.model):
        check_model_spec(str(spec))
    for split in ("train", "dev"):
        split_path(cfg.base.data, split)


def cells(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Every model x truncation combination in the space (each is tried early)."""
    grid = [p for p in cfg.space if p.kind == "categorical" and p.name in ("model", "truncation")]
    combos: list[dict[str, Any]] = [{}]
    for p in grid:  # in the space's order: a parent's value is known before the parameters conditional on it
        combos = [{**c, p.name: v} for c in combos if p.active(c) for v in p.choices] + [
            c for c in combos if not p.active(c)
        ]
    return combos if grid else []


def pruning_ticks(cfg: SweepConfig) -> int:
    """Steps of the pruning clock per whole schedule: the lcm of every epochs value the space allows."""
    return math.lcm(*(int(e) for e in values_trained(cfg.space, "epochs", cfg.base.epochs)))


def report_step(epoch: int, epochs: int, ticks: int) -> int:
    """The Optuna step at which a trial reports its dev accuracy after `epoch` of `epochs`.

    Fair pruning: the learning rate decays over each trial's own sampled `epochs`, so after
    epoch 1 a 1-epoch trial is fully annealed while a 3-epoch trial is still at about 70 % of its
    rate. Comparing them at "epoch 1" prunes the longer trials for being mid-schedule. We keep the
    schedule tied to the sampled epochs (a short annealed run is a configuration worth finding,
    and changing the schedule would change what each configuration means) and instead report at
    the fraction of the schedule reached: step = epoch / epochs * ticks, ticks the lcm of every
    epochs value. The median pruner then only compares trials at the same point of their own
    schedules (in practice, trials of the same length; a step no other trial reached never prunes).
    """
    return epoch * (ticks // epochs) if ticks % epochs == 0 else round(epoch / epochs * ticks)


def spec_to_json(cfg: SweepConfig) -> dict:
    d = asdict(cfg)
    d["space"] = [asdict(p) for p in cfg.space]
    return d


def spec_from_json(d: dict) -> SweepConfig:
    d = dict(d)
    d["base"] = TrainConfig(**d["base"])
    d["space"] = tuple(
        Param(**{**p, "choices": tuple(p["choices"]), "when": tuple(p.get("when", ()))}) for p in d["space"]
    )
    d["tracking"] = TrackingConfig(**d["tracking"])
    d["enqueue"] = tuple(d.get("enqueue", ()))
    d["warm_start"] = tuple(d.get("warm_start", ()))
    d["constraints"] = tuple(d.get("constraints", ()))
    return SweepConfig(**d)
