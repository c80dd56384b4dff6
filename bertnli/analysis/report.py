"""Recorded runs -> pandas: leaderboards, grouped tables, the truncation effect, the fidelity audit, pages.

Functions return DataFrames; `bertnli.analysis.plots` draws the figures from them; writing Markdown /
CSV / HTML is separate (`write_report`). Nothing here trains.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd

from bertnli.analysis import plots
from bertnli.analysis.compare import cell_table, evp_table, overtaking_table, pairwise_table
from bertnli.analysis.stats import rank_agreement
from bertnli.tracking.query import finished_runs
from bertnli.tracking.store import client


def leaderboard(runs: pd.DataFrame, top: int = 20) -> pd.DataFrame:
    """Finished runs by best dev accuracy (selection on dev; test shown, never used to rank)."""
    cols = [
        "run_id",
        "experiment",
        "run_name",
        "model",
        "truncation",
        "lr",
        "epochs",
        "seed",
        "best_dev_acc",
        "test_acc",
        "best_epoch",
        "examples_per_sec",
        "wall_seconds",
    ]
    return finished_runs(runs).sort_values("best_dev_acc", ascending=False)[cols].head(top).reset_index(drop=True)


def grouped(runs: pd.DataFrame) -> pd.DataFrame:
    """model x truncation: count, dev mean +- std, best dev, test of the dev-selected run, time, speed."""
    rows = []
    for (model, trunc), g in finished_runs(runs).groupby(["model", "truncation"], dropna=False):
        sel = g.loc[g["best_dev_acc"].idxmax()]
        rows.append(
            {
                "model": model,
                "truncation": trunc,
                "runs": len(g),
                "dev_mean": g["best_dev_acc"].mean(),
                "dev_std": g["best_dev_acc"].std(ddof=1) if len(g) > 1 else np.nan,
                "dev_best": sel["best_dev_acc"],
                "test_of_selected": sel["test_acc"],
                "selected_lr": sel["lr"],
                "mean_seconds": g["wall_seconds"].mean(),
                "mean_examples_per_sec": g["examples_per_sec"].mean(),
            }
        )
    return pd.DataFrame(rows)


def truncation_effect(runs: pd.DataFrame) -> pd.DataFrame:
    """ratio minus longest_first, per model, paired by (seed, lr, epochs) where possible, with its spread."""
    rows = []
    f = finished_runs(runs)
    for model, g in f.groupby("model"):
        keys = ["seed", "lr", "epochs", "max_len"]
        a = g[g["truncation"] == "longest_first"].groupby(keys)["best_dev_acc"].mean()
        b = g[g["truncation"] == "ratio"].groupby(keys)["best_dev_acc"].mean()
        paired = (b - a).dropna()
        if len(paired):
            rows.append(
                {
                    "model": model,
                    "pairs": len(paired),
                    "ratio_minus_longest_first": paired.mean(),
                    "std": paired.std(ddof=1) if len(paired) > 1 else np.nan,
                    "min": paired.min(),
                    "max": paired.max(),
                }
            )
        else:
            la, lb = (
                g[g["truncation"] == "longest_first"]["best_dev_acc"],
                g[g["truncation"] == "ratio"]["best_dev_acc"],
            )
            if len(la) and len(lb):
                rows.append(
                    {
                        "model": model,
                        "pairs": 0,
                        "ratio_minus_longest_first": lb.mean() - la.mean(),
                        "std": np.sqrt(la.var(ddof=1) / len(la) + lb.var(ddof=1) / len(lb))
                        if min(len(la), len(lb)) > 1
                        else np.nan,
                        "min": np.nan,
                        "max": np.nan,
                    }
                )
    return pd.DataFrame(rows)


CHEAP_RANKING_FAILED = "the cheap ranking did not hold"


def top_rung(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs comparable with each other: a multi-fidelity study's top rung reached (the same data), every other run."""
    if "rung" not in runs or runs["rung"].isna().all():
        return runs
    top = runs.groupby("parent_run_id", dropna=False)["rung"].transform("max")
    return runs[runs["rung"].isna() | (runs["rung"] == top)]


