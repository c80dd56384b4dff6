"""A trial's checkpoint in a store every host sees, so a retry resumes on any host.

The local `--out` folder is seen by one host only: a trial retried elsewhere (its host was lost
to preemption) found it empty and trained from zero. So at each epoch end the trial process also
puts its `last.pt` (and `best/` when that epoch is the new best) in a store: with an MLflow
server, by default its own run's artifacts (`resume/`), which every host reaches through the
server when it proxies artifacts (`mlflow server --artifacts-destination ...`: a shared folder,
S3, GCS, Azure); `--checkpoint-store URI` names another artifact location
(`URI/<study>-<storage>/trial-NNN/`), and `none` turns uploads off. With a local MLflow store
(one host) the default is `none`: the local `--out` already holds every checkpoint.

Epoch ends only, not every mid-epoch checkpoint: that bounds the traffic to one `last.pt` per
epoch, and what a retry on another host loses to at most the epoch it was in. Layout:
`epoch-NNN/last.pt` and `epoch-NNN/done.json` ({"epoch", "best"}, written last, so a half-uploaded
epoch is never resumed from) and `best-NNN/` (the weights selected at epoch NNN, uploaded once).
Older epochs, and best weights no epoch refers to, are deleted once a newer epoch is complete.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from bertnli.files import replace_folder
from bertnli.retry import policy
from bertnli.sweep.reaping import retry_history, states, storage_key, trial_dir, trial_run_id
from bertnli.sweep.space import SweepConfig
from bertnli.sweep.warm_start import is_imported
from bertnli.tracking.store import client, default_tracking_uri

RESUME_PATH = "resume"  # under the trial run's artifacts
DONE = "done.json"
WARNING_TAG = "bertnli.checkpoint_store.warning"
REMOTE = ("http://", "https://", "databricks")


def store_kind(cfg: SweepConfig) -> str:
    """ "run", "none" or a URI: `auto` is the run's artifacts with an MLflow server, none with a local store."""
    if cfg.checkpoint_store != "auto":
        return cfg.checkpoint_store
    return "run" if (cfg.tracking.tracking_uri or default_tracking_uri()).startswith(REMOTE) else "none"


def store_uri(cfg: SweepConfig, number: int, run_id: str | None) -> str | None:
    """Where trial `number` (its MLflow run `run_id`) keeps its epoch checkpoints; None: nowhere."""
    kind = store_kind(cfg)
    if kind == "none":
        return None
    if kind != "run":
        return f"{kind.rstrip('/')}/{cfg.study_name}-{storage_key(cfg)}/trial-{number:03d}"
    if not run_id:
        return None
    artifacts = client(cfg.tracking.tracking_uri).get_run(run_id).info.artifact_uri.rstrip("/")
    if urlparse(artifacts).scheme in ("", "file"):  # a server that does not proxy artifacts: one host's disk
        return None
    return f"{artifacts}/{RESUME_PATH}"


def attempt_uri(cfg: SweepConfig, attempt) -> str | None:
    """The store of trial `attempt` (an earlier attempt, or any ended trial), found from any host."""
    if store_kind(cfg) != "run":
        return store_uri(cfg, attempt.number, None)
    return store_uri(cfg, attempt.number, attempt.user_attrs.get("mlflow_run_id") or trial_run_id(cfg, attempt))


def _repo(uri: str, tracking_uri: str | None):
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(uri, tracking_uri=tracking_uri)


def _numbered(repo, prefix: str) -> dict[int, str]:
    """The store's `prefix-NNN` folders by number."""
    names = {f.path.rsplit("/", 1)[-1]: f.path for f in repo.list_artifacts() if f.is_dir}
    return {
        int(n.split("-", 1)[1]): p
        for n, p in names.items()
        if n.startswith(prefix + "-") and n.split("-", 1)[1].isdigit()
    }


def _done(repo) -> tuple[int, int]:
    """(epoch, best epoch) of the newest completely uploaded epoch; (0, 0) for none."""
    for epoch in sorted(_numbered(repo, "epoch"), reverse=True):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                got = repo.download_artifacts(f"epoch-{epoch:03d}/{DONE}", tmp)
            except Exception:  # noqa: BLE001 - not complete: an upload cut short
                continue
            done = json.loads(Path(got).read_text())
        return int(done["epoch"]), int(done.get("best", 0))
    return 0, 0


def _best_epoch(out: Path) -> int:
    """The epoch whose weights `out/best` holds (the engine writes it in meta.json); 0 for none yet."""
    meta = out / "best" / "meta.json"
    return int(json.loads(meta.read_text()).get("epoch", 0)) if meta.is_file() else 0


