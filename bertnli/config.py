"""Every setting of a run, in one frozen dataclass.

The one place that turns an experiment TOML file plus command-line options into a config:
options override the file, the file overrides the defaults. Nothing else reads settings.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bertnli import BadInput

TRUNCATIONS = ("longest_first", "ratio")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "linear")


@dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning run. Field names are the MLflow param names (docs/architecture.md)."""

    model: str = "minilm-l6"
    num_layers: int | None = None  # keep only the first N encoder layers (model size on CPU)
    num_heads: int | None = (
        None  # attention heads of a d2l archive (it does not store them); None: hidden/64, with a warning
    )
    data: str = "../shared/data/snli-resplit"
    max_len: int = 128
    truncation: str = "longest_first"
    batch_size: int = 32
    eval_batch_size: int = 256
    lr: float = 1e-4  # chosen on dev for minilm-l6, 1 epoch on snli-resplit (README, "Measured")
    epochs: int = 1
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    schedule: str = "linear"
    warmup: float = 0.1  # fraction of all optimisation steps
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    dropout: float = 0.1
    seed: int = 0
    limit_train: int | None = None  # first N training examples (CPU runs)
    limit_eval: int | None = None  # first N dev and test examples
    train_fraction: float = 1.0  # a nested, label-stratified subset of the (limited) train split: a multi-fidelity rung
    bucket: bool = True  # length-bucketed batches + dynamic padding (False: pad to max_len)
    pad_multiple: int = 8  # batch widths rounded up to a multiple of this (1: exact); fewer shapes for GPU kernels
    compile: bool = (
        False  # torch.compile(dynamic=True) the training forward: pays on long GPU runs (benchmarks/README.md)
    )
    amp: bool = True  # bf16 autocast where the hardware does bf16 natively (CUDA; CPUs with AVX512-BF16/AMX)
    device: str = "auto"
    checkpoint_every: int = 500  # optimisation steps between mid-epoch checkpoints; 0: epoch ends only
    eval_test: bool = True  # evaluate test once on the selected weights
    cache_dir: str = ".cache/bertnli"

    def __post_init__(self) -> None:
        checks = [
            (self.truncation in TRUNCATIONS, f"truncation must be one of {', '.join(TRUNCATIONS)}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
            (self.max_len >= 8, "max_len must be at least 8"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.eval_batch_size >= 1, "eval_batch_size must be at least 1"),
            (self.lr > 0, "lr must be positive"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (0 <= self.warmup < 1, "warmup is a fraction of steps in [0, 1)"),
            (self.grad_clip >= 0, "grad_clip must be >= 0 (0 turns clipping off)"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (self.num_layers is None or self.num_layers >= 1, "num_layers must be at least 1"),
            (self.num_heads is None or self.num_heads >= 1, "num_heads must be at least 1"),
            (self.limit_train is None or self.limit_train >= 1, "limit_train must be at least 1"),
            (self.limit_eval is None or self.limit_eval >= 1, "limit_eval must be at least 1"),
            (0 < self.train_fraction <= 1, "train_fraction must be in (0, 1]"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
            (self.pad_multiple >= 1, "pad_multiple must be at least 1 (1 pads to the longest row exactly)"),
        ]
        for ok, message in checks:
            if not ok:
                raise BadInput(f"bad config: {message}")

    def to_flat_dict(self) -> dict[str, Any]:
        """Params for MLflow: one flat dict, None written as an empty string."""
        return {k: ("" if v is None else v) for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_bool(value: Any) -> bool:
    """A true/false setting from TOML, the command line or the environment ("false" is a truthy string)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in TRUE_WORDS + FALSE_WORDS:
        raise ValueError(f"{value!r} is not true or false")
    return text in TRUE_WORDS


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """TOML and CLI values into the field's type, with a one-line error naming the key."""
    text = str(kind)
    try:
        if value is None:
            return None
        if "bool" in text:
            return parse_bool(value)
        if "int" in text:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if "float" in text:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise BadInput(f"bad config: {name}={value!r} is not a valid {text}") from None


def config_from_dict(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    known = {f.name: f.type for f in fields(TrainConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise BadInput(f"bad config: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    coerced = {k: _coerce(k, v, known[k]) for k, v in values.items()}
    return dataclasses.replace(base or TrainConfig(), **coerced)


TABLES = ("train", "sweep", "grid", "expect")  # an experiment file's tables (keys outside them are [train]'s)


def read_toml(path: str | Path) -> dict[str, Any]:
    """An experiment file; a table bertnli does not know (a misspelling such as [sweeps]) is refused, not ignored."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"config file {path} not found; give a path such as experiments/quick_cpu.toml")
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"config file {path} is not valid TOML: {e}") from None
    unknown = [k for k, v in doc.items() if isinstance(v, dict) and k not in TABLES]
    if unknown:
        raise BadInput(f"{path}: unknown table [{unknown[0]}]; known: {', '.join(f'[{t}]' for t in TABLES)}")
    return doc


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """TOML `[train]` table (or top-level keys), then CLI overrides (None means not given)."""
    values: dict[str, Any] = {}
    if path is not None:
        doc = read_toml(path)
        values.update(doc.get("train", {k: v for k, v in doc.items() if not isinstance(v, dict)}))
        values.pop("seeds", None)  # an axis over runs, not a setting of one run (see `seeds_setting`)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(values)


def parse_seeds(value: Any, where: str = "--seeds") -> list[int]:
    """`0,1,2` or [0, 1, 2] -> [0, 1, 2]: distinct non-negative seeds, in the order given."""
    parts = value if isinstance(value, list) else str(value).split(",")
    try:
        seeds = [int(str(x).strip()) for x in parts if str(x).strip() != ""]
    except ValueError:
        raise BadInput(f"{where} {value!r} is not a list of integers; write e.g. 0,1,2") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise BadInput(f"{where} {value!r} must be distinct non-negative integers, e.g. 0,1,2")
    return seeds


def seeds_setting(path: str | Path | None, cli_value: str | None) -> list[int] | None:
    """The seeds axis: `--seeds` wins over the TOML's `seeds = [...]` in [train]; None: one run."""
    if cli_value is not None:
        return parse_seeds(cli_value)
    if path is None:
        return None
    doc = read_toml(path)
    value = doc.get("train", doc).get("seeds")
    return None if value is None else parse_seeds(value, f"{Path(path).name}: seeds")


@dataclass(frozen=True)
class TrackingConfig:
    """Where runs are recorded: MLflow's own env var wins over the local default."""

    tracking_uri: str | None = None
    experiment: str = "bertnli"
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    system_metrics: bool | None = None  # None: on, unless BERTNLI_SYSTEM_METRICS=0
    system_metrics_interval: float = 10.0  # seconds between MLflow system-metrics samples
    patience_s: float | None = (
        None  # how long a run waits out an unreachable MLflow; None: $BERTNLI_MLFLOW_PATIENCE or 300
    )


# Settings that do not change the training trajectory: a resumed run may take new values for them.
RESUME_MAY_CHANGE = ("data", "cache_dir", "eval_batch_size", "checkpoint_every", "device", "compile")


def resume_changes(
    saved: TrainConfig,
    asked: dict,
    what: str = "--resume continues a run with its saved settings",
    fix: str = "drop them, or start a new run with --out",
) -> dict:
    """Refuse, in one line naming them, settings that would silently change a resumed run (its
    optimizer state, step and MLflow params belong to the saved ones). Returns the allowed ones."""
    changed = {
        k: v for k, v in asked.items() if k not in RESUME_MAY_CHANGE and config_from_dict({k: v}, saved) != saved
    }
    if changed:
        names = ", ".join(f"{k} (saved {getattr(saved, k)!r}, given {v!r})" for k, v in sorted(changed.items()))
        raise BadInput(f"{what}; these would change it: {names}; {fix}")
    return {k: v for k, v in asked.items() if k in RESUME_MAY_CHANGE}