def fidelity_audit(runs: pd.DataFrame, n_boot: int = 2_000) -> pd.DataFrame:
    """Multi-fidelity sweeps: did a low rung rank configurations as the final rung does?

    Per study (parent run) and lower rung, over the configurations that reached both that rung
    and the study's final rung (and, where it differs, the next rung up): Kendall's tau and
    Spearman's rho of their dev accuracies, each with a bootstrap CI over configurations, and a
    warning when tau < 0.5. Empty when no run carries a rung.
    """
    cols = [
        "parent_run_id",
        "rung",
        "against_rung",
        "configurations",
        "kendall_tau",
        "tau_ci_low",
        "tau_ci_high",
        "spearman_rho",
        "rho_ci_low",
        "rho_ci_high",
        "verdict",
    ]
    f = finished_runs(runs)
    if "rung" not in f or f["rung"].isna().all():
        return pd.DataFrame(columns=cols)
    rows = []
    for parent, g in f[f["rung"].notna() & f["config"].notna()].groupby("parent_run_id", dropna=False):
        acc = g.groupby(["config", "rung"])["best_dev_acc"].max().unstack("rung")
        top = int(max(acc.columns))
        for k in sorted(int(r) for r in acc.columns if r < top):
            for against in sorted({k + 1, top}):
                both = acc[[k, against]].dropna()
                a = rank_agreement(both[k], both[against], n_boot=n_boot)
                verdict = (
                    "too few configurations to judge (fewer than 3)"
                    if a.n < 3 or np.isnan(a.tau)
                    else f"{CHEAP_RANKING_FAILED} (tau < 0.5)"
                    if a.tau < 0.5
                    else "held (tau >= 0.5)"
                )
                rows.append(
                    {
                        "parent_run_id": parent,
                        "rung": k,
                        "against_rung": against,
                        "configurations": a.n,
                        "kendall_tau": a.tau,
                        "tau_ci_low": a.tau_low,
                        "tau_ci_high": a.tau_high,
                        "spearman_rho": a.rho,
                        "rho_ci_low": a.rho_low,
                        "rho_ci_high": a.rho_high,
                        "verdict": verdict,
                    }
                )
    return pd.DataFrame(rows, columns=cols)


def sampler_note(runs: pd.DataFrame, tracking_uri: str | None = None) -> str:
    """Expected validation performance assumes i.i.d. trials; say so when a study's sampler was not random."""
    parents = runs["parent_run_id"].dropna().unique() if "parent_run_id" in runs else []
    if not len(parents):
        return ""
    c = client(tracking_uri)
    samplers = set()
    for parent in parents:
        try:
            samplers.add(c.get_run(parent).data.tags.get("bertnli.sampler", "unknown"))
        except Exception:  # noqa: BLE001 - a deleted parent: its sampler is unknown
            samplers.add("an unknown sampler")
    biased = sorted(x for x in samplers if not x.startswith("RandomSampler"))
    if not biased:
        return ""
    return (
        f"These trials come from {', '.join(biased)}: TPE picks each trial from the earlier ones and pruning stops "
        "some, "
        "which breaks the i.i.d. assumption of expected validation performance; read those curves as descriptive. "
        "Use `sweep --sampler random` for a design where the estimator is valid."
    )


def _note(runs: pd.DataFrame, keys: list[str], tracking_uri: str | None, audit: pd.DataFrame, lower_rungs: int) -> str:
    """The report's preamble: how to read it, and what it left out."""
    return (
        "Selection is on dev; test accuracy is of the dev-selected run and was never used to choose. "
        "Figures on snli-resplit are not comparable with published SNLI test results. "
        f"Cells group runs by {', '.join(keys)}; pairwise: delta = cell_a - cell_b with a paired bootstrap 95 % CI "
        "over "
        "seeds x examples, McNemar exact p (pooled over seed pairs) and Holm-adjusted p per split. "
        + sampler_note(runs, tracking_uri)
        + audit_note(audit)
        + (
            f" Multi-fidelity: the tables and plots hold each study's top rung only ({lower_rungs} "
            "lower-rung runs are in the fidelity audit and runs.csv)."
            if lower_rungs
            else ""
        )
    )


def audit_note(audit: pd.DataFrame) -> str:
    """The report's warning line when a low rung's ranking did not hold (fidelity_audit)."""
    bad = audit[audit["verdict"].str.startswith(CHEAP_RANKING_FAILED)] if not audit.empty else audit
    if bad.empty:
        return ""
    where = ", ".join(
        f"rung {r.rung} vs {r.against_rung} (tau {r.kendall_tau:.2f}, {r.configurations} configurations)"
        for r in bad.itertuples()
    )
    return f" WARNING: {CHEAP_RANKING_FAILED}: {where}; promote more configurations or raise min_fraction."


