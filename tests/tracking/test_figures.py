"""The one matplotlib set-up and the axis helpers every bertnli figure is drawn with."""

import pytest
from figure_labels import assert_legible, shown_labels

from bertnli.tracking.figures import integer_ticks, log_scale, pyplot


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
