"""The worker pool of one `bertnli-exp sweep` process: ask until the study holds exactly N trials.

Running the same command again continues the study until it holds N complete-or-pruned
trials; trials whose worker died are adopted or failed and retried (reaping.py). Any number
of such processes, on any number of hosts, may share one study.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import threading
import time
import traceback
from typing import Any

from bertnli import BertnliError
from bertnli.files import atomic_write
from bertnli.sweep import halving, seeding, warm_start
from bertnli.sweep.checkpoints import prune_checkpoints
from bertnli.sweep.election import parent_run
from bertnli.sweep.launcher import warm_up_for
from bertnli.sweep.parent import finish_parent, link_sources, start_parent_metrics
from bertnli.sweep.reaping import (
    Sightings,
    claim_study_dir,
    owner,
    patiently,
    reap,
    retry,
    retry_history,
    set_own_attr,
    stale_callback,
    states,
    study_dir,
    tell_unless_finished,
)
from bertnli.sweep.rungs import RUNG
from bertnli.sweep.slots import slots_of
from bertnli.sweep.space import SweepConfig, check_runnable, pruning_ticks, spec_to_json
from bertnli.sweep.storage import (
    HEARTBEAT_S,
    default_storage,
    is_outage,
    open_storage,
    open_study,
    study_sampler,
    without_password,
)
from bertnli.sweep.supervisor import Outcome, TrialRun
from bertnli.sweep.warm_start import trained_here
from bertnli.tracking.system_metrics import stop_system_metrics


def done_count(study) -> int:
    S = states()
    return sum(t.state in (S.COMPLETE, S.PRUNED) for t in trained_here(study.get_trials(deepcopy=False)))


class Sweep:
    def __init__(self, cfg: SweepConfig, log=print, progress: bool = True):
        check_runnable(cfg)
        self.slots = slots_of(cfg)  # before the study is made: impossible --gpus settings change nothing
        self.warm_plans = warm_start.plan_all(cfg)  # likewise a warm-start source not found or on other data
        self.imported = 0  # trials this process added from --warm-start sources: the parent's links are due
        self.cfg, self.log, self.progress = cfg, log, progress
        self.storage_url = cfg.storage or default_storage()
        self.storage = open_storage(cfg.storage, cfg.grace_s, stale_callback(cfg, log))
        self.study, self.elector = open_study(cfg, self.storage)
        halving.keep_settings(self.study, cfg)
        self.lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self.stop = threading.Event()
        self.interrupted = threading.Event()  # Ctrl-C / SIGTERM: running trials end KILLED and are resumed on rerun
        self.deadline = time.time() + cfg.timeout if cfg.timeout else None
        self.runs: dict[int, TrialRun] = {}
        self.failed_in_a_row: list[Outcome] = []
        self.crashed: list[str] = []
        self.ticks = pruning_ticks(cfg)
        self.rungs = halving.rungs_of(cfg)  # None: one fidelity (every trial on the whole train split)
        self.target = self.rungs.total if self.rungs else cfg.trials
        self.next_reap = 0.0
        self.seen = Sightings()  # heartbeats this process has watched, on its own clock (reaping.Sightings)

    def seed_study(self) -> None:
        """Warm-start trials, known configurations, then the cells (seeding.py): by the process that publishes the
        parent run, before it does."""
        self.imported += seeding.add_warm_start(self.study, self.warm_plans, self.log)
        seeding.queue_known(self.study, self.cfg, self.log)  # run first
        seeding.queue_cells(self.study, self.cfg, self.rungs is not None)

    def join(self) -> str:
        """This process's place in the sweep: its study folder, stale trials reaped, and the parent run
        (elected, or adopted once its maker has queued the cells)."""
        claim_study_dir(self.cfg)  # before anything is adopted from its trial folders
        self._reap(self.study, force=True)
        parent = parent_run(
            self.study, self.storage, self.cfg, self.storage_url, self.elector, on_elected=self.seed_study
        )
        self.imported += seeding.add_warm_start(self.study, self.warm_plans, self.log)  # a resume adding a source
        seeding.queue_known(self.study, self.cfg, self.log, self.complete(self.study))  # or --enqueue entries
        if self.imported:
            link_sources(self.cfg, parent, self.study)
        return parent

    def _counts(self, study) -> tuple[int, int]:
        S = states()
        trials = trained_here(study.get_trials(deepcopy=False))
        return sum(t.state in (S.COMPLETE, S.PRUNED) for t in trials), sum(t.state == S.RUNNING for t in trials)

    def complete(self, study) -> bool:
        """The study holds every trial it should: N configurations done (or every rung ended)."""
        if self.rungs:
            return halving.plan(study.get_trials(deepcopy=False), self.rungs, self.cfg.max_retries).action == "done"
        return done_count(study) >= self.cfg.trials

    def _next(self, study) -> str:
        """ "ask", "wait" (others run trials that may still fail, or a rung is not finished) or "done"."""
        if self.rungs:
            trials = study.get_trials(deepcopy=False)
            decision = halving.plan(trials, self.rungs, self.cfg.max_retries)
            for params in decision.enqueue:  # a promotion; two processes may both queue it: `excess` keeps one
                study.enqueue_trial(params)
            for number in decision.retries:  # a promoted configuration that failed there: resume its last attempt
                retry(study, trials[number], self.cfg, self.log, always=True, by_plan=True)
            return decision.action
        done, running = self._counts(study)
        if done + running < self.cfg.trials:
            return "ask"
        return "done" if done >= self.cfg.trials or not running else "wait"

    def _reap(self, study, force: bool = False) -> None:
        if not (force or time.time() >= self.next_reap):
            return
        self.next_reap = time.time() + max(5.0, self.cfg.grace_s / 4)
        try:
            reap(study, self.storage, self.cfg, self.seen, self.log)
        except Exception as e:
            from mlflow.exceptions import MlflowException

            if force or not (is_outage(e) or isinstance(e, MlflowException)):
                raise
            self.log(f"reaping skipped this time: {type(e).__name__} (a store is unreachable)")

    def _step_aside(self, study, trial) -> bool:
        """Exactly N trials, even with workers on many hosts asking at the same moment.

        Checked after `ask()`: a worker that then sees more than N running-or-done trials
        withdraws its own (FAIL, marked `stepped_aside`, its queued configuration put back).
        Of two racing workers, the later to check always sees the other, so both never stay;
        both may step aside, and then the loop simply asks again.
        """
        S = states()
        trials = study.get_trials(deepcopy=False)
        if self.rungs:
            if not halving.excess(trials, trial.number, self.rungs, self.cfg.max_retries):
                return False
        elif sum(t.state in (S.COMPLETE, S.PRUNED, S.RUNNING) for t in trained_here(trials)) <= self.cfg.trials:
            return False
        frozen = trials[trial.number]
        set_own_attr(trial, "stepped_aside", True)
        if not patiently(lambda: tell_unless_finished(study, self.storage, trial.number, state=S.FAIL)):
            return True  # a reaper failed it first, and queued it again
        if self.rungs and (halving.rung_of(frozen) > 0 or not halving.is_open(trials, 0, self.rungs)):
            return True  # the plan queues a promotion again if it is still missing; a closed rung takes nothing more
        if "fixed_params" in frozen.system_attrs:  # it came from the queue (a cell or a retry): queue it again
            if retry_history(frozen):
                clean = {k: v for k, v in frozen.user_attrs.items() if k != "stepped_aside"}
                import optuna

                kw = dict(
                    params=frozen.params, distributions=frozen.distributions, system_attrs=dict(frozen.system_attrs)
                )
                study.add_trial(optuna.trial.create_trial(state=S.WAITING, user_attrs=clean, **kw))
            else:
                study.enqueue_trial(frozen.system_attrs["fixed_params"], user_attrs=dict(frozen.user_attrs))
        return True

    def _ask(self, study):
        trial = patiently(study.ask)
        if self._step_aside(study, trial):
            return None
        chosen: dict[str, Any] = {}
        for p in self.cfg.space:  # parents first (space.parse_space): a condition reads what its trial took
            if p.active(chosen):
                chosen[p.name] = p.suggest(trial)
        if self.rungs:
            trial.suggest_int(RUNG, 0, self.rungs.top)  # 0 from the sampler, the promoted rung from the queue
        trial.set_user_attr("worker", owner())
        trial.set_user_attr("heartbeat", time.time())
        return trial

    def _worker(self, parent_run_id: str, bar, done: threading.Event) -> None:
        try:
            self._work(parent_run_id, bar)
        finally:
            done.set()

    def _work(self, parent_run_id: str, bar) -> None:
        import optuna

        # A study object (and so a sampler) of its own: the sampler is reseeded per trial, so it is per thread.
        study = optuna.load_study(
            study_name=self.cfg.study_name,
            storage=self.storage,
            sampler=study_sampler(self.cfg),
            pruner=self.study.pruner,
        )
        try:
            self._loop(study, parent_run_id, bar)
        except BaseException as e:  # noqa: BLE001 - a worker must never die silently
            why = f"sweep worker crashed: {type(e).__name__}: {e}"
            self.crashed.append(why)
            self.stop.set()
            run = self.runs.pop(threading.get_ident(), None)
            if run is not None:
                try:
                    run.abandon(why)
                except Exception:  # noqa: BLE001
                    traceback.print_exc()
            traceback.print_exc()

    def _loop(self, study, parent_run_id: str, bar) -> None:
        while not self.stop.is_set():
            if self.deadline and time.time() > self.deadline:
                return
            with self.slots.take() as placement:  # given back however the trial ends, or if none was asked
                trial = self._next_trial(study)
                if trial == "done":
                    return
                if trial is None:
                    continue
                run = TrialRun(
                    self.cfg, study, self.storage, trial, self.spec_path, parent_run_id, self.ticks, placement
                )
                self.runs[threading.get_ident()] = run  # from here on, a crash of this worker fails the trial
                if not (placement.shared and trial.user_attrs.get("gpu_alone")):
                    self._record(self._run_one(run), bar)
                    continue
            # It ran out of memory beside other trials: its shared slot is given back, and it waits for a GPU
            # to itself, beating meanwhile (it is asked: other hosts must see it alive).
            with self.slots.take(alone=True, beat=run.beat, stop=self.stop, beat_s=HEARTBEAT_S) as placement:
                if placement is None:  # the sweep is stopping, or another process failed the trial meanwhile
                    self._record(run.never_started(lost=not self.stop.is_set(), log=self.log), bar)
                    self.runs.pop(threading.get_ident(), None)
                    continue
                run.placement = placement
                self._record(self._run_one(run), bar)

    def _next_trial(self, study):
        """A trial asked for this worker; None after a moment's wait (others run trials that may still
        fail, or two workers both stepped aside); "done" when the study holds what it should."""
        asked = False
        with self.lock:
            try:
                decision = self._next(study)
                if decision == "done":
                    return "done"
                asked = decision == "ask"
                trial = self._ask(study) if asked else None
            except Exception as e:
                if not is_outage(e):
                    raise
                trial = None  # the storage is away: look again (an orphan it left is reaped later)
        if asked and trial is None:
            time.sleep(random.uniform(0.2, 2.0))  # two that both stepped aside do not collide again
        elif trial is None:
            time.sleep(1.0)
            with self.lock:
                self._reap(study)
        return trial

    def _run_one(self, run: TrialRun) -> Outcome:
        t0 = time.time()
        try:
            run.start()
            ended = run.supervise(time.time())  # --trial-timeout counts from the process, not the forkserver's imports
        except BaseException:
            run.close(lifelines=True)  # the trial's other ranks end with it
            raise
        finally:
            run.close()
        outcome = run.finish(ended, time.time() - t0, self.interrupted.is_set(), self.log)
        self.runs.pop(threading.get_ident(), None)
        return outcome

    def _record(self, outcome: Outcome, bar) -> None:
        with self.lock:
            self.outcomes.append(outcome)
            if outcome.state == "FAIL" and outcome.counted and not self.interrupted.is_set():
                self.failed_in_a_row.append(outcome)
            elif outcome.state in ("COMPLETE", "PRUNED"):
                self.failed_in_a_row = []
            if len(self.failed_in_a_row) >= self.cfg.fail_limit * (self.cfg.max_retries + 1):
                self.stop.set()  # every trial fails: the setup is broken, not the configurations
            bar.update(1 if outcome.state in ("COMPLETE", "PRUNED") else 0)
            prune_checkpoints(self.cfg, self.study.get_trials(deepcopy=False), self.rungs)
        params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in outcome.params.items())
        value = f"dev_acc {outcome.value:.4f}" if outcome.value is not None else ""
        self.log(f"trial {outcome.number:3d} {outcome.state:8} {value:15} {params} ({outcome.seconds:.0f} s)")

    def _write_spec(self) -> None:
        root = study_dir(self.cfg)
        self.spec_path = root / "sweep-spec.json"
        atomic_write(self.spec_path, json.dumps(spec_to_json(self.cfg)))  # a process starting now never reads half

    def _interrupt(self, finished: list[threading.Event]) -> None:
        """Ctrl-C / SIGTERM: each trial process gets SIGTERM (its run ends KILLED), each worker records it.

        Waits on the workers' own events, not Thread.join: in CPython 3.11 a join that a
        KeyboardInterrupt cut short can leave the thread looking finished, and the process
        would exit (killing the trials) before any worker had recorded its trial."""
        with contextlib.suppress(ValueError):  # a second SIGTERM (a scheduler's, then its script's) must not
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # cut short the wait for the trials to record
        self.interrupted.set()
        self.stop.set()
        for run in list(self.runs.values()):
            run.terminate()
        deadline = time.time() + 60
        for done in finished:
            done.wait(timeout=max(0.0, deadline - time.time()))

    def _announce(self, parent: str, done: int) -> None:
        self.log(
            f"study {self.cfg.study_name}: {done}/{self.target} trials done; "
            f"storage {without_password(self.storage_url)}; MLflow parent run {parent}"
        )
        if self.rungs:
            fractions, sizes = (
                ", ".join(f"{f:.3g}" for f in self.rungs.fractions),
                " -> ".join(map(str, self.rungs.sizes)),
            )
            self.log(
                f"multi-fidelity: rungs at {fractions} of the train split, {sizes} configurations "
                f"(eta {self.cfg.eta}, {self.cfg.promotion} promotions), {self.target} trials"
            )

    def _outcome(self, summary: dict[str, Any], status: str, broken: bool) -> None:
        """Warn of a winner below the top rung; raise for a crashed worker or a broken setup."""
        best = summary.get("best")
        if self.rungs and best is not None and status == "FINISHED" and halving.rung_of(best) < self.rungs.top:
            rung = halving.rung_of(best)
            self.log(
                f"warning: no configuration completed the top rung; the best is from rung {rung} "
                f"({self.rungs.fractions[rung]:.3g} of the train split, no test figure)"
            )
        left = summary.get("parent_left_running")
        if left:
            self.log("other processes still run trials of this study: the parent run stays RUNNING until the last ends")
        if self.crashed:
            parent = "" if left else " and the parent run FAILED"
            raise BertnliError(f"{self.crashed[0]}; its trial is marked FAIL{parent}; rerun the same command to resume")
        if broken:
            raise BertnliError(
                f"stopped: the last {len(self.failed_in_a_row)} trials all failed (a broken setup, not "
                f"bad luck); the last said: {self.failed_in_a_row[-1].error}"
            )

    def run(self) -> dict[str, Any]:
        from tqdm import tqdm

        t0 = time.time()
        if not self.complete(self.study):
            warm_up_for(self.cfg.trial_start)
        parent = self.join()
        self._write_spec()
        done = done_count(self.study)
        self._announce(parent, done)
        bar = tqdm(
            total=self.target, initial=min(done, self.target), desc="trials", unit="trial", disable=not self.progress
        )
        finished = [threading.Event() for _ in range(self.cfg.workers or self.slots.count)]
        threads = [threading.Thread(target=self._worker, args=(parent, bar, done), daemon=True) for done in finished]
        status = "FINISHED"
        monitor = start_parent_metrics(self.cfg, parent)
        try:
            for th in threads:
                th.start()
            while not all(done.is_set() for done in finished):
                next(done for done in finished if not done.is_set()).wait(timeout=0.5)
        except KeyboardInterrupt:
            self._interrupt(finished)
            status = "KILLED"
            raise
        finally:
            bar.close()
            stop_system_metrics(monitor)  # before the parent's status is final; also on Ctrl-C / SIGTERM
            broken = self.stop.is_set() and bool(self.failed_in_a_row)
            if status == "FINISHED" and (self.crashed or not self.complete(self.study)):
                status = "FAILED" if self.crashed or broken else "KILLED"
            if status != "FINISHED" and not self.interrupted.is_set():  # dead workers' trials are no work in
                # progress (parent.others_at_work); after SIGTERM there is no time for it
                with contextlib.suppress(Exception):
                    self._reap(self.study, force=True)
            summary = finish_parent(self.study, self.cfg, parent, status, done_count(self.study), self.rungs)
        summary |= {"wall_seconds": time.time() - t0, "target": self.target, "outcomes": self.outcomes}
        self._outcome(summary, status, broken)
        return summary
