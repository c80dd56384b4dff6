"""Seed groups: one run per seed of one configuration, tagged `bertnli.seed_group`, resumable as a group."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path
from typing import Callable

from bertnli.config import TrackingConfig, TrainConfig, config_from_dict, resume_changes
from bertnli.files import atomic_write
from bertnli.tracking.run import train_run
from bertnli.tracking.store import client
from bertnli.train.prepare import check_inputs


def seed_group_settings(out_dir: Path, marker: dict) -> TrainConfig | None:
    """The configuration a seed group was started with: its marker's, or (an older marker has none)
    the config.json of any seed it started. None for a new group."""
    saved = marker.get("config")
    if saved is None:
        started = sorted(out_dir.glob("seed-*/config.json"))
        saved = json.loads(started[0].read_text()) if started else None
    if saved is None:
        return None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return config_from_dict({k: v for k, v in saved.items() if k in known and k != "seed"})


def train_seed_group(
    cfg: TrainConfig,
    seeds: list[int],
    out_dir: str | Path,
    tracking: TrackingConfig,
    progress: bool = True,
    log: Callable[[str], None] = print,
    fix: str = "drop them to resume the group, or give another --out for a new one",
) -> tuple[str, list[tuple[int, float | None, str]]]:
    """One run per seed, all tagged `bertnli.seed_group=<group>`: a cell's score is a distribution over seeds.

    Rerunning the same command with the same --out resumes: finished seeds are adopted (never
    trained again), an interrupted one continues from its last checkpoint in its own MLflow run.
    Returns the group and (seed, best dev accuracy or None when adopted, run id) per seed.
    """
    out_dir = Path(out_dir)
    marker = out_dir / "seed_group.json"
    if not marker.is_file():  # a new group: bad input leaves no folder behind (train_run checks each new seed too)
        check_inputs(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    before = json.loads(marker.read_text()) if marker.is_file() else {}
    group = before.get("group") or f"{out_dir.name}-{uuid.uuid4().hex[:8]}"
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "seed"}
    started_with = seed_group_settings(out_dir, before)
    if started_with is not None:  # a group is one configuration over seeds: a rerun resumes it, never changes it
        resume_changes(started_with, settings, what=f"{out_dir} holds seed group {group} with other settings", fix=fix)
    atomic_write(marker, json.dumps({"group": group, "seeds": seeds, "config": settings}))
    tags = {**tracking.tags, "bertnli.seed_group": group, "bertnli.seeds": ",".join(map(str, seeds))}
    done = []
    for seed in seeds:
        folder = out_dir / f"seed-{seed}"
        saved = json.loads((folder / "mlflow_run.json").read_text()) if (folder / "mlflow_run.json").is_file() else None
        if saved and client(saved["tracking_uri"]).get_run(saved["run_id"]).info.status == "FINISHED":
            log(f"seed {seed}: already finished in run {saved['run_id']}; adopted")
            done.append((seed, None, saved["run_id"]))
            continue
        name = f"{tracking.run_name}-s{seed}" if tracking.run_name else None
        result, run_id = train_run(
            cfg.replace(seed=seed),
            folder,
            TrackingConfig(tracking.tracking_uri, tracking.experiment, name, tags),
            resume=saved is not None,
            progress=progress,
        )
        done.append((seed, result.best_dev_acc, run_id))
    return group, done
