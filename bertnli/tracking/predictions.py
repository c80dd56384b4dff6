"""Per-example predictions of a run, one parquet file per split: what paired comparisons join on."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bertnli.data.snli import LABEL_NAMES
from bertnli.tracking.store import client
from bertnli.train.evaluation import EvalResult

PREDICTION_COLUMNS = ["id", "gold", "pred", *(f"p_{name}" for name in LABEL_NAMES)]


def predictions_frame(r: EvalResult):
    """One row per example, keyed by its SNLI pairID: what paired comparisons between runs join on."""
    import pandas as pd

    ids = r.ids if r.ids is not None else [str(i) for i in range(len(r.labels))]
    frame = pd.DataFrame(
        {"id": pd.Series(ids, dtype="string"), "gold": r.labels.astype("int8"), "pred": r.preds.astype("int8")}
    )
    for i, name in enumerate(LABEL_NAMES):
        frame[f"p_{name}"] = r.probs[:, i].astype("float32")
    return frame


def write_predictions(r: EvalResult, path: Path) -> None:
    predictions_frame(r).to_parquet(path, index=False)


def load_predictions(run_id: str, split: str, tracking_uri: str | None = None):
    """A run's `predictions_<split>.parquet` as a DataFrame, or None if the run has none for that split."""
    import pandas as pd

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per file would bury the answer
    c = client(tracking_uri)
    name = f"predictions_{split}.parquet"
    if name not in {f.path for f in c.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return pd.read_parquet(c.download_artifacts(run_id, name, tmp))