def format_table(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for col in out.columns:
        if out[col].dtype.kind == "f":
            whole = out[col].dropna().map(float.is_integer).all() and col not in ("lr", "selected_lr")
            spec = ".0f" if whole else ".2e" if col in ("lr", "selected_lr") else ".4f"
            out[col] = out[col].map(lambda v, spec=spec: "" if pd.isna(v) else format(v, spec))
    return out


def to_markdown(df: pd.DataFrame) -> str:
    d = format_table(df).map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    if d.empty:
        return "_no runs_\n"
    head = "| " + " | ".join(d.columns) + " |\n|" + "---|" * len(d.columns) + "\n"
    return head + "".join("| " + " | ".join(row) + " |\n" for row in d.values.tolist())


def _figures(runs: pd.DataFrame, tables: dict[str, pd.DataFrame], tracking_uri: str | None) -> dict:
    """The report's plots by file stem; none without a finished run. The pairwise forest plot needs
    at least one pair of cells that could be compared (one cell alone has no pair)."""
    if finished_runs(runs).empty:
        return {}
    figures = {
        "dev_vs_lr": plots.plot_dev_vs_lr(finished_runs(runs)),
        "by_model_truncation": plots.plot_by_cell(grouped(runs)),
        "learning_curves": plots.plot_learning_curves(leaderboard(runs, 5), tracking_uri),
        "cells": plots.plot_cells(tables["cells"]),
    }
    if tables["pairwise"]["delta"].notna().any():
        figures["pairwise"] = plots.plot_pairwise(tables["pairwise"])
    figures["evp"] = plots.plot_evp(tables["evp"], tables["evp_overtaking"])
    return figures


def report_tables(
    runs: pd.DataFrame,
    keys: list[str],
    tracking_uri: str | None,
    audit: pd.DataFrame,
    extra_tables: dict[str, pd.DataFrame] | None = None,
) -> dict[str, pd.DataFrame]:
    """Every table of the report, by name (the name is also its CSV file and heading)."""
    tables = {
        "leaderboard": leaderboard(runs),
        "by_model_truncation": grouped(runs),
        "truncation_effect": truncation_effect(runs),
        "cells": cell_table(runs, keys),
        "pairwise": pairwise_table(runs, keys, tracking_uri),
        "evp": evp_table(runs, keys),
    }
    tables["evp_overtaking"] = overtaking_table(tables["evp"])
    if not audit.empty:
        tables["fidelity_audit"] = audit
    return tables | (extra_tables or {})


HTML_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
    "td,th{white-space:nowrap;padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}img{max-width:100%}"
)


def markdown_page(heading: str, tables: dict[str, pd.DataFrame], pngs: dict[str, bytes]) -> str:
    md = [f"# bertnli report\n\n{heading}\n"]
    md += [f"\n## {name.replace('_', ' ')}\n\n{to_markdown(t)}" for name, t in tables.items()]
    md += [f"\n![{n}]({n}.png)\n" for n in pngs]
    return "".join(md)


def html_page(heading: str, tables: dict[str, pd.DataFrame], pngs: dict[str, bytes]) -> str:
    """One self-contained page: the tables, and the plots embedded as PNG data URIs."""
    body = [f"<h1>bertnli report</h1><p>{html.escape(heading)}</p>"]
    for name, t in tables.items():
        table = format_table(t).to_html(index=False, border=0) if not t.empty else "<p>no runs</p>"
        body.append(f"<h2>{name.replace('_', ' ')}</h2>{table}")
    for n, png in pngs.items():
        data = base64.b64encode(png).decode()
        body.append(f'<h2>{n.replace("_", " ")}</h2><img alt="{n}" src="data:image/png;base64,{data}">')
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>bertnli report</title><style>{HTML_STYLE}</style>"
        f"</head><body>{''.join(body)}</body></html>"
    )


def write_report(
    runs: pd.DataFrame,
    out: str | Path,
    formats: tuple[str, ...] = ("md", "csv", "html"),
    tracking_uri: str | None = None,
    cell_by: tuple[str, ...] = ("model", "truncation"),
    extra_tables: dict[str, pd.DataFrame] | None = None,
    audit: pd.DataFrame | None = None,
) -> list[Path]:
    """Tables (md/csv) and a self-contained HTML page with the plots embedded as PNG data URIs.
    `audit`: `fidelity_audit(runs)` when the caller has it already (it bootstraps)."""
    out, keys = Path(out), list(cell_by)
    out.mkdir(parents=True, exist_ok=True)
    audit = fidelity_audit(runs) if audit is None else audit
    everything, runs = runs, top_rung(runs)  # lower rungs trained on less data: audited, never pooled with the rest
    tables = report_tables(runs, keys, tracking_uri, audit, extra_tables)
    files: dict[str, str | bytes] = {}
    pngs = {}
    for name, fig in _figures(runs, tables, tracking_uri).items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        pngs[name] = files[f"{name}.png"] = buf.getvalue()
        plots.close(fig)
    note = _note(runs, keys, tracking_uri, audit, len(everything) - len(runs))
    heading = f"{len(runs)} runs ({len(finished_runs(runs))} finished). {note}"
    if "csv" in formats:
        files |= {f"{name}.csv": t.to_csv(index=False) for name, t in tables.items()}
        files["runs.csv"] = everything.to_csv(index=False)
    if "md" in formats:
        files["report.md"] = markdown_page(heading, tables, pngs)
    if "html" in formats:
        files["report.html"] = html_page(heading, tables, pngs)
    for name, data in files.items():
        if isinstance(data, bytes):
            (out / name).write_bytes(data)
        else:
            (out / name).write_text(data)
    return [out / name for name in files]
