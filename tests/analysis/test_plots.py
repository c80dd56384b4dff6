"""The report's figures are read by people: their labels must be legible, whatever the sweep drew."""

import numpy as np
import pandas as pd
import pytest

from bertnli.analysis.plots import plot_dev_vs_lr
from bertnli.tracking.figures import integer_ticks, log_scale, pyplot


def shown_labels(fig, axis):
    """The tick labels a reader sees on `axis` (major and minor), with their boxes on the drawn canvas."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ticks = [*axis.get_major_ticks(), *axis.get_minor_ticks()]
    low, high = sorted(axis.get_view_interval())
    return [
        (t.label1.get_text(), t.label1.get_window_extent(renderer))
        for t in ticks
        if t.label1.get_visible() and t.label1.get_text() and low <= t.get_loc() <= high
    ]


def assert_legible(labels, at_least: int):
    assert len(labels) >= at_least, [text for text, _ in labels]
    boxes = sorted((b.x0, b.x1, t) for t, b in labels)
    for (_, right, a), (left, _, b) in zip(boxes, boxes[1:]):
        assert right < left, f"tick labels {a!r} and {b!r} overlap"


# the session-15 CPU study's learning rates (1.2e-5 to 2.4e-4), and a range under one decade
@pytest.mark.parametrize("lrs", [[1.22e-5, 1.48e-5, 2.97e-5, 4.13e-5, 6.47e-5, 1.11e-4, 2.34e-4], [3e-5, 4e-5, 8e-5]])
def test_the_learning_rate_axis_labels_do_not_overlap(lrs):
    runs = pd.DataFrame(
        {"lr": lrs, "best_dev_acc": np.linspace(0.5, 0.8, len(lrs)), "model": "minilm-l6", "truncation": "ratio"}
    )
    fig = plot_dev_vs_lr(runs)
    assert_legible(shown_labels(fig, fig.axes[0].xaxis), at_least=2)


@pytest.mark.parametrize("values", [[4.1, 8.9], [4.1, 30.0], [2e5, 3e7]])  # latency in ms; parameter counts
def test_a_log_axis_is_labelled_in_plain_numbers_at_least_twice(values):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(values, [0.5] * len(values))
    log_scale(ax)
    labels = shown_labels(fig, ax.xaxis)
    assert_legible(labels, at_least=2)
    assert all(float(text) > 0 for text, _ in labels)  # plain numbers, no mathtext
    plt.close(fig)


def test_epoch_axes_have_whole_numbers_only():
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [0.7, 0.75, 0.78])
    integer_ticks(ax.xaxis)
    assert all(float(text.replace("−", "-")).is_integer() for text, _ in shown_labels(fig, ax.xaxis))
    plt.close(fig)