def upload(uri: str, out: Path, epoch: int, tracking_uri: str | None, patience_s: float = 60.0) -> None:
    """`out`'s state after `epoch` into the store, retried for up to `patience_s`; then what it replaces goes."""
    repo = _repo(uri, tracking_uri)
    best = _best_epoch(out)

    def put() -> None:
        repo.log_artifact(str(out / "last.pt"), f"epoch-{epoch:03d}")
        if best and best not in _numbered(repo, "best"):
            repo.log_artifacts(str(out / "best"), f"best-{best:03d}")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / DONE).write_text(json.dumps({"epoch": epoch, "best": best}))
            repo.log_artifact(str(Path(tmp) / DONE), f"epoch-{epoch:03d}")

    policy(Exception, patience_s=patience_s)(put)
    try:  # what the new epoch replaces; left behind, it only takes space until the trial is settled
        stale = [p for e, p in _numbered(repo, "epoch").items() if e < epoch]
        stale += [p for b, p in _numbered(repo, "best").items() if b != best]
    except Exception:  # noqa: BLE001
        return
    for path in stale:
        drop(repo, path)


def newest(uri: str, tracking_uri: str | None) -> int:
    """The newest completely uploaded epoch in the store (0: none, or the store cannot be read)."""
    try:
        return _done(_repo(uri, tracking_uri))[0]
    except Exception:  # noqa: BLE001 - an unreadable store has nothing to resume from
        return 0


def download(uri: str, dst: Path, tracking_uri: str | None) -> int:
    """The newest complete epoch's last.pt and best weights, as a run folder `dst` (made new); its epoch."""
    repo = _repo(uri, tracking_uri)
    epoch, best = _done(repo)
    dst.mkdir(parents=True)
    fetch = policy(lambda e: not _lost(e), patience_s=60.0)  # a network blip is waited out, a lost file is not
    with tempfile.TemporaryDirectory() as tmp:
        shutil.move(fetch(repo.download_artifacts, f"epoch-{epoch:03d}/last.pt", tmp), dst / "last.pt")
        if best:
            shutil.move(fetch(repo.download_artifacts, f"best-{best:03d}", tmp), dst / "best")
    return epoch


def _lost(e: BaseException) -> bool:
    """The store answered that the file is not there (a local or mounted folder, or the MLflow server's 404)."""
    return isinstance(e, FileNotFoundError) or getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def drop(repo, path: str | None = None) -> None:
    """Delete `path` (everything when None); a store that cannot delete keeps it, with a warning."""
    try:
        repo.delete_artifacts(path)
    except Exception as e:  # noqa: BLE001 - some artifact stores cannot delete
        print(f"warning: could not delete {path or 'the checkpoints'} from the checkpoint store: {e}", file=sys.stderr)


def forget(uri: str | None, tracking_uri: str | None, keep_best: bool = False) -> None:
    """A trial nobody will resume: its store goes, all but its best weights where `keep_best`."""
    if not uri:
        return
    try:
        repo = _repo(uri, tracking_uri)
        best = (_done(repo)[1] or max(_numbered(repo, "best"), default=0)) if keep_best else 0  # forgotten once
        paths = [*_numbered(repo, "epoch").values(), *(p for n, p in _numbered(repo, "best").items() if n != best)]
    except Exception:  # noqa: BLE001 - nothing there, or no store
        return
    for path in paths:
        drop(repo, path)


def settle(cfg: SweepConfig, study, t, run_id: str | None, keep_best: bool) -> None:
    """Trial `t` ended for good: its earlier attempts' checkpoints go, and its own (all but its best
    weights where `keep_best`: the study's winner may be logged from them on any host)."""
    tracking_uri, keep_all = cfg.tracking.tracking_uri, cfg.keep_checkpoints == "all"
    trials = study.get_trials(deepcopy=False)
    for number in retry_history(t):
        try:
            forget(attempt_uri(cfg, trials[number]), tracking_uri, keep_best=keep_all)
        except Exception:  # noqa: BLE001 - what is left only takes space; the study is unharmed
            continue
    try:
        forget(store_uri(cfg, t.number, run_id), tracking_uri, keep_best=keep_best or keep_all)
    except Exception as e:  # noqa: BLE001
        print(f"warning: trial {t.number}'s checkpoints stay in the checkpoint store: {e}", file=sys.stderr)


def prune_store(cfg: SweepConfig, study, winners: set[int]) -> None:
    """At the sweep's end only the winners' weights stay in the store (the best trial, or the Pareto front;
    every trial's best with --keep-checkpoints all); failed attempts that were never retried go too."""
    if store_kind(cfg) == "none":
        return
    ended = (states().COMPLETE, states().PRUNED, states().FAIL)  # a trial still running elsewhere keeps its store
    for t in study.get_trials(deepcopy=False, states=ended):
        if t.number not in winners and not is_imported(t):  # an imported trial's store is its source's
            try:
                forget(attempt_uri(cfg, t), cfg.tracking.tracking_uri, cfg.keep_checkpoints == "all")
            except Exception:  # noqa: BLE001 - a run deleted from MLflow, or an unreachable store
                continue


