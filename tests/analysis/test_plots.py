"""The report's figures are read by people: their labels must be legible, whatever the sweep drew."""

import numpy as np
import pandas as pd
import pytest
from figure_labels import assert_legible, shown_labels

from bertnli.analysis.plots import plot_dev_vs_lr


# the session-15 CPU study's learning rates (1.2e-5 to 2.4e-4), a range under one decade, and one of 1 %
@pytest.mark.parametrize(
    "lrs",
    [
        [1.22e-5, 1.48e-5, 2.97e-5, 4.13e-5, 6.47e-5, 1.11e-4, 2.34e-4],
        [3e-5, 4e-5, 8e-5],
        [2e-5, 2.02e-5],
        [2.2e-5, 2.8e-5],  # no whole mantissa in view: widened to 2e-05 .. 3e-05
    ],
)
def test_the_learning_rate_axis_labels_do_not_overlap(lrs):
    runs = pd.DataFrame(
        {"lr": lrs, "best_dev_acc": np.linspace(0.5, 0.8, len(lrs)), "model": "minilm-l6", "truncation": "ratio"}
    )
    fig = plot_dev_vs_lr(runs)
    assert_legible(shown_labels(fig, fig.axes[0].xaxis), at_least=1 if lrs[-1] / lrs[0] < 1.1 else 2)
