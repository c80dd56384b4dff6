"""An error nobody foresaw still leaves as one line, naming its cause and the file that holds the traceback."""

import re
from pathlib import Path

from click.testing import CliRunner

from bertnli.cli import main


def test_an_unexpected_error_is_one_line_pointing_to_its_traceback(tiny_snli, tmp_path):
    """Seen: a tracking store that cannot be created (as a full disk or an unreachable server) dumped a
    38-230 line traceback."""
    args = [
        "train",
        "--model",
        "tiny-d2l-random",
        "--data",
        str(tiny_snli),
        "--out",
        str(tmp_path / "run"),
        "--tracking-uri",
        "sqlite:////proc/x/mlflow.db",
        "--no-progress",
        "--no-system-metrics",
    ]
    r = CliRunner().invoke(main, args)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith("bertnli-exp: error: FileNotFoundError: [Errno 2] No such file or directory: '/proc/x'")
    log = Path(re.search(r"traceback in (\S+)\)$", lines[0]).group(1))
    assert "Traceback (most recent call last)" in log.read_text() and "FileNotFoundError" in log.read_text()
