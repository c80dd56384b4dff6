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


LOG_STEPS = (range(1, 10), (1, 2, 5), (1, 3), (1,))  # the mantissas a log axis may label, densest first


def log_scale(ax, which: str = "x") -> None:
    """A log axis labelled in plain numbers (2e-05, 0.0001, 5) at the densest of LOG_STEPS whose labels fit side
    by side and show at least two values. matplotlib's own labels (3x10^-5 at every minor tick) collide on a
    learning-rate axis under a decade wide, and on the narrow panels of Optuna's slice plot. An axis of its own
    data (not the twin axes of Optuna's parallel coordinates) too narrow to hold one whole mantissa is widened
    to the nearest ones."""
    from matplotlib import ticker

    getattr(ax, f"set_{which}scale")("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    low, high = sorted(getattr(ax, f"get_{which}lim")())
    if (ax.collections or ax.lines) and 0 < low and not _in_view(LOG_STEPS[0], low, high):
        getattr(ax, f"set_{which}lim")(_whole(low, up=False), _whole(high, up=True))  # else not one label

    def label(value: float, _pos) -> str:
        low, high = sorted(axis.get_view_interval())
        if value <= 0 or low <= 0:
            return ""
        mantissa, _ = _mantissa(value)
        if not math.isclose(mantissa, round(mantissa), rel_tol=1e-6):  # linear minor ticks of a very narrow axis
            return ""
        length = (ax.bbox.width if which == "x" else ax.bbox.height) * 72 / ax.figure.dpi  # points
        size = axis.majorTicks[0].label1.get_size()
        steps = log_steps(low, high, length / max(math.log10(high / low), 1e-9), size, which)
        return f"{value:g}" if round(mantissa) in steps else ""

    axis.set_major_formatter(ticker.FuncFormatter(label))
    axis.set_minor_formatter(ticker.FuncFormatter(label))


def log_steps(low: float, high: float, points_per_decade: float, size: float, which: str = "x"):
    """The densest LOG_STEPS whose labels between low and high do not touch, preferring one that shows two."""
    views = [(s, _in_view(s, low, high)) for s in LOG_STEPS]
    fitting = [(s, shown) for s, shown in views if _apart(shown, points_per_decade, size, which)] or views[-1:]
    return max(fitting, key=lambda view: min(len(view[1]), 2))[0]  # the densest of those showing most


def _mantissa(value: float) -> tuple[float, int]:
    """`value` = mantissa x 10**exponent with 1 <= mantissa < 10; a hair under a power of ten (0.0001 computed as
    9.99...e-05) counts as that power."""
    exponent = math.floor(math.log10(value) + 1e-9)
    return value / 10**exponent, exponent


def _whole(value: float, up: bool) -> float:
    """`value` rounded down or up to a whole mantissa: 2.17e-05 -> 2e-05 or 3e-05."""
    mantissa, exponent = _mantissa(value)
    return (math.ceil(mantissa - 1e-9) if up else math.floor(mantissa + 1e-9)) * 10.0**exponent


def _in_view(steps, low: float, high: float) -> list[float]:
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    return [m * 10.0**e for e in decades for m in steps if low <= m * 10.0**e <= high]


def _apart(values: list[float], points_per_decade: float, size: float, which: str) -> bool:
    """Neighbouring labels leave a gap: along x, half of each label's width (about 0.6 em a character) and
    one em between; along y, one and a half lines."""
    for a, b in zip(values, values[1:]):
        room = (math.log10(b) - math.log10(a)) * points_per_decade
        needed = 0.3 * size * (len(f"{a:g}") + len(f"{b:g}")) + size if which == "x" else 1.5 * size
        if room < needed:
            return False
    return True


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
