"""`train --seeds` and `compare`, as a user runs them: real processes, a real MLflow store, real tiny runs."""

import json
import re

import pytest
from conftest import ROOT, copy_store, make_rows, write_jsonl_gz
from mlflow import MlflowClient
from tiny_runs import cli

from bertnli.config import seeds_setting
from bertnli.tracking.query import load_runs


@pytest.fixture(scope="module")
def seeded(tiny_snli, tmp_path_factory, store_template):
    tmp = tmp_path_factory.mktemp("compare")
    uri = copy_store(store_template, tmp / "mlflow.db")
    toml = tmp / "exp.toml"
    toml.write_text(
        f'[train]\nmodel = "tiny-d2l-random"\ndata = "{tiny_snli}"\nepochs = 2\nlr = 2e-3\noptimizer = "adam"\n'
        f'schedule = "constant"\nmax_len = 12\nbatch_size = 16\ncache_dir = "{tmp / "enc"}"\nseeds = [0, 1]\n'
    )
    outs = {}
    for trunc, extra in (("ratio", []), ("longest_first", ["--seeds", "0,1"])):  # the TOML's seeds, and the option
        r = cli(
            "train",
            "--config",
            toml,
            "--truncation",
            trunc,
            "--out",
            tmp / trunc,
            "--experiment",
            "cmp",
            "--tracking-uri",
            uri,
            "--no-progress",
            *extra,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        outs[trunc] = r.stdout
    return uri, tmp, toml, outs


@pytest.mark.slow
def test_seeds_make_one_run_per_seed_grouped_by_a_tag(seeded):
    uri, tmp, toml, outs = seeded
    runs = load_runs(["cmp"], uri)
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}
    c = MlflowClient(uri)
    for trunc in ("ratio", "longest_first"):
        group = json.loads((tmp / trunc / "seed_group.json").read_text())["group"]
        mine = load_runs(["cmp"], uri, tags={"bertnli.seed_group": group})
        assert sorted(mine["seed"]) == [0, 1] and set(mine["truncation"]) == {trunc}
        assert all(c.get_run(r).data.tags["bertnli.seeds"] == "0,1" for r in mine["run_id"])
        assert f"seed group {group}: 2 runs, dev_acc mean" in outs[trunc]


