"""The report's figures, one function each, drawn from the tables `report` and `compare` compute.

Every function takes finished tables (DataFrames) and returns a matplotlib figure; writing the
PNGs and embedding them is `report.write_report`'s job. This module imports neither `report` nor
`compare`, so the imports run one way: tables -> plots -> pages.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bertnli.analysis.stats import p_phrase
from bertnli.tracking.figures import integer_ticks, log_scale, pyplot
from bertnli.tracking.store import client


def plot_dev_vs_lr(finished_runs: pd.DataFrame):
    """Best dev accuracy of each finished run against its learning rate (log scale)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for (trunc, model), g in finished_runs.groupby(["truncation", "model"]):
        ax.scatter(
            g["lr"],
            g["best_dev_acc"],
            label=f"{model} / {trunc}",
            marker="o" if trunc == "longest_first" else "^",
            alpha=0.8,
        )
    log_scale(ax)
    ax.set(xlabel="learning rate (log)", ylabel="best dev accuracy", title="dev accuracy vs learning rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_by_cell(g: pd.DataFrame):
    """`report.grouped`'s table: dev mean ± std per model × truncation, and the best run."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{m}\n{t}" for m, t in zip(g["model"], g["truncation"])]
    ax.bar(labels, g["dev_mean"], yerr=g["dev_std"].fillna(0), capsize=4, alpha=0.7, label="dev mean ± std")
    ax.scatter(labels, g["dev_best"], color="black", zorder=3, label="dev best")
    ax.set(ylabel="dev accuracy", title="accuracy by model × truncation")
    lo = np.nanmin(g["dev_mean"] - g["dev_std"].fillna(0)) if len(g) else 0
    ax.set_ylim(max(0, lo - 0.05), 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_learning_curves(board: pd.DataFrame, tracking_uri: str | None = None):
    """Dev accuracy per epoch of the runs in `board` (a leaderboard), read from their MLflow metric history."""
    plt = pyplot()
    c = client(tracking_uri)
    fig, ax = plt.subplots(figsize=(7, 4))
    for _, r in board.iterrows():
        hist = c.get_metric_history(r["run_id"], "dev_acc")
        ax.plot(
            [m.step for m in hist], [m.value for m in hist], "o-", label=f"{r['run_name']} ({r['best_dev_acc']:.3f})"
        )
    ax.set(xlabel="epoch", ylabel="dev accuracy", title=f"learning curves of the top {len(board)} runs")
    integer_ticks(ax.xaxis)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_cells(cells: pd.DataFrame):
    """Per cell: mean dev and test accuracy with the 95 % CI over its runs (seeds, or in a sweep's cell, runs whose
    other parameters differ too)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(cells) + 1.5))
    y = np.arange(len(cells))
    for offset, name, color in ((-0.15, "dev", "C0"), (0.15, "test", "C1")):
        m = cells[f"{name}_mean"].to_numpy(float)
        err = np.vstack([m - cells[f"{name}_ci_low"].to_numpy(float), cells[f"{name}_ci_high"].to_numpy(float) - m])
        ax.errorbar(
            m,
            y + offset,
            xerr=np.nan_to_num(err),
            fmt="o",
            color=color,
            capsize=4,
            label=f"{name} mean, 95 % CI over the cell's runs",
        )
    ax.set_yticks(y, [f"{c} ({n} runs)" for c, n in zip(cells["cell"], cells["runs"])], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="accuracy", title="cells: mean and 95 % CI over each cell's runs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_pairwise(pairs: pd.DataFrame):
    """Forest plot of `compare.pairwise_table`: one row per pair and split, delta (pp) with its 95 % CI.

    The vertical line at 0 is "no difference": a row whose bar crosses it is not a detectable
    difference. The Holm-adjusted p (and its test) is written beside each row because, with k cells,
    the raw p of the best-looking pair is small by chance alone. Pairs that were refused (a `note`, e.g.
    different data) have no delta and appear only in the table.
    """
    plt = pyplot()
    rows = pairs[pairs["delta"].notna()].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.6))
    y = np.arange(len(rows))
    delta, low, high = (100 * rows[c].to_numpy(float) for c in ("delta", "ci_low", "ci_high"))
    for split, color in (("dev", "C0"), ("test", "C1")):
        on = (rows["split"] == split).to_numpy()
        if on.any():
            ax.errorbar(
                delta[on],
                y[on],
                xerr=np.nan_to_num(np.vstack([delta[on] - low[on], high[on] - delta[on]])),
                fmt="o",
                color=color,
                capsize=4,
                label=f"{split}: delta, 95 % CI",
            )
    ax.axvline(0, color="black", linewidth=1)
    tests = rows["test"] if "test" in rows else pd.Series([""] * len(rows))
    for i, (p, test) in enumerate(zip(rows["p_holm"], tests)):
        ax.text(
            1.01,
            i,
            "Holm p n/a" if pd.isna(p) else f"Holm {p_phrase(float(p))}" + (f" ({test})" if test else ""),
            transform=ax.get_yaxis_transform(),
            va="center",
            fontsize=7,
        )
    ax.set_yticks(
        y, [f"{a}\n− {b} ({s})" for a, b, s in zip(rows["cell_a"], rows["cell_b"], rows["split"])], fontsize=7
    )
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first pair at the top
    ax.set(xlabel="delta accuracy, cell_a − cell_b (percentage points)")
    ax.set_title("pairwise: delta and 95 % CI per split", pad=22)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(
        fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False
    )  # above the rows, not on them
    fig.tight_layout()
    return fig


def plot_evp(evp: pd.DataFrame, overtakes: pd.DataFrame):
    """Expected best dev accuracy vs trials and vs seconds; solid: unbiased (Tang), dashed: Dodge.

    A dotted vertical line marks the budget at which one cell overtakes another (unbiased estimator).
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (cell, g) in enumerate(evp.groupby("cell", sort=False)):
        for ax, x in zip(axes, ("n", "budget_seconds")):
            ax.plot(g[x], g["evp_unbiased"], "o-", color=f"C{i}", label=f"{cell} (unbiased)", markersize=3)
            ax.plot(g[x], g["evp_dodge"], "--", color=f"C{i}", alpha=0.7, label=f"{cell} (Dodge)")
    for _, o in overtakes[overtakes["estimator"] == "unbiased"].iterrows():
        ax = axes[0 if o["axis"] == "trials" else 1]
        ax.axvline(o["at"], color="grey", linestyle=":")
        ax.annotate(f"{o['overtaker']}\novertakes", (o["at"], ax.get_ylim()[0]), fontsize=6, rotation=90, va="bottom")
    axes[0].set(xlabel="trials n", ylabel="expected best dev accuracy", title="expected validation performance")
    axes[1].set(xlabel="budget (seconds: n x mean run time)", title="same, by compute")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    """Free a figure once its PNG is written (pyplot keeps every open figure alive)."""
    pyplot().close(fig)
