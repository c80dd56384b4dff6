"""A trial's checkpoint in a store every host sees, so a retry resumes on any host.

The local `--out` folder is seen by one host only: a trial retried elsewhere (its host was lost
to preemption) found it empty and trained from zero. So at each epoch end the trial process also
puts `last.pt` and `best/` in a store: by default its own MLflow run's artifacts (`resume/`),
which every host reaches through the tracking server, whatever artifact root that server has
(a shared folder, S3, GCS, Azure); `--checkpoint-store URI` names another artifact location
(`URI/<study>-<storage>/trial-NNN/`), and `none` turns uploads off.

Epoch ends only, not every mid-epoch checkpoint: that bounds the traffic to one checkpoint per
epoch, and what a retry on another host loses to at most the epoch it was in. Each epoch goes to
`epoch-NNN/` with `done.json` written last, so a half-uploaded epoch is never resumed from; the
older epochs are deleted once a newer one is complete.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from bertnli.retry import policy
from bertnli.sweep.reaping import retry_history, storage_key, trial_dir, trial_run_id
from bertnli.sweep.space import SweepConfig
from bertnli.tracking.store import client

RESUME_PATH = "resume"  # under the trial run's artifacts
DONE = "done.json"
WARNING_TAG = "bertnli.checkpoint_store.warning"


def store_uri(cfg: SweepConfig, number: int, run_id: str | None) -> str | None:
    """Where trial `number` (its MLflow run `run_id`) keeps its epoch checkpoints; None: nowhere."""
    if cfg.checkpoint_store == "none":
        return None
    if cfg.checkpoint_store != "run":
        return f"{cfg.checkpoint_store.rstrip('/')}/{cfg.study_name}-{storage_key(cfg)}/trial-{number:03d}"
    if not run_id:
        return None
    return f"{client(cfg.tracking.tracking_uri).get_run(run_id).info.artifact_uri.rstrip('/')}/{RESUME_PATH}"


def _repo(uri: str, tracking_uri: str | None):
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(uri, tracking_uri=tracking_uri)


def _epoch_dirs(repo) -> dict[int, str]:
    return {
        int(f.path.rsplit("epoch-", 1)[1]): f.path
        for f in repo.list_artifacts()
        if f.is_dir and f.path.rsplit("/", 1)[-1].startswith("epoch-")
    }


def upload(uri: str, out: Path, epoch: int, tracking_uri: str | None, patience_s: float = 60.0) -> None:
    """`out`'s last.pt and best/ as `epoch-NNN/`, retried for up to `patience_s`; older epochs then go."""
    repo = _repo(uri, tracking_uri)
    path = f"epoch-{epoch:03d}"
    retrying = policy(lambda e: True, patience_s=patience_s)

    def put() -> None:
        repo.log_artifact(str(out / "last.pt"), path)
        if (out / "best").is_dir():
            repo.log_artifacts(str(out / "best"), f"{path}/best")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / DONE).write_text(json.dumps({"epoch": epoch}))
            repo.log_artifact(str(Path(tmp) / DONE), path)

    retrying(put)
    for older, p in _epoch_dirs(repo).items():
        if older < epoch:
            drop(repo, p)


def newest(uri: str, tracking_uri: str | None) -> int:
    """The newest completely uploaded epoch in the store (0: none, or the store cannot be read)."""
    try:
        repo = _repo(uri, tracking_uri)
        done = [e for e, p in _epoch_dirs(repo).items() if any(f.path.endswith(DONE) for f in repo.list_artifacts(p))]
    except Exception:  # noqa: BLE001 - an unreadable store has nothing to resume from
        return 0
    return max(done, default=0)


def download(uri: str, epoch: int, dst: Path, tracking_uri: str | None) -> None:
    """Epoch `epoch`'s last.pt and best/ into the run folder `dst`."""
    repo = _repo(uri, tracking_uri)
    dst.mkdir(parents=True, exist_ok=True)
    policy(lambda e: True, patience_s=60.0)(repo.download_artifacts, f"epoch-{epoch:03d}", str(dst))
    got = dst / f"epoch-{epoch:03d}"
    for f in got.iterdir():
        if f.name != DONE:
            f.rename(dst / f.name)
    (got / DONE).unlink(missing_ok=True)
    got.rmdir()


def drop(repo, path: str | None = None) -> None:
    """Delete `path` (everything when None); a store that cannot delete keeps it, with a warning."""
    try:
        repo.delete_artifacts(path)
    except Exception as e:  # noqa: BLE001 - some artifact stores cannot delete
        print(f"warning: could not delete {path or 'the checkpoints'} from the checkpoint store: {e}", file=sys.stderr)


def forget(uri: str | None, tracking_uri: str | None, keep_best: bool = False) -> None:
    """A trial nobody will resume: its store goes (but its newest best/ where `keep_best`)."""
    if not uri:
        return
    repo = _repo(uri, tracking_uri)
    try:
        dirs = _epoch_dirs(repo)
    except Exception:  # noqa: BLE001 - nothing there, or no store
        return
    for epoch, p in dirs.items():
        if keep_best and epoch == max(dirs):
            drop(repo, f"{p}/last.pt")
        else:
            drop(repo, p)


