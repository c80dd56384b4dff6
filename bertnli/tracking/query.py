"""Recorded runs as a pandas DataFrame (`mlflow.search_runs`, short column names): what reports,
comparisons and verdicts read."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bertnli import BadInput
from bertnli.tracking.store import client

PARAMS = [
    "model",
    "truncation",
    "lr",
    "epochs",
    "seed",
    "max_len",
    "batch_size",
    "limit_train",
    "limit_eval",
    "num_layers",
    "optimizer",
    "train_fraction",
]


METRICS = ["best_dev_acc", "test_acc", "best_epoch", "wall_seconds", "examples_per_sec", "dev_acc", "train_loss"]
COSTS = ["train_seconds", "params", "peak_mem_mib", "latency_ms_b1", "latency_ms_b256"]  # train/cost.py


def experiment_ids(c, experiments: list[str] | None) -> dict[str, str]:
    """{experiment id: name} of the named experiments (all of them for None); an unknown name is one line."""
    names = {x.experiment_id: x.name for x in c.search_experiments()}
    missing = [e for e in experiments or [] if e not in names.values()]
    if missing:
        raise BadInput(
            f"no MLflow experiment {', '.join(missing)}; see `mlflow experiments search` or drop --experiment"
        )
    return {i: n for i, n in names.items() if not experiments or n in experiments}


def run_filter(study: str | None, parent_run_id: str | None, tags: dict[str, str] | None) -> str:
    """An MLflow search filter: the trials of a study, the children of a parent run, runs with these tags."""
    filters = [f"tags.`optuna.study` = '{study}'"] if study else []
    if parent_run_id:
        filters.append(f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    filters += [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
    return " and ".join(filters)


def short_columns(df: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """`mlflow.search_runs`' columns (params.lr, tags.optuna.trial, ...) under the short names reports use."""
    out = pd.DataFrame(
        {
            "run_id": df["run_id"],
            "experiment": df["experiment_id"].map(names),
            "run_name": df.get("tags.mlflow.runName"),
            "status": df["status"],
            "start_time": df["start_time"],
        }
    )
    for p in PARAMS:
        out[p] = df.get(f"params.{p}")
    for m in METRICS + COSTS:
        out[m] = df.get(f"metrics.{m}")
    out["trial"] = df.get("tags.optuna.trial")
    out["state"] = df.get("tags.optuna.state")
    out["parent_run_id"] = df.get("tags.mlflow.parentRunId")
    multi_fidelity = "tags.rung" in df
    out["rung"] = pd.to_numeric(df.get("tags.rung"), errors="coerce") if multi_fidelity else np.nan
    out["config"] = df.get("tags.bertnli.config")
    out["data_sha256"] = df.get("tags.data.train.sha256")
    for col in ["lr", "epochs", "seed", "max_len", "batch_size", "limit_train", "limit_eval", "train_fraction"]:
        out[col] = pd.to_numeric(out[col], errors="coerce")
    return out.reset_index(drop=True)


def load_runs(
    experiments: list[str] | None = None,
    tracking_uri: str | None = None,
    study: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    include_parents: bool = False,
) -> pd.DataFrame:
    """One row per training run, from `mlflow.search_runs`, with short column names.

    Columns: run_id, experiment, run_name, status, model, truncation, lr, epochs, seed, max_len, batch_size,
    limit_train, limit_eval, best_dev_acc, test_acc, best_epoch, wall_seconds, examples_per_sec, trial,
    parent_run_id, state, data_sha256.
    """
    import mlflow

    names = experiment_ids(client(tracking_uri), experiments)
    df = mlflow.search_runs(
        experiment_ids=list(names), filter_string=run_filter(study, parent_run_id, tags), max_results=50_000
    )
    if df.empty:
        return pd.DataFrame(columns=["run_id", "experiment", "model", "truncation", "lr", "best_dev_acc", "test_acc"])
    if not include_parents and "tags.bertnli.role" in df:
        df = df[df["tags.bertnli.role"] != "sweep-parent"]
    return short_columns(df, names)


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that ended FINISHED with a dev score: the only ones a table or a comparison may use."""
    return runs[(runs["status"] == "FINISHED") & runs["best_dev_acc"].notna()]
