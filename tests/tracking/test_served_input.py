"""The logged model's input checks: a missing value is a clear error naming its row and column; no rows, no rows."""

import shutil

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from tiny_runs import tiny_cfg

from bertnli import BadInput
from bertnli.config import TrackingConfig
from bertnli.tracking.models import pin
from bertnli.tracking.run import train_run


@pytest.fixture(scope="module")
def pyfunc(tiny_snli, tmp_path_factory, store_template):
    tmp = tmp_path_factory.mktemp("served-input")
    shutil.copyfile(store_template, tmp / "mlflow.db")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    _, run_id = train_run(
        tiny_cfg(tiny_snli, tmp, epochs=1, limit_train=64), tmp / "run", TrackingConfig(uri, "in"), progress=False
    )
    mlflow.set_tracking_uri(uri)
    return mlflow.pyfunc.load_model(f"runs:/{run_id}/model")


@pytest.mark.parametrize("column", ["premise", "hypothesis"])
def test_a_missing_value_names_its_row_and_column(pyfunc, column):
    """Seen: a null hypothesis (or premise) got "unexpected error" and a Python traceback when served."""
    frame = pd.DataFrame({"premise": ["A man sings.", "Two dogs run."], "hypothesis": ["A person sings.", "Dogs run."]})
    frame.loc[1, column] = None
    with pytest.raises(MlflowException, match=rf"row 1: {column} is (None|nan|<NA>), not text") as e:
        pyfunc.predict(frame)
    assert e.value.get_http_status_code() == 400


def test_an_empty_frame_gives_an_empty_result(pyfunc):
    out = pyfunc.predict(pd.DataFrame({"premise": pd.Series(dtype=str), "hypothesis": pd.Series(dtype=str)}))
    assert out.empty and list(out.columns) == ["label", "entailment", "contradiction", "neutral"]


def test_a_served_model_pins_whichever_distribution_provides_a_package():
    """MLflow installed as mlflow-skinny has no `mlflow` distribution: the pin falls back to the one that is there
    instead of failing at the end of a sweep (as it did on a host with mlflow-skinny)."""
    from importlib.metadata import version

    assert pin(("bertnli-no-such-distribution", "pytest")) == f"pytest=={version('pytest')}"
    assert pin(("torch",)) == f"torch=={version('torch').split('+')[0]}"  # the local +cpu tag is no pip pin
    with pytest.raises(BadInput, match="pip install bertnli-no-such-distribution"):
        pin(("bertnli-no-such-distribution",))
