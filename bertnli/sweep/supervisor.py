"""One trial from the worker's side: start its process, relay report/should_prune, heartbeat, tell.

The worker thread owns the Optuna `Trial` it got from `ask()`; the trial process (trial.py)
never opens the storage. Every way a trial can end maps to one Optuna state and one MLflow
status that agree (README, guarantees).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertnli.sweep.checkpoint_store import carry_checkpoint, settle
from bertnli.sweep.launcher import ForkedTrial, last_line, python_path, rank_envs, signal_name, start_trial
from bertnli.sweep.objectives import (
    is_multi,
    objectives_of,
    recorded_attrs,
    set_constraints,
    summary_measures,
    values_to_tell,
)
from bertnli.sweep.reaping import (
    end_orphan_run,
    patiently,
    retry,
    retry_history,
    set_own_attr,
    states,
    tag_run,
    tell_unless_finished,
    trial_dir,
    trial_run_id,
)
from bertnli.sweep.slots import UNPLACED, Placement
from bertnli.sweep.space import SweepConfig, report_step
from bertnli.sweep.storage import HEARTBEAT_S, trial_id, uses_heartbeat
from bertnli.sweep.trial import DIVERGED_EXIT, INTERRUPTED_EXIT, OOM_EXIT, ORPHANED_EXIT, PRUNED_EXIT
from bertnli.train.runtime import RENDEZVOUS

RANK_GRACE_S = 3.0  # after one rank of a trial failed, or rank 0 ended: how long the others get to end by themselves
# A rank other than 0 that ended with its trial, not on its own (ORPHANED_EXIT: the worker closed its lifeline).
SIBLING_ENDS = (0, DIVERGED_EXIT, INTERRUPTED_EXIT, ORPHANED_EXIT)


@dataclass
class Outcome:
    number: int
    state: str  # COMPLETE, PRUNED, FAIL, or LOST (another process failed it meanwhile)
    value: float | None
    params: dict[str, Any]
    seconds: float
    test_acc: float | None = None
    train_seconds: float = 0.0
    error: str = ""
    counted: bool = True  # a failure that says nothing of the configuration (out of memory beside others) is not


class TrialRun:
    """Runs one asked trial to its end; `current` lets the pool end it if this worker crashes."""

    def __init__(
        self,
        cfg: SweepConfig,
        study,
        storage,
        trial,
        spec_path: Path,
        parent_run_id: str,
        ticks: int,
        placement: Placement = UNPLACED,
    ):
        self.cfg, self.study, self.storage, self.trial, self.placement = cfg, study, storage, trial, placement
        self.spec_path, self.parent_run_id, self.ticks = spec_path, parent_run_id, ticks
        self.out = trial_dir(cfg, trial.number)
        self.logf = self.out.with_name(self.out.name + ".log")
        self.proc: ForkedTrial | subprocess.Popen | None = None  # rank 0: the trial process the worker talks to
        self.siblings: list[ForkedTrial | subprocess.Popen] = []  # ranks 1.. of a trial over several processes
        self.lifelines: list[int] = []  # our ends of the siblings' decide pipes: closed, they exit
        self.rank_failure: tuple[int, int] | None = None  # (rank, exit code) of the first sibling that failed
        self.stopping = False  # SIGTERM sent to every rank: their ends are not failures
        self.killed_running: set[int] = set()  # the ranks that the worker itself killed (_end)
        self.run_id_recorded = False
        self.meeting: str | None = None  # the file a trial's ranks meet in (launcher.rank_envs)

    def _frozen(self):
        return self.study.get_trials(deepcopy=False)[self.trial.number]

    def _tell(self, **kw) -> bool:
        """Finish our trial; False when a reaper finished it first (it owns the configuration now).

        A tell whose answer an outage lost is repeated, and then finds the trial finished: by our own write when
        it holds what we told (our values, PRUNED, or FAIL with the error we set just before). A FAIL with another
        error is a reaper's, which queued the configuration again: counting it ours too would train it twice."""
        if patiently(lambda: tell_unless_finished(self.study, self.storage, self.trial.number, **kw)):
            return True
        found = self._frozen()
        told = kw.get("values")
        if told is not None:
            return found.state == states().COMPLETE and found.values == (told if isinstance(told, list) else [told])
        if kw.get("state") == states().FAIL:
            return found.state == states().FAIL and found.user_attrs.get("error") == self.trial.user_attrs.get("error")
        return kw.get("state") == states().PRUNED and found.state == states().PRUNED

    def start(self) -> None:
        frozen = self._frozen()
        resume = carry_checkpoint(self.cfg, self.study, frozen, self.out)
        if not resume:
            import shutil

            shutil.rmtree(self.out, ignore_errors=True)  # a stale folder of this number is junk
        history = retry_history(frozen)
        report_r, report_w = os.pipe()
        decide_r, decide_w = os.pipe()
        env = self.placement.env({**os.environ, "PYTHONPATH": python_path(os.environ)})
        args = ["--spec", str(self.spec_path), "--number", str(self.trial.number), "--params"]
        args += [json.dumps(self.trial.params), "--out", str(self.out), "--parent-run", self.parent_run_id]
        if history:
            args += ["--retry-of", str(history[0])]
        if resume:
            args += ["--resume"]
        if self.placement.gpus:  # where it ran, in the study too (the trial's run records what it saw)
            set_own_attr(self.trial, "gpus", list(self.placement.gpus))
            args += ["--gpus", ",".join(map(str, self.placement.gpus))]
        if self.placement.shared:
            args += ["--gpu-sharing", "shared"]
        elif self.placement.gpus and self.trial.user_attrs.get("gpu_alone"):
            args += ["--gpu-sharing", "alone after running out of memory"]
        self.logf.parent.mkdir(parents=True, exist_ok=True)
        ranks = rank_envs(self.placement.ranks, self.logf.parent)
        self.meeting = ranks[0].get(RENDEZVOUS)
        self.proc = start_trial(
            self.cfg.trial_start, args, {**env, **ranks[0]}, self.logf, bool(resume), (report_w, decide_r)
        )
        self.reports, self.decide = os.fdopen(report_r, "r"), os.fdopen(decide_w, "w", buffering=1)
        for k, rank_env in enumerate(ranks[1:], 1):  # no report is read from them; the decide pipe is a lifeline
            silent_r, silent_w = os.pipe()
            lifeline_r, lifeline_w = os.pipe()
            log = self.rank_log(k)
            self.siblings.append(
                start_trial(self.cfg.trial_start, args, {**env, **rank_env}, log, bool(resume), (silent_w, lifeline_r))
            )
            os.close(silent_r)
            self.lifelines.append(lifeline_w)

    def rank_log(self, k: int) -> Path:
        return self.logf.with_name(f"{self.out.name}.rank{k}.log")

    def decide_epoch(self, msg: dict) -> str:
        """Report at the fraction of this trial's own schedule (space.report_step), then ask the pruner.

        "lost" when another process finished the trial since the last heartbeat (it reaped it after
        an outage longer than `grace`): its retry owns the configuration now, so this attempt ends
        here rather than the error ending the worker thread."""
        from optuna.exceptions import UpdateFinishedTrialError

        if is_multi(self.cfg):  # Optuna takes no intermediate values with several objectives: nothing to prune
            return "lost" if not self.beat() else "go"
        epochs = int(self.trial.params.get("epochs", self.cfg.base.epochs))
        try:
            self.trial.report(msg["dev_acc"], report_step(msg["epoch"], epochs, self.ticks))
        except UpdateFinishedTrialError:
            return "lost"
        if msg["epoch"] <= self.cfg.pruner_warmup_epochs:
            return "go"
        return "prune" if self.trial.should_prune() else "go"

    def beat(self) -> bool:
        """One heartbeat; False when another process has finished this trial meanwhile (we lost it)."""
        tid = trial_id(self.storage, self.study.study_name, self.trial.number)
        if self.storage.get_trial(tid).state != states().RUNNING:
            return False
        if uses_heartbeat(self.storage):
            self.storage.record_heartbeat(tid)
        else:
            set_own_attr(self.trial, "heartbeat", time.time())
        if not self.run_id_recorded and (self.out / "mlflow_run.json").is_file():
            set_own_attr(self.trial, "mlflow_run_id", json.loads((self.out / "mlflow_run.json").read_text())["run_id"])
            self.run_id_recorded = True
        return True

    def supervise(self, t0: float) -> str | None:
        """Until the process ends: relay epochs, beat, enforce the trial timeout. Returns why it was ended, if it
        was.
        """
        next_beat = 0.0
        while True:
            if self._rank_failed():
                return self._end("rank")
            if time.time() >= next_beat:
                if not self.beat():
                    return self._end("lost")
                next_beat = time.time() + HEARTBEAT_S
            if self.cfg.trial_timeout and time.time() - t0 > self.cfg.trial_timeout:
                return self._end("timeout")  # a hung process may ignore SIGTERM (or be stopped): no grace
            ready, _, _ = select.select([self.reports], [], [], 1.0)
            if ready:
                line = self.reports.readline()
                if not line:  # the trial process closed its end: it has ended
                    self.proc.wait()
                    return None
                decision = self.decide_epoch(json.loads(line))
                if decision == "lost":
                    return self._end("lost")
                try:
                    self.decide.write(decision + "\n")
                except BrokenPipeError:
                    pass
            elif self.proc.poll() is not None:
                return None

    def _rank_failed(self) -> bool:
        """A sibling rank failed (crashed, was killed, ran out of memory) while rank 0 runs: rank 0 and the
        others would wait for it in their next collective, maybe for ever (NCCL), so all end. Rank 0 gets
        RANK_GRACE_S to end by itself first: gloo tells it at once, and then its run records why."""
        if not self.siblings or self.stopping:
            return False
        if self.rank_failure is None:
            self.rank_failure, self.rank_failed_at = self._failed_sibling(), time.time()
        return self.rank_failure is not None and time.time() - self.rank_failed_at >= RANK_GRACE_S

    def _failed_sibling(self) -> tuple[int, int] | None:
        """(rank, exit code) of the first rank other than 0 that ended on its own: crashed, killed, out of
        memory, or failed of a peer that did (gloo tells at once), rather than with its trial."""
        if self.stopping:
            return None
        ended = ((k, p.poll()) for k, p in enumerate(self.siblings, 1) if k not in self.killed_running)
        return next(((k, rc) for k, rc in ended if rc is not None and rc not in SIBLING_ENDS), None)

    def _ranks_error(self, rc: int, killed_by_worker: bool) -> str:
        """Which ranks failed. Which one failed first is not known when several did (each tells the others at
        once): one that a signal or running out of memory ended is the cause; else every rank that failed is
        named. Rank 0 is not, when the worker killed it because a sibling failed."""
        failed = ([] if killed_by_worker else [(0, rc)]) + ([self.rank_failure] if self.rank_failure else [])
        causes = [(k, code) for k, code in failed if code < 0 or code == OOM_EXIT]
        return "; ".join(self.rank_story(k, code) for k, code in causes or failed)

    def rank_story(self, k: int, code: int) -> str:
        """How rank k ended, for the trial's error: its signal, or its exit code and the last line it wrote."""
        if code < 0:
            return f"rank {k} of {self.placement.ranks} was killed by {signal_name(-code)}"
        tail = last_line(self.rank_log(k) if k else self.logf)
        return f"rank {k} of {self.placement.ranks} failed (exit {code}){': ' + tail if tail else ''}"

    def terminate(self) -> None:
        """SIGTERM to every rank (Ctrl-C or SIGTERM to the sweep): each ends its run KILLED, resumable."""
        self.stopping = True
        for p in [self.proc, *self.siblings]:
            try:
                if p is not None and p.poll() is None:
                    os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _end(self, why: str) -> str:
        self.killed_running = {k for k, p in enumerate([self.proc, *self.siblings]) if p.poll() is None}
        for p in [self.proc, *self.siblings]:
            p.kill()
        for p in [self.proc, *self.siblings]:
            p.wait()
        return why

    def _reap_siblings(self) -> None:
        """After rank 0 ended: the other ranks end with it, by themselves; any still running after a few seconds
        (in a collective that will never complete) is killed. Their lifelines close only then: a rank that
        loses its lifeline exits at once, as ORPHANED_EXIT, whatever it was doing."""
        deadline = time.time() + RANK_GRACE_S
        for p in self.siblings:
            while p.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            if p.poll() is None:
                p.kill()
                p.wait()
        if self.meeting:  # every rank has ended: nothing meets in it again (torch's FileStore may leave it)
            Path(self.meeting).unlink(missing_ok=True)
        self.close(lifelines=True)

    def close(self, lifelines: bool = False) -> None:
        """Rank 0's pipes; with `lifelines`, the other ranks' too (they then exit)."""
        for f in (getattr(self, "reports", None), getattr(self, "decide", None)):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        if lifelines:
            for fd in self.lifelines:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.lifelines = []

    def _lost(self, frozen, seconds: float) -> Outcome:
        state = self._frozen().state.name
        end_orphan_run(
            self.cfg, trial_run_id(self.cfg, frozen), f"superseded: another process ended it ({state})", "KILLED"
        )
        error = f"another process ended this trial meanwhile ({state})"
        return Outcome(frozen.number, "LOST", None, dict(frozen.params), seconds, error=error)

    def _complete(self, s: dict, frozen, seconds: float) -> Outcome:
        """A trial that trained to its end: its measures onto the trial, its value(s) told."""
        for key, value in {"mlflow_run_id": s["run_id"], **recorded_attrs(s)}.items():
            set_own_attr(self.trial, key, value)
        if s.get("train_examples") is not None:  # what the trial cost: examples x epochs (multi-fidelity compute)
            set_own_attr(self.trial, "train_examples", s["train_examples"])
            set_own_attr(self.trial, "examples_seen", s["train_examples"] * s.get("epochs_trained", 1))
        measured = summary_measures(s)
        values = values_to_tell(self.cfg, measured)
        set_constraints(self.trial, self.cfg, measured)
        params, n = dict(frozen.params), frozen.number
        if values is None:
            missing = [o.name for o in objectives_of(self.cfg) if measured.get(o.name) is None]
            error = f"its run recorded no {', '.join(missing)}; rerun it with this version of bertnli"
            set_own_attr(self.trial, "error", error)
            self._tell(state=states().FAIL)
            return Outcome(n, "FAIL", None, params, seconds, error=error)
        if not self._tell(values=values if len(values) > 1 else values[0]):
            return self._lost(frozen, seconds)
        settle(self.cfg, self.study, frozen, s["run_id"], keep_best=True)
        return Outcome(n, "COMPLETE", s["value"], params, seconds, s["test_acc"], s["train_seconds"])

    def finish(self, ended: str | None, seconds: float, interrupted: bool, log=print) -> Outcome:
        """Tell Optuna how the trial ended, and make its MLflow run agree."""
        S = states()
        self.rank_failure = self.rank_failure or self._failed_sibling()
        self._reap_siblings()
        rc, frozen = self.proc.returncode, self._frozen()
        params, n = dict(frozen.params), self.trial.number
        set_own_attr(self.trial, "trial_wall_seconds", seconds)
        if ended == "lost":
            return self._lost(frozen, seconds)
        summary = self.out / "trial.json"
        if rc == 0 and summary.is_file():
            return self._complete(json.loads(summary.read_text()), frozen, seconds)
        last = max(frozen.intermediate_values.items(), default=(0, None))[1]
        if rc in (PRUNED_EXIT, DIVERGED_EXIT):
            if rc == DIVERGED_EXIT:  # the configuration diverges: told to the sampler (PRUNED), never retried
                set_own_attr(self.trial, "diverged", True)
            if not self._tell(state=S.PRUNED):
                return self._lost(frozen, seconds)
            settle(self.cfg, self.study, frozen, trial_run_id(self.cfg, frozen), keep_best=False)
            return Outcome(n, "PRUNED", last, params, seconds, error="diverged" if rc == DIVERGED_EXIT else "")
        if ended == "timeout":
            error = f"timed out after {self.cfg.trial_timeout:g} s (--trial-timeout)"
            set_own_attr(self.trial, "timed_out", True)
        elif interrupted or rc == INTERRUPTED_EXIT:
            error = "interrupted"
            set_own_attr(self.trial, "interrupted", True)
        elif OOM_EXIT in (rc, self.rank_failure and self.rank_failure[1]) and self.placement.shared:
            error = "out of GPU memory beside other trials; retried with the GPU to itself"  # not the configuration's
            set_own_attr(self.trial, "oom_beside_others", True)
            set_own_attr(self.trial, "gpu_alone", True)  # carried by the retry
        elif self.siblings and (self.rank_failure or rc < 0):  # else rank 0's own error, as in a one-rank trial
            error = self._ranks_error(rc, killed_by_worker=0 in self.killed_running) + "; its siblings were ended"
            tag_run(self.cfg, trial_run_id(self.cfg, frozen), "bertnli.rank_failure", error)  # rank 0 may have ended it
        else:
            error = last_line(self.logf) or f"exit {rc}"
        set_own_attr(self.trial, "error", error)
        if not self._tell(state=S.FAIL):
            return self._lost(frozen, seconds)
        end_orphan_run(
            self.cfg, trial_run_id(self.cfg, frozen), error, "KILLED" if error == "interrupted" else "FAILED"
        )
        retry(self.study, self._frozen(), self.cfg, log, always=error == "interrupted")
        counted = not self.trial.user_attrs.get("oom_beside_others")
        return Outcome(n, "FAIL", None, params, seconds, error=f"{error} ({self.logf})", counted=counted)

    def never_started(self, lost: bool, log=print) -> Outcome:
        """Asked, but no process was started for it: another process failed it meanwhile (`lost`), or the sweep
        stopped while it waited for a GPU to itself (failed as interrupted, queued again, not counted)."""
        params, n = dict(self._frozen().params), self.trial.number
        if lost:
            return Outcome(n, "LOST", None, params, 0.0, error="another process ended this trial meanwhile")
        why = "interrupted before it started"
        set_own_attr(self.trial, "interrupted", True)
        set_own_attr(self.trial, "error", why)
        if self._tell(state=states().FAIL):  # else a reaper failed it and queued it again
            retry(self.study, self._frozen(), self.cfg, log, always=True)
        return Outcome(n, "FAIL", None, params, 0.0, error=why, counted=False)

    def abandon(self, why: str) -> None:
        """This worker crashed: end the trial's processes and mark the trial and its run FAILED."""
        for p in [self.proc, *self.siblings]:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        set_own_attr(self.trial, "error", why)
        self._tell(state=states().FAIL)
        end_orphan_run(self.cfg, trial_run_id(self.cfg, self._frozen()), why)
        if self.meeting:
            Path(self.meeting).unlink(missing_ok=True)
