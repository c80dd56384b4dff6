"""Shared fixtures: tiny SNLI files, a real HTTP server on 127.0.0.1, a real MLflow store."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import random
import shutil
import threading
from pathlib import Path

# One intra-op thread for torch, here and in every process a test starts (they inherit the environment):
# the test models are tiny, so a second thread buys nothing, and on a 2-core machine that also runs a
# subprocess, a sweep's workers or another job, OpenMP threads waiting for a busy core made tiny runs 5-7x
# slower. Set before torch is imported; a value the caller set wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

pytest_plugins = ["ci_servers", "cpu_timeline"]  # CI=true: PostgreSQL/Chromium tests may not skip; per-test CPU

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

SUBJECTS = ["A man", "A woman", "Two dogs", "A child", "The boy", "A girl", "Some people", "An old man"]
ACTIONS = ["is sitting", "is running", "are playing", "is eating", "is sleeping", "is walking"]
PLACES = ["on the street", "in the water", "outside", "in a park", "at home", "on a bench"]


def _parse(sentence: str) -> str:
    """A right-branching binary parse, the shape SNLI's parse columns have."""
    words = sentence.rstrip(".").split() + ["."]
    out = words[-1]
    for w in reversed(words[:-1]):
        out = f"( {w} {out} )"
    return out


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """SNLI-shaped rows whose label is learnable from the words (contradiction <-> 'not')."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        s, a, p = rng.choice(SUBJECTS), rng.choice(ACTIONS), rng.choice(PLACES)
        premise = f"{s} {a} {p}."
        label = ["entailment", "contradiction", "neutral", "-"][i % 4 if i % 17 else 3]
        if label == "entailment":
            hyp = f"{s} {a}."
        elif label == "contradiction":
            hyp = f"{s} is not {a.split()[-1]} {p}."
        else:
            hyp = f"{s} {a} {p} with a friend because it is sunny."
        rows.append(
            {
                "gold_label": label,
                "sentence1": premise,
                "sentence2": hyp,
                "sentence1_binary_parse": _parse(premise),
                "sentence2_binary_parse": _parse(hyp),
                "pairID": f"{i}.jpg#{i % 4}",
            }
        )
    return rows


def small_vocabulary():
    """A d2l word vocabulary over a dozen words: enough to encode the data tests' sentences."""
    from bertnli.data.tokenize import D2LTokenizer

    words = "a man woman is not sitting running on the street . two dogs".split()
    return D2LTokenizer(["<unk>", "<pad>", "<cls>", "<sep>", *words])


