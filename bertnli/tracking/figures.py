"""A run's figures (learning curves, confusion matrix) and the one headless matplotlib set-up every
figure of bertnli is drawn with."""

from __future__ import annotations

import math

from bertnli.data.snli import LABEL_NAMES
from bertnli.train.state import EpochMetrics


def pyplot():
    """matplotlib.pyplot on the Agg backend: figures are written on servers, in CI and by sweep workers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


LOG_STEPS = (range(1, 10), (1, 2, 5), (1,))  # the mantissas a log axis may label, densest first


def log_scale(ax, which: str = "x") -> None:
    """A log axis labelled in plain numbers (2e-05, 0.0001, 5) at the densest of LOG_STEPS whose labels fit side
    by side. matplotlib's own labels (3x10^-5 at every minor tick) collide on a learning-rate axis under a decade
    wide, and on the narrow panels of Optuna's slice plot."""
    from matplotlib import ticker

    getattr(ax, f"set_{which}scale")("log")
    axis = ax.xaxis if which == "x" else ax.yaxis

    def label(value: float, _pos) -> str:
        low, high = sorted(axis.get_view_interval())
        if value <= 0 or low <= 0:
            return ""
        size = axis.get_major_ticks()[0].label1.get_size()  # points
        length, needed = (ax.bbox.width, 4.5 * size) if which == "x" else (ax.bbox.height, 1.5 * size)  # 0.0001
        per_decade = length * 72 / ax.figure.dpi / max(math.log10(high / low), 1e-9)
        steps = next(s for s in LOG_STEPS if _fits(s, low, high, needed / per_decade))
        return f"{value:g}" if round(value / 10 ** math.floor(math.log10(value))) in steps else ""

    axis.set_major_formatter(ticker.FuncFormatter(label))
    axis.set_minor_formatter(ticker.FuncFormatter(label))


def _fits(steps, low: float, high: float, gap: float) -> bool:
    """Every two neighbouring labels of `steps` between low and high are at least `gap` decades apart."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    shown = [math.log10(m) + e for e in decades for m in steps if low <= m * 10**e <= high]
    return steps == LOG_STEPS[-1] or all(b - a >= gap for a, b in zip(shown, shown[1:]))


def integer_ticks(axis) -> None:
    """Epochs, trials: whole numbers only (matplotlib would put ticks at 1.25, 1.5, ...)."""
    from matplotlib import ticker

    axis.set_major_locator(ticker.MaxNLocator(integer=True))


def learning_curves_figure(history: list[EpochMetrics]):
    plt = pyplot()
    epochs = [m.epoch for m in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [m.train_loss for m in history], "o-", label="train")
    ax1.plot(epochs, [m.dev_loss for m in history], "s-", label="dev")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax2.plot(epochs, [m.train_acc for m in history], "o-", label="train")
    ax2.plot(epochs, [m.dev_acc for m in history], "s-", label="dev")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
        ax.set_xticks(epochs)
    fig.tight_layout()
    return fig


def confusion_figure(matrix, title: str):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(3), LABEL_NAMES, rotation=30)
    ax.set_yticks(range(3), LABEL_NAMES)
    ax.set(xlabel="predicted", ylabel="gold", title=title)
    for i in range(3):
        for j in range(3):
            ax.text(
                j,
                i,
                int(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if matrix[i, j] > matrix.max() / 2 else "black",
            )
    fig.tight_layout()
    return fig