def fetch_best(uri: str | None, dst: Path, tracking_uri: str | None) -> bool:
    """The stored best weights into `dst`: the winner's, when another host trained it."""
    if not uri:
        return False
    try:
        repo = _repo(uri, tracking_uri)
        best = max(_numbered(repo, "best"), default=0)
        if not best:
            return False
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(repo.download_artifacts(f"best-{best:03d}", tmp))
            if not (src / "model.safetensors").is_file():
                return False
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dst))
    except Exception:  # noqa: BLE001 - no store, or nothing there
        return False
    return dst.is_dir()


def local_epoch(folder: Path) -> int:
    """The epochs `folder/last.pt` holds (0: none, or unreadable); memory-mapped, so no model is read."""
    import torch

    try:
        state = torch.load(folder / "last.pt", map_location="cpu", weights_only=True, mmap=True)
        return len(state["history"])
    except Exception:  # noqa: BLE001 - missing or damaged: nothing to resume from
        return 0


def carry_checkpoint(cfg: SweepConfig, study, t, out: Path) -> bool:
    """A retry starts from the newest checkpoint of its earlier attempts, not from zero: in this host's
    `--out` (copied) or in the checkpoint store (downloaded), whichever holds more epochs; a tie stays
    local. A candidate that cannot be fetched (the store went away) gives way to the next; `out` is
    replaced only by a complete copy."""
    found = []  # (epochs, local first, source)
    trials = study.get_trials(deepcopy=False)
    for number in retry_history(t):
        found.append((local_epoch(trial_dir(cfg, number)), 1, str(trial_dir(cfg, number))))
        try:
            uri = attempt_uri(cfg, trials[number])
        except Exception:  # noqa: BLE001 - an unreachable store: resume from what this host has
            uri = None
        if uri:
            found.append((newest(uri, cfg.tracking.tracking_uri), 0, uri))
    tmp = out.with_name(out.name + ".carry")
    for epochs, local, source in sorted(found, reverse=True):
        if not epochs:
            break
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            if local:
                skip = shutil.ignore_patterns("mlflow_run.json", "trial.json", "result.json", "*.tmp", "*.tmp.*")
                shutil.copytree(source, tmp, ignore=skip)
            else:
                got = download(source, tmp, cfg.tracking.tracking_uri)
                print(f"resuming from epoch {got} of the checkpoint store {source}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - try the next newest
            print(f"warning: cannot resume from {source}: {str(e)[:200]}", file=sys.stderr)
            continue
        replace_folder(tmp, out)
        return True
    shutil.rmtree(tmp, ignore_errors=True)
    return False


class EpochUpload:
    """Engine callback of a trial process: each finished epoch's checkpoint to the store.

    Placed after the pruner's relay, so a pruned epoch uploads nothing. An upload that fails for
    good does not stop the trial: it only cannot move hosts any more, which its run says in a
    warning tag, and it stops trying (every later epoch would wait out the same failure)."""

    def __init__(self, uri_of, out: Path, tracking_uri: str | None, patience_s: float = 60.0):
        self.uri_of, self.out, self.tracking_uri, self.patience_s = uri_of, out, tracking_uri, patience_s
        self.uri: str | None = None
        self.run_id: str | None = None

    def on_fit_start(self, info):
        marker = self.out / "mlflow_run.json"
        try:
            self.run_id = json.loads(marker.read_text())["run_id"] if marker.is_file() else None
            self.uri = self.uri_of(self.run_id)
        except Exception as e:  # noqa: BLE001 - no store this time: the trial trains all the same
            self._warn(f"no checkpoint store ({type(e).__name__}: {str(e)[:200]})")

    def on_step(self, step, loss):
        pass

    def on_epoch_end(self, m):
        if not self.uri:
            return
        try:
            upload(self.uri, self.out, m.epoch, self.tracking_uri, self.patience_s)
        except Exception as e:  # noqa: BLE001 - the trial trains on; it just cannot resume elsewhere
            self.uri = None
            self._warn(f"epoch {m.epoch} not uploaded to the checkpoint store ({type(e).__name__}: {str(e)[:200]})")

    def _warn(self, why: str) -> None:
        print(f"warning: {why}; a retry on another host would not resume from this trial", file=sys.stderr)
        if self.run_id:
            try:
                client(self.tracking_uri).set_tag(self.run_id, WARNING_TAG, why)
            except Exception:  # noqa: BLE001 - the warning is on stderr all the same
                pass

    def on_fit_end(self, result):
        pass
