"""Experiment files (`experiments/NAME.toml`): run one as written, check its data, judge its target.

An experiment file is a `[train]` table (a TrainConfig), optionally `seeds = [...]` in it, a
`[grid]` of values to cross, and an `[expect]` table: the target (`metric`, `target`,
`tolerance`), what the run needs (`needs`, with a `reduced` variant for smaller machines) and
the data digests it must see (`data_sha256`). `reproduce` runs it and ends with one verdict.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable

import torch

from bertnli import BadInput
from bertnli.config import TrackingConfig, TrainConfig, load_config, read_toml, seeds_setting
from bertnli.tracking.lineage import DataCheck
from bertnli.tracking.run import train_run
from bertnli.tracking.seeds import train_seed_group
from bertnli.tracking.store import how_to_see


def experiment_path(name: str) -> Path:
    """`NAME` means experiments/NAME.toml; a path ending in .toml is taken as it is."""
    return Path(name) if name.endswith(".toml") else Path("experiments") / f"{name}.toml"


def grid_combos(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of the `[grid]` values, in the file's order ([{}] for no grid: one run)."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]


def check_runnable_here(stem: str, expect: dict, cfg: TrainConfig, force: bool) -> None:
    """Refuse, before any work, an experiment that needs a GPU or data this machine lacks (unless forced)."""
    if expect.get("needs") and not force and (not torch.cuda.is_available() or not Path(cfg.data).is_dir()):
        reduced = expect.get("reduced")
        raise BadInput(
            f"{stem} needs {expect['needs']}; this machine lacks them"
            + (f"; run the reduced variant: bertnli-exp reproduce {reduced}" if reduced else "")
            + " (or --force)"
        )


def verdict(stem: str, expect: dict, result, run_id: str) -> tuple[str, bool | None]:
    """The last line: target, measured, PASS or FAIL (None: the file sets no target)."""
    metric = expect.get("metric", "best_dev_acc")
    measured = result.test.acc if metric == "test_acc" and result.test else result.best_dev_acc
    target = expect.get("target")
    if target is None:
        return f"verdict: {stem}: no target; measured {metric} {measured:.4f}; run {run_id}", None
    floor = target - expect.get("tolerance", 0.0)
    ok = measured >= floor
    return (
        f"verdict: {stem}: target {metric} >= {floor:.4f}, measured {measured:.4f}: "
        f"{'PASS' if ok else 'FAIL'}; run {run_id}"
    ), ok


def _compare_hint(stem: str, combos: list[dict], runs: int, experiment: str) -> str:
    cell = lambda combo: ",".join(f"{k}={v}" for k, v in combo.items())  # noqa: E731
    return f"{stem}: {runs} runs; compare them with: bertnli-exp report --experiment {experiment}" + (
        f" or bertnli-exp compare --cell {cell(combos[0])} --cell {cell(combos[1])} --experiment {experiment}"
        if len(combos) == 2
        else ""
    )


def run_combo(
    stem: str,
    run_cfg: TrainConfig,
    combo: dict,
    seeds: list[int] | None,
    tracking_uri: str | None,
    experiment: str | None,
    progress: bool,
    log: Callable[[str], Any],
    data_check: DataCheck,
) -> tuple:
    """One grid combination: a run (started anew each time), or a seed group (resumed); each run's data checked.
    Returns (fit result or None for a seed group, the last run id)."""
    out = f"outputs/{stem}/" + ("-".join(f"{k}={v}" for k, v in combo.items()) or "run")
    tracking = TrackingConfig(tracking_uri, experiment or stem, None, {"bertnli.experiment_file": stem})
    if seeds is not None:
        fix = f"undo the change to resume, or delete {out} to run the experiment afresh"
        _, done = train_seed_group(run_cfg, seeds, out, tracking, progress, log, fix=fix)
        for seed, dev, run_id in done:
            log(
                f"{stem} {combo} seed {seed}: "
                + (f"dev {dev:.4f}" if dev is not None else "adopted")
                + f" run {run_id}"
            )
            log(data_check.after(run_id, tracking_uri, stem))
        return None, done[-1][2]
    result, run_id = train_run(run_cfg, out, tracking, progress=progress, overwrite=True)
    test = result.test.acc if result.test else float("nan")
    log(f"{stem} {combo or ''}: dev {result.best_dev_acc:.4f} test {test:.4f} run {run_id}")
    log(data_check.after(run_id, tracking_uri, stem))
    return result, run_id


def reproduce(
    name: str,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], Any] = print,
) -> bool | None:
    """Run experiments/NAME.toml: every grid combination (times its seeds), each run's data checked.

    Returns whether a single-run experiment met its target (None for grids, seed groups, or no target).
    """
    path = experiment_path(name)
    doc, stem = read_toml(path), path.stem
    expect, cfg = doc.get("expect", {}), load_config(path)
    check_runnable_here(stem, expect, cfg, force)
    if "sweep" in doc:
        raise BadInput(f"{stem} is a study: run it with bertnli-exp sweep --config {path}")
    data_check = DataCheck.before(cfg.data, expect.get("data_sha256"))  # refuses other data before any training
    grid = doc.get("grid", {})
    combos, seeds = grid_combos(grid), seeds_setting(path, None)
    if seeds is not None and "seed" in grid:
        raise BadInput(f"{path}: seeds in [train] and seed in [grid] do not mix; keep one")
    runs = [
        run_combo(stem, cfg.replace(**combo), combo, seeds, tracking_uri, experiment, progress, log, data_check)
        for combo in combos
    ]
    if grid or seeds is not None:
        log(_compare_hint(stem, combos, len(combos) * len(seeds or [0]), experiment or stem))
        log(f"see them: {how_to_see(tracking_uri, runs[-1][1])}")
        return None
    line, ok = verdict(stem, expect, *runs[0])
    log(f"see it: {how_to_see(tracking_uri, runs[0][1])}")
    log(line)
    return ok
