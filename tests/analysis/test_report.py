"""Reports from a real MLflow store filled by real tiny runs."""

import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import copy_store
from tiny_runs import tiny_cfg

from bertnli.analysis.report import grouped, leaderboard, truncation_effect, truncation_effect_note, write_report
from bertnli.config import TrackingConfig
from bertnli.tracking.query import load_runs
from bertnli.tracking.run import train_run


@pytest.fixture(scope="module")
def store(tiny_snli, tmp_path_factory, store_template):
    """8 recorded runs (2 models x 2 truncations x 2 seeds). Reports read params, metrics, metric histories and
    per-example predictions, not the logged model: no run logs its checkpoint (keep_checkpoint=False)."""
    tmp = tmp_path_factory.mktemp("report")
    uri = copy_store(store_template, tmp / "mlflow.db")
    for model in ("tiny-d2l-random", "tiny-random"):
        for trunc in ("longest_first", "ratio"):
            for seed in (0, 1):
                cfg = tiny_cfg(tiny_snli, tmp, model=model, truncation=trunc, seed=seed, epochs=2, max_len=12)
                tracking = TrackingConfig(uri, "grid")
                train_run(cfg, tmp / f"{model}-{trunc}-{seed}", tracking, keep_checkpoint=False, progress=False)
    return uri, tmp


def test_load_runs_shape_and_grouping(store):
    uri, _ = store
    runs = load_runs(["grid"], uri)
    assert len(runs) == 8 and set(runs["status"]) == {"FINISHED"}
    assert {"run_id", "model", "truncation", "lr", "seed", "best_dev_acc", "test_acc", "examples_per_sec"} <= set(
        runs.columns
    )
    g = grouped(runs)
    assert len(g) == 4 and list(g["runs"]) == [2, 2, 2, 2]
    for _, row in g.iterrows():
        cell = runs[(runs["model"] == row["model"]) & (runs["truncation"] == row["truncation"])]
        assert row["dev_mean"] == pytest.approx(cell["best_dev_acc"].mean())
        assert row["dev_best"] == pytest.approx(cell["best_dev_acc"].max())
        assert row["test_of_selected"] == pytest.approx(cell.loc[cell["best_dev_acc"].idxmax(), "test_acc"])
    eff = truncation_effect(runs)
    assert list(eff["pairs"]) == [2, 2]
    for _, row in eff.iterrows():
        own = runs[runs["model"] == row["model"]].set_index(["seed", "truncation"])["best_dev_acc"]
        paired = [own[(s, "ratio")] - own[(s, "longest_first")] for s in (0, 1)]
        assert row["ratio_minus_longest_first"] == pytest.approx(np.mean(paired))
    assert runs["data_sha256"].nunique() == 1 and runs["data_sha256"].notna().all()
    board = leaderboard(runs)
    assert list(board["best_dev_acc"]) == sorted(board["best_dev_acc"], reverse=True)


def test_runs_that_differ_in_more_than_truncation_give_no_truncation_effect_but_a_line_saying_why(store):
    """Seen in a 20-trial study: `ratio - longest_first` printed from runs with different lr and epochs (pairs 0)."""
    uri, _ = store
    runs = load_runs(["grid"], uri)
    runs.loc[runs["truncation"] == "ratio", "lr"] *= 3  # a sweep: truncation and lr vary together
    eff = truncation_effect(runs)
    assert eff.empty
    note = truncation_effect_note(runs, eff)
    assert "no pair of tiny-d2l-random, tiny-random runs differs in truncation only" in note
    assert "bertnli-exp compare --cell model=tiny-d2l-random,truncation=ratio" in note
    assert "bertnli-exp reproduce truncation_ablation" in note and not re.search(r"\d\.\d", note)
    busier = runs.drop(runs.index[(runs["model"] == "tiny-d2l-random") & (runs["seed"] == 1)])
    assert "compare --cell model=tiny-random,truncation=ratio" in truncation_effect_note(busier, eff)
    other_data = load_runs(["grid"], uri)
    other_data.loc[other_data["truncation"] == "ratio", "data_sha256"] = "another"
    assert truncation_effect(other_data).empty
    paired = load_runs(["grid"], uri)
    assert truncation_effect_note(paired, truncation_effect(paired)) == ""


