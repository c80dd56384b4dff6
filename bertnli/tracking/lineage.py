"""What a run saw and what it ran: its data splits as MLflow dataset inputs, and its code and packages.

The split digest is the sha256 of the split file that bertnli computes for its encoding
cache. MLflow's SQL stores hold 36 characters of a dataset digest, so the dataset input
carries the first 36 hex digits and its profile the whole digest; run tags hold the whole
digest too. A folder unpacked from SNLI's zip names SNLI's URL as its source, any other
folder itself.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from bertnli import PACKAGE_DIR, BadInput, BertnliError
from bertnli.data.snli import SNLI_URL, SPLITS, find_split
from bertnli.files import file_digest
from bertnli.retry import policy
from bertnli.tracking.store import client

DIGEST_CHARS = 36  # MLflow's datasets.digest column is String(36)


# ---------------------------------------------------------------- data


def data_source_uri(folder: str | Path) -> str:
    """SNLI's URL for a folder `bertnli-exp data download` unpacked, else the folder as a file URI."""
    folder = Path(folder).resolve()
    if any(p.name == "snli_1.0.extracted" for p in (folder, *folder.parents)):
        return SNLI_URL
    return folder.as_uri()


def split_datasets(folder: str | Path, digests: dict[str, str], examples: dict[str, int]):
    """One `mlflow.data` dataset per split: name = split, digest = the split digest, source = folder or URL."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    class SplitDataset(MetaDataset):
        def __init__(self, source, name, digest, profile):
            self._profile = profile
            super().__init__(source, name=name, digest=digest)

        @property
        def profile(self):
            return self._profile

        def to_dict(self):
            return {**super().to_dict(), "profile": json.dumps(self._profile)}

    with warnings.catch_warnings():  # a file URI matches MLflow's local source twice; both are the same class
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(data_source_uri(folder))
    return [
        SplitDataset(source, name, d[:DIGEST_CHARS], {"sha256": d, "examples_used": examples.get(name, 0)})
        for name, d in digests.items()
    ]


def log_split_inputs(c, run_id: str, folder: str | Path, digests: dict[str, str], examples: dict[str, int]) -> None:
    """`log_input` for each split not yet on the run (a resumed run already has them).

    MLflow looks an experiment's dataset up and inserts it when absent, so trials that start together both insert
    it and all but one fail on the unique key. Trying again finds the row the winner inserted."""
    from mlflow.entities import DatasetInput, InputTag

    def log_missing() -> None:
        have = {(i.dataset.name, i.dataset.digest) for i in c.get_run(run_id).inputs.dataset_inputs}
        inputs = [
            DatasetInput(ds._to_mlflow_entity(), [InputTag("mlflow.data.context", ds.name)])
            for ds in split_datasets(folder, digests, examples)
            if (ds.name, ds.digest) not in have
        ]
        if inputs:
            c.log_inputs(run_id, datasets=inputs)

    policy(lost_insert_race, attempts=4, first=0.05, cap=0.2, jitter=0.3)(log_missing)


def lost_insert_race(e: BaseException) -> bool:
    """A unique-key error, as SQLite, PostgreSQL and MySQL word it (directly or relayed by an MLflow server)."""
    from mlflow.exceptions import MlflowException

    text = str(e).lower()
    return isinstance(e, MlflowException) and any(
        k in text for k in ("unique constraint", "duplicate key", "duplicate entry", "integrityerror")
    )


def run_split_digests(c, run_id: str) -> dict[str, str]:
    """The digests a recorded run's dataset inputs carry (full sha256 from the profile where present)."""
    out = {}
    for i in c.get_run(run_id).inputs.dataset_inputs:
        profile = json.loads(i.dataset.profile) if i.dataset.profile else {}
        out[i.dataset.name] = profile.get("sha256", i.dataset.digest)
    return out


def expected_digests(folder: str | Path, declared: dict[str, str] | None = None) -> tuple[dict[str, str], str]:
    """What the data should be: `[expect.data_sha256]` of an experiment, else the folder's SHA256SUMS."""
    if declared:
        return dict(declared), "the experiment's expect.data_sha256"
    sums = Path(folder) / "SHA256SUMS"
    if not sums.is_file():
        return {}, ""
    out = {}
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            name = Path(parts[1].lstrip("*")).name
            split = next((s for s in SPLITS if name.startswith(f"snli_1.0_{s}.")), None)
            if split:
                out[split] = parts[0]
    return out, str(sums)


