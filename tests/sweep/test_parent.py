"""The parent run's Optuna figures, as a reader opens them in the MLflow UI."""

import warnings

import optuna
import optuna.visualization.matplotlib as ovm
import pytest
from figure_labels import assert_legible, shown_labels

from bertnli.sweep.parent import legible
from bertnli.tracking.figures import pyplot


@pytest.fixture(scope="module")
def study():
    """A study shaped like the CPU sweep: a log learning rate spanning just over a decade, epochs, model, truncation."""
    s = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(14):
        t = s.ask()
        lr = t.suggest_float("lr", 1.2e-5, 2.4e-4, log=True)
        epochs = t.suggest_int("epochs", 1, 3)
        model = t.suggest_categorical("model", ["minilm-l6", "minilm-l3"])
        t.suggest_categorical("truncation", ["longest_first", "ratio"])
        s.tell(t, 0.5 + 0.1 * epochs - abs(lr - 1e-4) * 100 - 0.1 * (model == "minilm-l3"))
    return s


def drawn(study, fn: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's matplotlib figures are experimental
        ax = getattr(ovm, fn)(study)
    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    legible(fig, fn, n_params=4)
    return fig


def test_the_slice_plot_labels_its_learning_rate_and_keeps_its_colour_bar_clear_of_the_panels(study):
    fig = drawn(study, "plot_slice")
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    (lr,) = [ax for ax in panels if ax.get_xscale() == "log"]
    assert_legible(shown_labels(fig, lr.xaxis), at_least=2)
    (bar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    renderer = fig.canvas.get_renderer()
    bar_box = bar.get_window_extent(renderer)
    assert all(ax.get_tightbbox(renderer).x1 < bar_box.x0 for ax in panels)  # nothing drawn under the colour bar
    pyplot().close(fig)


def test_the_parallel_coordinate_learning_rate_axis_is_legible(study):
    fig = drawn(study, "plot_parallel_coordinate")
    (lr,) = [ax for ax in fig.axes if ax.get_yscale() == "log"]
    assert_legible(shown_labels(fig, lr.yaxis), at_least=2, along="y")
    pyplot().close(fig)


def test_the_optimization_history_counts_trials_in_whole_numbers(study):
    fig = drawn(study, "plot_optimization_history")
    texts = [t for t, _ in shown_labels(fig, fig.axes[0].xaxis)]
    assert texts and all(float(t.replace("−", "-")).is_integer() for t in texts)
    pyplot().close(fig)