def test_filters(store):
    uri, _ = store
    runs = load_runs(["grid"], uri, tags={"mlflow.runName": load_runs(["grid"], uri)["run_name"][0]})
    assert len(runs) == 1
    from bertnli import BertnliError

    with pytest.raises(BertnliError, match="no MLflow experiment nope"):
        load_runs(["nope"], uri)


def test_written_report_has_tables_and_embedded_plots(store, tmp_path):
    uri, _ = store
    files = write_report(load_runs(["grid"], uri), tmp_path / "rep", tracking_uri=uri)
    names = {f.name for f in files}
    assert {
        "report.md",
        "report.html",
        "by_model_truncation.csv",
        "leaderboard.csv",
        "dev_vs_lr.png",
        "learning_curves.png",
        "cells.csv",
        "pairwise.csv",
        "pairwise.png",
        "evp.csv",
        "evp_overtaking.csv",
        "cells.png",
        "evp.png",
    } <= names
    page = (tmp_path / "rep" / "report.html").read_text()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 6
    assert '<img alt="pairwise" src="data:image/png;base64,' in page
    assert "| model | truncation | runs |" in (tmp_path / "rep" / "report.md").read_text()
    assert "![pairwise](pairwise.png)" in (tmp_path / "rep" / "report.md").read_text()


def test_pairwise_forest_plot_shows_every_pair_with_its_ci_and_holm_p(store, tmp_path):
    import matplotlib.image
    import pandas as pd

    from bertnli.analysis.plots import plot_pairwise
    from bertnli.analysis.stats import p_phrase

    uri, _ = store
    write_report(load_runs(["grid"], uri), tmp_path / "rep", formats=("csv",), tracking_uri=uri)
    pairs = pd.read_csv(tmp_path / "rep" / "pairwise.csv")
    assert len(pairs) == 12 and pairs["delta"].notna().all()  # 6 pairs of 4 cells, dev and test
    height = matplotlib.image.imread(tmp_path / "rep" / "pairwise.png").shape[0]
    assert height == round(100 * (0.55 * len(pairs) + 1.6))  # one row per pair and split, at dpi 100
    refused = {"cell_a": "x", "cell_b": "y", "split": "dev", "note": "different data"}  # no delta: table only
    ax = plot_pairwise(pd.concat([pairs, pd.DataFrame([refused])], ignore_index=True)).axes[0]
    assert [t.get_text() for t in ax.texts] == [
        f"Holm {p_phrase(p)} ({t})" for p, t in zip(pairs["p_holm"], pairs["test"])
    ]
    assert set(pairs["test"]) == {"runs x examples"}  # two seeds a cell
    assert pairs["note"].str.startswith("p cannot go below 0.33 with 2 and 2 runs").all()  # 2 / C(4, 2)
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        f"{a}\n− {b} ({s})" for a, b, s in zip(pairs["cell_a"], pairs["cell_b"], pairs["split"])
    ]
    for bars in ax.containers:  # one errorbar series per split: the point is delta, the bar spans the CI, in pp
        split = bars.get_label().split(":")[0]
        rows = pairs[pairs["split"] == split]
        assert list(bars.lines[0].get_xdata()) == pytest.approx(list(100 * rows["delta"]))
        segments = np.array([seg[:, 0] for seg in bars.lines[2][0].get_segments()])
        assert segments == pytest.approx(100 * rows[["ci_low", "ci_high"]].to_numpy())
    assert any(list(line.get_xdata()) == [0, 0] for line in ax.lines)  # the no-difference line


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_html_report_images_load_in_headless_chromium(store, tmp_path):
    """Images load; no table is wider than the page (wide ones scroll in their own box); run ids are
    shortened with the whole id on hover; no p column reads 0.0000."""
    uri, _ = store
    write_report(load_runs(["grid"], uri), tmp_path / "rep", tracking_uri=uri)
    page = (tmp_path / "rep" / "report.html").read_text()
    probe = (
        "<script>window.addEventListener('load', () => { const imgs = [...document.images]; const b = document.body;"
        "b.setAttribute('data-loaded', imgs.filter(i => i.complete && i.naturalWidth > 0).length + '/' + imgs.length);"
        "const page = document.documentElement.clientWidth;"
        "b.setAttribute('data-page-overflow', document.documentElement.scrollWidth - page);"
        "const tables = [...document.querySelectorAll('table')];"
        "b.setAttribute('data-tables-outside-page', tables.filter(t => t.parentElement.getBoundingClientRect().right"
        " > page).length + '/' + tables.length);"
        "b.setAttribute('data-tables-wider-than-box', tables.filter(t => t.scrollWidth > t.parentElement.clientWidth"
        " && getComputedStyle(t.parentElement).overflowX === 'auto').length);"
        "const p = []; for (const t of tables) { const heads = [...t.querySelectorAll('th')].map(h => h.textContent);"
        "for (const r of t.querySelectorAll('tbody tr')) { heads.forEach((h, i) => { if (h.startsWith('p_'))"
        " p.push(r.children[i].textContent); }); } }"
        "b.setAttribute('data-p-cells', p.length); b.setAttribute('data-p-zero', p.filter(v => v === '0.0000').length);"
        "const ids = [...document.querySelectorAll('span[title]')];"
        "b.setAttribute('data-short-ids', ids.filter(s => s.textContent.length === 8 &&"
        " s.title.startsWith(s.textContent) && s.title.length === 32).length); });</script>"
    )
    (tmp_path / "probe.html").write_text(page.replace("</body>", probe + "</body>"))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,2400",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--virtual-time-budget=5000", "--dump-dom", f"file://{tmp_path / 'probe.html'}"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert 'data-loaded="6/6"' in dom
    assert 'data-page-overflow="0"' in dom
    assert re.search(r'data-tables-outside-page="0/\d+"', dom)
    assert int(re.search(r'data-tables-wider-than-box="(\d+)"', dom).group(1)) >= 1  # the leaderboard scrolls
    assert int(re.search(r'data-p-cells="(\d+)"', dom).group(1)) >= 24 and 'data-p-zero="0"' in dom
    assert int(re.search(r'data-short-ids="(\d+)"', dom).group(1)) >= 8  # the leaderboard's runs
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={tmp_path / 'report.png'}", f"file://{tmp_path / 'rep' / 'report.html'}"],
        capture_output=True,
        timeout=120,
    )
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_p_values_read_as_a_bound_below_1e_4_never_as_zero():
    import pandas as pd

    from bertnli.analysis.report import format_table

    shown = format_table(pd.DataFrame({"p_value": [1e-9, 0.0312, None], "p_holm": [3e-5, 0.09, 1.0]}))
    assert list(shown["p_value"]) == ["< 1e-4", "0.0312", ""] and list(shown["p_holm"]) == ["< 1e-4", "0.09", "1"]