def digest_mismatches(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Splits whose digest differs (prefix match: a dataset input holds 36 hex digits)."""
    bad = []
    for split, want in expected.items():
        got = actual.get(split)
        if got is not None and not (want.startswith(got) or got.startswith(want)):
            bad.append(f"{split} is {got[:12]}..., expected {want[:12]}...")
    return bad


def check_data_folder(folder: str | Path, declared: dict[str, str] | None = None) -> str:
    """Before training: refuse data that is not what the experiment expects; returns what was checked."""
    expected, where = expected_digests(folder, declared)
    if not expected:
        return ""
    actual = {s: file_digest(p) for s in expected if (p := find_split(folder, s)) is not None}
    bad = digest_mismatches(expected, actual)
    if bad:
        raise BadInput(f"data in {folder} differs from {where}: {'; '.join(bad)}; use the data the experiment names")
    return where


# ---------------------------------------------------------------- code and packages


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def installed_packages() -> list[str]:
    from importlib.metadata import distributions

    return sorted({f"{d.metadata['Name'].lower()}=={d.version}" for d in distributions() if d.metadata["Name"]})


def provenance() -> dict[str, str]:
    """git commit and dirty flag of the bertnli checkout, a digest of its source and of the installed packages."""
    h = hashlib.sha256()
    for p in sorted(PACKAGE_DIR.rglob("*.py")):
        h.update(p.read_bytes())
    out = {
        "bertnli.code_sha256": h.hexdigest()[:16],
        "bertnli.packages_sha256": hashlib.sha256("\n".join(installed_packages()).encode()).hexdigest()[:16],
    }
    commit = _git("rev-parse", "HEAD")
    if commit:
        out["mlflow.source.git.commit"] = commit
        out["bertnli.git_dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower()
    return out


def source_tags() -> dict[str, str]:
    """The runs table's Source column: the command that made the run (`python -m bertnli.cli` is `bertnli-exp`)."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    entry = "bertnli-exp" if script.resolve() == PACKAGE_DIR / "cli" / "__main__.py" else script.name
    cmd = " ".join([entry, *sys.argv[1:2]]) if entry in ("bertnli-exp", "__main__.py") else entry
    return {"mlflow.source.name": cmd, "mlflow.source.type": "LOCAL"}


def verify_run_data(
    c, run_id: str, expected: dict[str, str], experiment_file: str = ""
) -> tuple[str, list[str], list[str]]:
    """After a run: the digests its dataset inputs record, against the expected ones and the experiment's earlier run.

    Returns (summary, mismatches, notes); a mismatch means the run did not see the data it was meant to.
    """
    recorded = run_split_digests(c, run_id)
    summary = ", ".join(f"{s} {d[:12]}" for s, d in sorted(recorded.items())) or "no dataset inputs recorded"
    problems = digest_mismatches(expected, recorded) if expected else []
    if expected and not recorded:
        problems = ["the run recorded no dataset inputs"]
    notes = []
    if experiment_file:
        run = c.get_run(run_id)
        earlier = [
            r
            for r in c.search_runs(
                [run.info.experiment_id],
                f"tags.`bertnli.experiment_file` = '{experiment_file}' and attributes.status = 'FINISHED'",
                order_by=["attributes.start_time DESC"],
                max_results=5,
            )
            if r.info.run_id != run_id
        ]
        if earlier:
            differ = digest_mismatches(run_split_digests(c, earlier[0].info.run_id), recorded)
            if differ:
                notes.append(
                    f"earlier run {earlier[0].info.run_id} of {experiment_file} saw other data ({'; '.join(differ)}): "
                    "their figures are not comparable"
                )
    return summary, problems, notes


@dataclass
class DataCheck:
    """`reproduce`'s data check: the files before training, the run's recorded dataset inputs after it."""

    expected: dict[str, str]
    where: str

    @classmethod
    def before(cls, folder: str | Path, declared: dict[str, str] | None = None) -> "DataCheck":
        where = check_data_folder(folder, declared) if Path(folder).is_dir() else ""
        return cls(expected_digests(folder, declared)[0] if where else {}, where)

    def after(self, run_id: str, tracking_uri: str | None, experiment_file: str) -> str:
        """Lines to print; a run that recorded other data than expected is an error."""
        summary, problems, notes = verify_run_data(client(tracking_uri), run_id, self.expected, experiment_file)
        if problems:
            raise BertnliError(f"run {run_id} recorded data other than {self.where}: {'; '.join(problems)}")
        return "\n".join(
            [f"data: {summary}" + (f" (match {self.where})" if self.where else ""), *(f"note: {n}" for n in notes)]
        )