@pytest.mark.slow
def test_rerunning_a_seed_group_adopts_finished_seeds(seeded):
    uri, tmp, toml, _ = seeded
    r = cli(
        "train",
        "--config",
        toml,
        "--truncation",
        "ratio",
        "--out",
        tmp / "ratio",
        "--experiment",
        "cmp",
        "--tracking-uri",
        uri,
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("adopted") >= 2 and len(load_runs(["cmp"], uri)) == 4


@pytest.mark.slow
def test_rerunning_a_seed_group_with_changed_settings_is_refused_in_one_line(seeded):
    """A seed group is one configuration over seeds. Before: a rerun with another lr adopted the finished
    seeds (at the old lr) and would have resumed an interrupted one at the new lr, under one group tag."""
    uri, tmp, toml, _ = seeded
    marker = tmp / "ratio" / "seed_group.json"
    kept = marker.read_text()
    try:
        for written_by in ("this version", "a version whose marker held no config"):
            r = cli(
                "train",
                "--config",
                toml,
                "--truncation",
                "ratio",
                "--lr",
                "1e-3",
                "--out",
                tmp / "ratio",
                "--experiment",
                "cmp",
                "--tracking-uri",
                uri,
                "--no-progress",
            )
            assert r.returncode == 2 and r.stderr.count("\n") == 1, (written_by, r.stderr[-2000:])
            assert "lr (saved 0.002, given 0.001)" in r.stderr and "another --out" in r.stderr, written_by
            assert len(load_runs(["cmp"], uri)) == 4
            marker.write_text(json.dumps({k: v for k, v in json.loads(kept).items() if k != "config"}))
    finally:
        marker.write_text(kept)


@pytest.mark.slow
def test_seed_and_seeds_do_not_mix(seeded):
    uri, tmp, toml, _ = seeded
    r = cli("train", "--config", toml, "--seed", "3", "--out", tmp / "x", "--tracking-uri", uri)
    assert r.returncode == 2 and "give --seed or --seeds, not both" in r.stderr and r.stderr.count("\n") == 1


def test_truncation_ablation_uses_the_seeds_axis():
    assert seeds_setting(ROOT / "experiments" / "truncation_ablation.toml", None) == [0, 1, 2]
    assert seeds_setting(ROOT / "experiments" / "truncation_ablation.toml", "4,5") == [4, 5]
    assert seeds_setting(ROOT / "experiments" / "quick_cpu.toml", None) is None


@pytest.mark.slow
def test_reproduce_runs_the_grid_times_the_seeds(tiny_snli, tmp_path, new_store):
    """`reproduce FILE.toml` with seeds in [train] and a two-value [grid]: 2 x 2 runs, one seed group per grid value.

    It runs in tmp_path because reproduce writes outputs/<stem>/ under the working directory, and a
    seed group there from an earlier session would be resumed (its runs adopted) instead of trained.
    """
    uri = new_store(tmp_path / "mlflow.db")
    toml = tmp_path / "seedgrid.toml"
    toml.write_text(
        f'[train]\nmodel = "tiny-d2l-random"\ndata = "{tiny_snli}"\nepochs = 1\nlr = 2e-3\noptimizer = "adam"\n'
        f'schedule = "constant"\nmax_len = 12\nbatch_size = 16\ncache_dir = "{tmp_path / "enc"}"\nseeds = [0, 1]\n\n'
        '[grid]\ntruncation = ["longest_first", "ratio"]\n'
    )
    r = cli("reproduce", toml, "--tracking-uri", uri, "--no-progress", cwd=tmp_path, PYTHONPATH=str(ROOT))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "seedgrid: 4 runs; compare them with: bertnli-exp report --experiment seedgrid" in r.stdout
    assert "compare --cell truncation=longest_first --cell truncation=ratio --experiment seedgrid" in r.stdout
    runs = load_runs(["seedgrid"], uri)  # the experiment is named after the file
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}
    assert sorted(zip(runs["truncation"], runs["seed"])) == [
        ("longest_first", 0),
        ("longest_first", 1),
        ("ratio", 0),
        ("ratio", 1),
    ]
    assert set(runs["model"]) == {"tiny-d2l-random"} and set(runs["max_len"]) == {12} and set(runs["epochs"]) == {1}
    assert set(runs["lr"]) == {2e-3}
    c = MlflowClient(uri)
    for trunc in ("longest_first", "ratio"):
        group = json.loads((tmp_path / "outputs" / "seedgrid" / f"truncation={trunc}" / "seed_group.json").read_text())[
            "group"
        ]
        mine = load_runs(["seedgrid"], uri, tags={"bertnli.seed_group": group})
        assert sorted(mine["seed"]) == [0, 1] and set(mine["truncation"]) == {trunc}
        for run_id in mine["run_id"]:
            tags = c.get_run(run_id).data.tags
            assert tags["bertnli.seeds"] == "0,1" and tags["bertnli.experiment_file"] == "seedgrid"


def _delta(stdout: str, split: str) -> float:
    return float(re.search(rf"^{split}: .*delta ([+-][0-9.]+) pp", stdout, re.M).group(1))