def write_jsonl_gz(path: Path, rows: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_snli(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("snli")
    write_jsonl_gz(folder / "snli_1.0_train.jsonl.gz", make_rows(240, 1))
    write_jsonl_gz(folder / "snli_1.0_dev.jsonl.gz", make_rows(80, 2))
    write_jsonl_gz(folder / "snli_1.0_test.jsonl.gz", make_rows(80, 3))
    return folder


@pytest.fixture(scope="session")
def real_snli() -> Path:
    folder = SHARED_DATA / "snli-resplit"
    if not (folder / "snli_1.0_train.jsonl.gz").is_file():
        pytest.skip("real SNLI (../shared/data/snli-resplit) is not on this machine")
    return folder


@pytest.fixture(scope="session")
def store_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, migrated once: a new store's schema migration costs seconds, a copy nothing."""
    from bertnli.tracking.store import client

    db = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    client(f"sqlite:///{db}")
    return db


def copy_store(store_template: Path, path: Path) -> str:
    """A ready (migrated, empty) MLflow store at `path`, copied from the template; its tracking URI.
    For module- and session-scoped fixtures (tests take `new_store`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(store_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def new_store(store_template):
    """`new_store(path)` puts a ready (migrated, empty) MLflow store at `path` and returns its tracking URI."""

    def make(path: Path) -> str:
        return copy_store(store_template, path)

    return make


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory, store_template) -> str:
    """One SQLite store for the session's tests that only add runs to it."""
    return copy_store(store_template, tmp_path_factory.mktemp("mlruns") / "mlflow.db")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test its own model cache, no inherited tracking URI, and the environment, signal handlers and MLflow's
    tracking URI back as they were afterwards: an in-process command (CliRunner) sets switches in os.environ for
    its trial processes (--no-system-metrics sets BERTNLI_SYSTEM_METRICS=0), which must not reach the next test."""
    import signal

    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved = dict(os.environ)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    uri = tracking_utils._tracking_uri  # set by an in-process command: the next test's default store must not be it
    monkeypatch.setenv("BERTNLI_CACHE", str(tmp_path / "model-cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)
    for sig, handler in handlers.items():  # a sweep's or train's SIGTERM handler
        signal.signal(sig, handler)
    tracking_utils._tracking_uri = uri


# ---------------------------------------------------------------- a real HTTP server


class FileServer:
    """Serves a folder on 127.0.0.1 with HTTP Range support; can cut a transfer or fail with a status."""

    def __init__(self, root: Path):
        self.root = root
        self.cut_after: int | None = None  # close the connection after this many body bytes, once
        self.fail_with: list[int] = []  # statuses to answer before serving normally
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if server.fail_with:
                    self.send_error(server.fail_with.pop(0))
                    return
                path = server.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    self.wfile.write(body[: server.cut_after])
                    self.wfile.flush()
                    server.cut_after = None
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)  # poll: close fast
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = FileServer(root)
    yield server
    server.close()


def run_env(**extra) -> dict:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def expected_seconds(item) -> float:
    """What a test takes on the 2-core machine: `@pytest.mark.slow(SECONDS)` where it was measured (the
    longest ones), else 30 for a slow test and half a second for the rest."""
    marker = item.get_closest_marker("slow")
    if marker is None:
        return 0.5
    return float(marker.args[0]) if marker.args else 30.0


def pytest_collection_modifyitems(items):
    """The longest files first, in their own order: under `-n 2 --dist loadfile` each worker takes the next
    file when it is free, so the files that wait most (a database outage, a benchmark's studies) overlap
    the other worker's work from the start and both workers end together on short files."""
    cost = {}
    for item in items:
        cost[item.path] = cost.get(item.path, 0.0) + expected_seconds(item)
    items.sort(key=lambda item: -cost[item.path])  # stable: files stay whole, tests keep their order


# What bertnli writes under its working directory by default: a test runs commands in a folder of its own.
WRITTEN_BY_DEFAULT = ("outputs", ".cache", "mlruns", "reports")
_BEFORE = pytest.StashKey[set]()
_LEFT = pytest.StashKey[list]()


def _written() -> set[Path]:
    return {p for name in WRITTEN_BY_DEFAULT for p in (ROOT / name).rglob("*") if p.is_file() and p.name != ".gitkeep"}


def pytest_sessionstart(session):
    session.config.stash[_BEFORE] = _written()


def pytest_sessionfinish(session, exitstatus):
    """The suite leaves the checkout as it found it: a command run in the repository by a test left its outputs/,
    encoding caches and MLflow stores in every checkout that ran the suite. (xdist workers skip this; the
    controller checks once all of them have ended. A bertnli command of your own run in the checkout meanwhile
    counts too.)"""
    if hasattr(session.config, "workerinput") or _BEFORE not in session.config.stash:
        return
    left = sorted(_written() - session.config.stash[_BEFORE])
    session.config.stash[_LEFT] = left
    if left and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    left = config.stash.get(_LEFT, [])
    if left:
        shown = ", ".join(str(p.relative_to(ROOT)) for p in left[:5]) + (
            f" and {len(left) - 5} more" if left[5:] else ""
        )
        terminalreporter.write_line(
            f"FAILED: the tests left files in the repository: {shown} (run the command in tmp_path)", red=True
        )
