"""The selected model as an MLflow pyfunc: premise/hypothesis in, label and three probabilities out.

Logged as "models from code" (this file is the model's code; no pickled object), with the
bertnli package copied beside it (`code_paths`), so `mlflow.pyfunc.load_model` and
`mlflow models serve` need no bertnli installation. The checkpoint folder rides along as
the artifact `checkpoint`.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from bertnli.data.snli import LABEL_NAMES
from bertnli.train.checkpoint import load_selected
from bertnli.train.evaluation import predict


class NLIModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.model, self.tokenizer, meta = load_selected(context.artifacts["checkpoint"])
        cfg = meta.get("config", {})
        self.max_len, self.truncation = cfg.get("max_len", 128), cfg.get("truncation", "longest_first")

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        missing = {"premise", "hypothesis"} - set(frame.columns)
        if missing:
            raise ValueError(f"input needs columns premise and hypothesis; missing {', '.join(sorted(missing))}")
        if frame.empty:
            return pd.DataFrame({"label": pd.Series(dtype=str), **{n: pd.Series(dtype="float64") for n in LABEL_NAMES}})
        for column in ("premise", "hypothesis"):
            text = frame[column].map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
            if not text.all():
                row = int((~text).argmax())
                raise MlflowException.invalid_parameter_value(
                    f"row {row}: {column} is {frame[column].iloc[row]!r}, not text; every row needs a premise and a "
                    "hypothesis"
                )
        probs = predict(
            self.model,
            self.tokenizer,
            frame["premise"].tolist(),
            frame["hypothesis"].tolist(),
            self.max_len,
            self.truncation,
        )
        out = pd.DataFrame(probs.astype("float64"), columns=LABEL_NAMES)
        out.insert(0, "label", [LABEL_NAMES[i] for i in probs.argmax(1)])
        return out


mlflow.models.set_model(NLIModel())