def test_cells_pairwise_and_expected_validation_performance(store):
    import itertools

    import numpy as np

    from bertnli.analysis.compare import cell_table, evp_table, overtaking_table, pairwise_table
    from bertnli.analysis.stats import evp_without_replacement, mean_ci

    uri, _ = store
    runs = load_runs(["grid"], uri)
    keys = ["model", "truncation"]
    cells = cell_table(runs, keys)
    assert len(cells) == 4 and list(cells["seeds"]) == [2, 2, 2, 2]
    assert list(cells["dev_mean"]) == sorted(cells["dev_mean"], reverse=True)
    for _, row in cells.iterrows():
        model, trunc = (part.split("=")[1] for part in row["cell"].split(","))
        values = runs[(runs["model"] == model) & (runs["truncation"] == trunc)]["best_dev_acc"]
        assert (row["dev_mean"], row["dev_ci_low"], row["dev_ci_high"]) == pytest.approx(mean_ci(values))
    pairs = pairwise_table(runs, keys, uri, n_boot=300)
    assert len(pairs) == 2 * len(list(itertools.combinations(range(4), 2)))  # dev and test for each of the 6 pairs
    for split, g in pairs.groupby("split"):
        assert (g["p_holm"] >= g["p_value"] - 1e-12).all()
        assert (g["ci_low"] <= g["delta"]).all() and (g["delta"] <= g["ci_high"]).all()
    dev = pairs[pairs["split"] == "test"].iloc[0]
    a = cells.set_index("cell").loc[dev["cell_a"]]
    b = cells.set_index("cell").loc[dev["cell_b"]]
    assert dev["delta"] == pytest.approx(a["test_mean"] - b["test_mean"])  # test predictions are those of test_acc
    evp = evp_table(runs, keys)
    for cell, g in evp.groupby("cell"):
        model, trunc = (part.split("=")[1] for part in cell.split(","))
        scores = runs[(runs["model"] == model) & (runs["truncation"] == trunc)]["best_dev_acc"]
        assert list(g["evp_unbiased"]) == pytest.approx(evp_without_replacement(scores))
        assert np.all(np.diff(g["budget_seconds"]) > 0)
    assert set(overtaking_table(evp).columns) == {"overtaker", "overtaken", "estimator", "axis", "at"}


