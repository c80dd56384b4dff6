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
from bertnli.analysis.pareto import pareto_figure, parse_objectives, study_fronts
from bertnli.analysis.stats import p_text, rank_agreement
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


# Two runs whose settings agree on all of these and differ in truncation measure truncation alone.
PAIRED_ON = [
    "num_layers",
    "lr",
    "epochs",
    "seed",
    "max_len",
    "batch_size",
    "optimizer",
    "limit_train",
    "limit_eval",
    "train_fraction",
    "data_sha256",
]
TRUNCATIONS = ("longest_first", "ratio")
EFFECT_COLUMNS = ["model", "pairs", "ratio_minus_longest_first", "std", "min", "max"]


def truncation_effect(runs: pd.DataFrame) -> pd.DataFrame:
    """ratio minus longest_first on dev, per model, from pairs of runs that differ in truncation only.

    A sweep's runs differ in learning rate and epochs as well: a difference of their means would credit
    truncation with what the learning rate did, so unpaired runs give no row (`truncation_effect_note`).
    """
    rows = []
    f = finished_runs(runs)
    keys = [k for k in PAIRED_ON if k in f.columns]
    for model, g in f.groupby("model"):
        side = {t: g[g["truncation"] == t].groupby(keys, dropna=False)["best_dev_acc"].mean() for t in TRUNCATIONS}
        paired = (side["ratio"] - side["longest_first"]).dropna()
        if len(paired):
            spread = paired.std(ddof=1) if len(paired) > 1 else np.nan
            rows.append([model, len(paired), paired.mean(), spread, paired.min(), paired.max()])
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


def truncation_effect_note(runs: pd.DataFrame, effect: pd.DataFrame) -> str:
    """One line for each model with runs of both truncations but no pair that differs in truncation only; the
    comparison it suggests is of the model with the most runs (in a sweep, the one the sampler favoured)."""
    f = finished_runs(runs)
    both = [m for m, g in f.groupby("model") if set(TRUNCATIONS) <= set(g["truncation"])]
    unpaired = [m for m in both if m not in set(effect["model"])]
    if not unpaired:
        return ""
    m = max(unpaired, key=lambda model: (f["model"] == model).sum())
    return (
        f"truncation effect: no pair of {', '.join(unpaired)} runs differs in truncation only (same lr, epochs, "
        f"seed, data and limits), so no number is given; compare the cells with `bertnli-exp compare --cell "
        f"model={m},truncation=ratio --cell model={m},truncation=longest_first`, or train paired runs with "
        "`bertnli-exp reproduce truncation_ablation`"
    )


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


def _note(runs: pd.DataFrame, keys: list[str], tracking_uri: str | None, tables: dict, lower_rungs: int) -> str:
    """The report's preamble: how to read it, and what it left out."""
    trunc = truncation_effect_note(runs, tables["truncation_effect"])
    return (
        "Selection is on dev; test accuracy is of the dev-selected run and was never used to choose. "
        "Figures on snli-resplit are not comparable with published SNLI test results. "
        f"Cells group runs by {', '.join(keys)}; pairwise: delta = cell_a - cell_b with a paired bootstrap 95 % CI "
        "over runs x examples; p from the test named in its row (McNemar exact for one run a side, otherwise runs "
        "x examples: the larger of a permutation p of the runs between the two cells and the bootstrap's own p) "
        "and Holm-adjusted p per split. "
        + (f"{trunc[0].upper()}{trunc[1:]}. " if trunc else "")
        + sampler_note(runs, tracking_uri)
        + audit_note(tables.get("fidelity_audit", pd.DataFrame()))
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


P_COLUMNS = ("p_value", "p_holm")


def format_table(df: pd.DataFrame) -> pd.DataFrame:
    """Text for reading: 4 decimals, lr in scientific notation, p as `< 1e-4` rather than 0.0000."""
    out = df.copy()
    for col in out.columns:
        if col in P_COLUMNS:
            out[col] = out[col].map(lambda v: "" if pd.isna(v) else p_text(float(v)))
        elif out[col].dtype.kind == "f":
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
    if "pareto_front" in tables:
        for study, table in tables["pareto_front"].groupby("study"):
            objectives = parse_objectives(table["objectives"].iloc[0])
            figures[f"pareto_{study}"] = pareto_figure(table, objectives, label="trial")
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
    fronts = study_fronts(runs, tracking_uri)
    if not fronts.empty:
        tables["pareto_front"] = fronts
    return tables | (extra_tables or {})


HTML_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
    ".scroll{overflow-x:auto;max-width:100%}"
    "td,th{white-space:nowrap;padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}img{max-width:100%}"
)
RUN_ID_CHARS = 8


def html_table(df: pd.DataFrame) -> str:
    """A table in its own horizontal scroll box (a wide leaderboard scrolls, the page does not), run ids
    shortened with the whole id on hover."""
    t = format_table(df)
    for col in [c for c in t.columns if c.endswith("run_id")]:
        t[col] = t[col].map(
            lambda v: (
                f'<span title="{html.escape(str(v))}">{html.escape(str(v)[:RUN_ID_CHARS])}</span>'
                if isinstance(v, str) and v
                else ""
            )
        )
    escaped = [c for c in t.columns if not c.endswith("run_id")]
    t[escaped] = t[escaped].map(lambda v: html.escape(str(v)) if isinstance(v, str) else v)
    t.columns = [html.escape(str(c)) for c in t.columns]
    return f'<div class="scroll">{t.to_html(index=False, border=0, escape=False, na_rep="")}</div>'


def markdown_page(heading: str, tables: dict[str, pd.DataFrame], pngs: dict[str, bytes]) -> str:
    md = [f"# bertnli report\n\n{heading}\n"]
    md += [f"\n## {name.replace('_', ' ')}\n\n{to_markdown(t)}" for name, t in tables.items()]
    md += [f"\n![{n}]({n}.png)\n" for n in pngs]
    return "".join(md)


def html_page(heading: str, tables: dict[str, pd.DataFrame], pngs: dict[str, bytes]) -> str:
    """One self-contained page: the tables, and the plots embedded as PNG data URIs."""
    body = [f"<h1>bertnli report</h1><p>{html.escape(heading)}</p>"]
    for name, t in tables.items():
        table = html_table(t) if not t.empty else "<p>no runs</p>"
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
    note = _note(runs, keys, tracking_uri, tables, len(everything) - len(runs))
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
