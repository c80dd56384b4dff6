"""What a normal (non-editable) install gets: the wheel `pip` builds from this tree holds every module."""

import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT


@pytest.mark.slow  # `pip wheel` in a process of its own
def test_the_wheel_holds_every_module_of_the_source_tree(tmp_path):
    # Built from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "bertnli", src / "bertnli", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            ".",
            "-w",
            str(tmp_path / "dist"),
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("bertnli-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "bertnli").rglob("*.py") if "__pycache__" not in p.parts
    }
    assert "bertnli/sweep/pool.py" in expected and "bertnli/sweep/pool.py" in shipped
    assert not expected - shipped, f"missing from the wheel: {sorted(expected - shipped)}"
    entry = next(n for n in shipped if n.endswith(".dist-info/entry_points.txt"))
    assert "bertnli-exp = bertnli.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