@pytest.mark.slow
def test_compare_cells_across_seeds(seeded):
    uri, *_ = seeded
    r = cli(
        "compare",
        "--cell",
        "truncation=ratio",
        "--cell",
        "truncation=longest_first",
        "--experiment",
        "cmp",
        "--tracking-uri",
        uri,
        "--boot",
        "500",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    runs = load_runs(["cmp"], uri)
    mean = runs.groupby("truncation")["test_acc"].mean()
    assert _delta(r.stdout, "test") == pytest.approx(100 * (mean["ratio"] - mean["longest_first"]), abs=0.006)
    assert re.search(r"^dev: .*2 run\(s\).*95 % CI \[.*; runs x examples p = ", r.stdout, re.M)


@pytest.mark.slow
def test_a_run_against_itself_is_no_difference(seeded):
    uri, *_ = seeded
    run_id = load_runs(["cmp"], uri)["run_id"][0]
    r = cli("compare", run_id, run_id, "--tracking-uri", uri, "--boot", "300")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _delta(r.stdout, "dev") == 0 and "McNemar exact p = 1 (0 vs 0 discordant)" in r.stdout
    assert "no detectable difference" in r.stdout


@pytest.mark.slow
def test_compare_refuses_runs_on_different_data(seeded, tmp_path):
    uri, tmp, toml, _ = seeded
    other = tmp_path / "other"
    other.mkdir()
    for split, n, seed in (("train", 240, 1), ("dev", 80, 7), ("test", 80, 3)):
        write_jsonl_gz(other / f"snli_1.0_{split}.jsonl.gz", make_rows(n, seed))
    r = cli(
        "train",
        "--config",
        toml,
        "--data",
        other,
        "--seeds",
        "0",
        "--out",
        tmp_path / "o",
        "--experiment",
        "cmp-other",
        "--tracking-uri",
        uri,
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    a = load_runs(["cmp"], uri)["run_id"][0]
    b = load_runs(["cmp-other"], uri)["run_id"][0]
    r = cli("compare", a, b, "--tracking-uri", uri)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "were evaluated on different dev data" in r.stderr


@pytest.mark.slow
def test_a_cell_that_matches_nothing_is_one_line(seeded):
    uri, *_ = seeded
    r = cli(
        "compare",
        "--cell",
        "truncation=ratio",
        "--cell",
        "truncation=none",
        "--experiment",
        "cmp",
        "--tracking-uri",
        uri,
    )
    assert (
        r.returncode == 2 and "no finished run matches --cell truncation=none" in r.stderr and r.stderr.count("\n") == 1
    )


@pytest.mark.slow
def test_random_sweep_is_unpruned_and_its_parent_gets_a_verdict(tiny_snli, tmp_path, new_store):
    """`sweep --sampler random`: i.i.d. draws (no enqueued cells, no pruning), so EVP is valid; verdict tags on the
    parent.
    """
    toml = tmp_path / "sweep.toml"
    toml.write_text(
        f'[train]\nmodel = "tiny-d2l-random"\ndata = "{tiny_snli}"\nmax_len = 12\nbatch_size = 16\noptimizer = "adam"\n'
        f'schedule = "constant"\ncache_dir = "{tmp_path / "enc"}"\ndropout = 0.0\nepochs = 2\n\n'
        '[sweep]\ntrials = 3\nstudy_name = "rnd"\npruner_startup_trials = 1\n\n'
        '[sweep.space]\nlr = {low = 1e-4, high = 5e-3, log = true}\ntruncation = ["longest_first", "ratio"]\n'
    )
    uri = new_store(tmp_path / "mlflow.db")
    r = cli(
        "sweep",
        "--config",
        toml,
        "--sampler",
        "random",
        "--storage",
        tmp_path / "journal.log",
        "--tracking-uri",
        uri,
        "--out",
        tmp_path / "out",
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("rnd").experiment_id], max_results=100)
    parent = next(x for x in runs if x.data.tags.get("bertnli.role") == "sweep-parent")
    children = [x for x in runs if x.data.tags.get("bertnli.role") == "sweep-trial"]
    assert (
        parent.data.tags["bertnli.sampler"] == "RandomSampler(seed=0, per trial number)"
        and parent.data.tags["bertnli.pruner"] == "NopPruner()"
    )
    assert len(children) == 3 and all(x.info.status == "FINISHED" for x in children)  # nothing pruned
    cells = {x.data.params["truncation"] for x in children}
    assert cells == {"longest_first", "ratio"}  # the seeded random draws cover both (2 and 1 trials)
    # cells are the space's categorical params (here truncation)
    assert {parent.data.tags["bertnli.verdict.best_cell"], parent.data.tags["bertnli.verdict.runner_up"]} == {
        f"truncation={t}" for t in cells
    }
    assert parent.data.tags["bertnli.verdict"].startswith(f"dev: {parent.data.tags['bertnli.verdict.best_cell']} ")
    assert 0 <= float(parent.data.tags["bertnli.verdict.p_dev"]) <= 1
    r = cli("report", "--study", "rnd", "--tracking-uri", uri, "--out", tmp_path / "rep")
    assert r.returncode == 0 and "TPESampler" not in (tmp_path / "rep" / "report.md").read_text()