def settle(cfg: SweepConfig, study, t, run_id: str | None, keep_best: bool) -> None:
    """Trial `t` ended for good (complete or pruned): its earlier attempts' checkpoints go, and its own
    (all but the newest best/ where `keep_best`: the study's winner may be logged from it on any host)."""
    tracking_uri = cfg.tracking.tracking_uri
    try:
        for number in retry_history(t):
            attempt = study.get_trials(deepcopy=False)[number]
            run = attempt.user_attrs.get("mlflow_run_id") or trial_run_id(cfg, attempt)
            forget(store_uri(cfg, number, run), tracking_uri)
        forget(store_uri(cfg, t.number, run_id), tracking_uri, keep_best)
    except Exception as e:  # noqa: BLE001 - what is left only takes space; the study is unharmed
        print(f"warning: trial {t.number}'s checkpoints stay in the checkpoint store: {e}", file=sys.stderr)


def prune_store(cfg: SweepConfig, trials: list, best_number: int | None) -> None:
    """At the sweep's end only the winner's weights stay in the store (all of them with --keep-checkpoints all)."""
    if cfg.keep_checkpoints == "all":
        return
    for t in trials:
        if t.number != best_number and t.user_attrs.get("mlflow_run_id"):
            try:
                forget(store_uri(cfg, t.number, t.user_attrs["mlflow_run_id"]), cfg.tracking.tracking_uri)
            except Exception:  # noqa: BLE001 - a run deleted from MLflow, or an unreachable store
                continue


def fetch_best(uri: str | None, dst: Path, tracking_uri: str | None) -> bool:
    """The newest best/ of the store into `dst` (a finished trial's weights, from another host)."""
    if not uri:
        return False
    try:
        repo = _repo(uri, tracking_uri)
        dirs = _epoch_dirs(repo)
        if not dirs:
            return False
        with tempfile.TemporaryDirectory() as tmp:
            repo.download_artifacts(f"{dirs[max(dirs)]}/best", tmp)
            src = Path(tmp) / dirs[max(dirs)] / "best"
            if not (src / "model.safetensors").is_file():
                return False
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dst))
    except Exception:  # noqa: BLE001 - no store, or nothing there
        return False
    return dst.is_dir()


def local_epoch(folder: Path) -> int:
    """The epochs `folder/last.pt` holds (0: none, or unreadable)."""
    from bertnli.train.checkpoint import load_last

    if not (folder / "last.pt").is_file():
        return 0
    try:
        return len(load_last(folder / "last.pt")["history"])
    except Exception:  # noqa: BLE001 - a damaged file is nothing to resume from
        return 0


def carry_checkpoint(cfg: SweepConfig, study, t, out: Path) -> bool:
    """A retry starts from the newest checkpoint of its earlier attempts, not from zero: in this host's
    `--out` (copied) or in the checkpoint store (downloaded), whichever holds more epochs; a tie stays local."""
    tracking_uri = cfg.tracking.tracking_uri
    best: tuple[int, int, str | None] = (0, 0, None)  # (epochs, preference, where: a store uri, None local)
    for number in retry_history(t):
        attempt = study.get_trials(deepcopy=False)[number]
        best = max(best, (local_epoch(trial_dir(cfg, number)), 1, str(trial_dir(cfg, number))))
        try:
            uri = store_uri(cfg, number, attempt.user_attrs.get("mlflow_run_id") or trial_run_id(cfg, attempt))
        except Exception:  # noqa: BLE001 - an unreachable store: resume from what this host has
            uri = None
        if uri:
            best = max(best, (newest(uri, tracking_uri), 0, uri))
    epochs, local, where = best
    if not epochs:
        return False
    shutil.rmtree(out, ignore_errors=True)
    if local:
        shutil.copytree(
            where,
            out,
            ignore=shutil.ignore_patterns("mlflow_run.json", "trial.json", "result.json", "*.tmp", "*.tmp.*"),
        )
    else:
        download(where, epochs, out, tracking_uri)
        print(f"resuming from epoch {epochs} of the checkpoint store {where}", file=sys.stderr)
    return True


class EpochUpload:
    """Engine callback of a trial process: each finished epoch's checkpoint to the store.

    An upload that fails for good does not stop the trial: it only cannot move hosts any more,
    which its run says in a warning tag."""

    def __init__(self, uri_of, out: Path, tracking_uri: str | None, patience_s: float = 60.0):
        self.uri_of, self.out, self.tracking_uri, self.patience_s = uri_of, out, tracking_uri, patience_s
        self.uri: str | None = None
        self.run_id: str | None = None

    def on_fit_start(self, info):
        marker = self.out / "mlflow_run.json"
        self.run_id = json.loads(marker.read_text())["run_id"] if marker.is_file() else None
        self.uri = self.uri_of(self.run_id)

    def on_step(self, step, loss):
        pass

    def on_epoch_end(self, m):
        if not self.uri:
            return
        try:
            upload(self.uri, self.out, m.epoch, self.tracking_uri, self.patience_s)
        except Exception as e:  # noqa: BLE001 - the trial trains on; it just cannot resume elsewhere
            why = f"epoch {m.epoch} not uploaded to the checkpoint store ({type(e).__name__}: {str(e)[:200]})"
            print(f"warning: {why}; a retry on another host would start from an older epoch", file=sys.stderr)
            if self.run_id:
                try:
                    client(self.tracking_uri).set_tag(self.run_id, WARNING_TAG, why)
                except Exception:  # noqa: BLE001
                    pass

    def on_fit_end(self, result):
        pass