def test_overtaking_is_found_on_both_axes():
    import pandas as pd

    from bertnli.analysis.compare import overtaking_table

    evp = pd.DataFrame(
        {
            "cell": ["a"] * 5 + ["b"] * 3,
            "n": [1, 2, 3, 4, 5, 1, 2, 3],
            "evp_unbiased": [0.70, 0.72, 0.73, 0.735, 0.74, 0.69, 0.75, 0.78],
            "evp_dodge": [0.70, 0.71, 0.72, 0.725, 0.73, 0.60, 0.60, 0.60],
            "budget_seconds": [5, 10, 15, 20, 25, 10, 20, 30],
        }
    )
    t = overtaking_table(evp)
    row = t[(t["estimator"] == "unbiased") & (t["axis"] == "trials")].iloc[0]
    assert (row["overtaker"], row["overtaken"], row["at"]) == ("b", "a", 2)
    secs = t[(t["estimator"] == "unbiased") & (t["axis"] == "seconds")].iloc[0]
    # per second a leads longer: at 10 s a has run 2 trials, b one; b passes a only at 20 s
    assert (secs["overtaker"], secs["at"]) == ("b", 20)
    assert t[t["estimator"] == "dodge"].empty  # Dodge's b never passes a


def _synthetic_mf_study(uri: str, name: str, reversed_low: bool) -> str:
    """A recorded multi-fidelity study (runs written to a real MLflow store, as a sweep's trials are):
    9 configurations at rung 0 and at rung 1, rung 0's ranking either the final one or its reverse."""
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.create_experiment(name)
    parent = c.create_run(exp, tags={"bertnli.role": "sweep-parent"}).info.run_id
    for i in range(9):
        final = 0.60 + 0.02 * i
        low = 0.50 + 0.02 * (8 - i if reversed_low else i)
        for rung, acc in ((0, low), (1, final)):
            run = c.create_run(
                exp,
                tags={
                    "mlflow.parentRunId": parent,
                    "rung": str(rung),
                    "bertnli.config": f'{{"lr": {i}}}',
                    "bertnli.role": "sweep-trial",
                },
            ).info.run_id
            c.log_param(run, "train_fraction", [1 / 3, 1.0][rung])
            c.log_metric(run, "best_dev_acc", acc)
            c.set_terminated(run, "FINISHED")
    return name


@pytest.mark.parametrize("reversed_low", [True, False])
def test_the_audit_flags_a_cheap_ranking_that_did_not_hold(tmp_path, new_store, reversed_low):
    from bertnli.analysis.report import CHEAP_RANKING_FAILED, fidelity_audit

    uri = new_store(tmp_path / "mlflow.db")
    runs = load_runs([_synthetic_mf_study(uri, "mf", reversed_low)], uri)
    audit = fidelity_audit(runs, n_boot=500)
    assert (
        len(audit) == 1
        and audit.loc[0, "configurations"] == 9
        and (audit.loc[0, "rung"], audit.loc[0, "against_rung"]) == (0, 1)
    )
    assert audit.loc[0, "kendall_tau"] == pytest.approx(-1.0 if reversed_low else 1.0)
    assert audit.loc[0, "tau_ci_low"] <= audit.loc[0, "kendall_tau"] <= audit.loc[0, "tau_ci_high"]
    assert audit.loc[0, "verdict"].startswith(CHEAP_RANKING_FAILED) == reversed_low
    write_report(runs, tmp_path / "r", ("md", "csv"), uri, audit=audit)  # as `report` passes the audit it printed
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## fidelity audit" in md and (f"WARNING: {CHEAP_RANKING_FAILED}" in md) == reversed_low
    assert (tmp_path / "r" / "fidelity_audit.csv").is_file()
    two = fidelity_audit(runs[runs["config"].isin(['{"lr": 0}', '{"lr": 1}'])], n_boot=100)
    assert two.loc[0, "verdict"].startswith("too few configurations")  # tau of two points is always +-1: no verdict
