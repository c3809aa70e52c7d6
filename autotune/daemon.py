"""The tuning daemon: claim jobs this hardware can run, work off their trials, heartbeat.

Several workers (processes on one host or many) share a job's Optuna study in the database: a
trial is reserved under the job's row lock, so none is run twice and the plan is never exceeded.
Each running trial heartbeats through Optuna's RDB heartbeat; a trial whose worker died is failed
after the grace period and retried by whichever worker notices. SIGTERM abandons the current trial
(it is retried elsewhere) and exits; SIGINT finishes it first (a second SIGINT abandons).

With a team compile cache, the worker that records a job's end keeps what that job deferred or stopped
at its compile cap (:func:`autotune.backfill.pending`) and, whenever the queue has nothing for it,
compiles one of them into the team cache (:mod:`autotune.backfill`, at idle priority), then looks at the
queue again: the team's next search of that model loads it rather than compiles it. The job's study
names that worker (:data:`autotune.jobqueue.COMPILES_BY`) until none is left: when it stops first (a
restart, a kill -9), an idle worker of the same hardware adopts what is left."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

import random

from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import SQLAlchemyError

from . import jobqueue
from . import study as protocol
from .errors import AutotuneError, NoFeasibleRecipe, StoreError
from .store import queries, queue, writes
from .states import JobState, Status, WorkerState

log = logging.getLogger("autotune.daemon")
#: what a database outage raises: ours, SQLAlchemy's, and Optuna's storage (which wraps commit errors).
#: A trial in flight when it happens is left running; its heartbeat stops and, after the grace
#: period, whichever worker reaches the database first fails it and queues it again. (Optuna never
#: counts a trial that has not beaten once as stale, so a trial beats the moment it is reserved, and
#: the worker that reserved it settles it itself once the database is back.)
DATABASE_ERRORS = (StoreError, SQLAlchemyError, StorageInternalError)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class Abandon(BaseException):
    """Raised in the main thread by SIGTERM (or a second SIGINT) to abandon the current trial."""


@dataclass
class DaemonOptions:
    poll_s: float = 5.0
    heartbeat_s: int = 10
    grace_s: int = 60
    exit_when_idle: bool = False
    max_backoff_s: float = 60.0


#: how often an idle worker with nothing to compile looks for compiles a stopped worker kept (seconds)
ADOPT_EVERY_S = 60.0
#: how far back it looks: jobs that ended within this many seconds
ADOPT_WITHIN_S = 7 * 24 * 3600.0


class Worker:
    def __init__(self, store, target, optimizations, options: DaemonOptions):
        self.store, self.target, self.optimizations, self.opt = store, target, optimizations, options
        self.stopping = False
        self.worker_id: int | None = None
        #: trials this worker reserved whose end it has not told the study yet: (study, storage, trial id)
        self.unsettled: list[tuple[object, object, int]] = []
        #: compiles the jobs whose end this worker recorded could not afford: (job id, measurer, Pending)
        self.backlog: list[tuple[int, object, object]] = []
        self._adopt_at = 0.0  # when an idle worker next looks for kept compiles whose worker stopped

    # -- signals -------------------------------------------------------------------------
    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_int)

    def _on_term(self, *_):
        self.stopping = True
        raise Abandon()

    def _on_int(self, *_):
        if self.stopping:
            raise Abandon()
        self.stopping = True
        log.info("stopping after the current trial (Ctrl-C again to abandon it)")

    @property
    def stale_s(self) -> float:
        """How long without a beat before another worker takes this one for stopped: well past its
        heartbeat, its polls and its backoff through a database outage."""
        return max(6 * self.opt.heartbeat_s, 3 * self.opt.poll_s, self.opt.max_backoff_s, 60.0)

    # -- bookkeeping ---------------------------------------------------------------------
    def register(self) -> None:
        host, pid = jobqueue.host_id()
        self.worker_id = queue.add_worker(self.store, host=host, pid=pid, hardware_key=self.target.hardware_key)

    def beat(self, **fields) -> None:
        queue.beat_worker(self.store, self.worker_id, **fields)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        self.register()
        backoff = 1.0
        try:
            while not self.stopping:
                try:
                    self.settle()
                    job_id = jobqueue.claim(self.store, self.target, self.worker_id)
                    backoff = 1.0
                    if job_id is None:
                        self.beat(state=WorkerState.IDLE.value, job_id=None, current=None)
                        if not self.backlog and time.monotonic() >= self._adopt_at:
                            self._adopt_at = time.monotonic() + ADOPT_EVERY_S
                            self.adopt_compiles()
                        if self.backlog and not jobqueue.others_running_here(self.store, self.worker_id, self.stale_s):
                            self.compile_one()  # one compile for the team, then the queue again
                            continue
                        if self.opt.exit_when_idle and not self.backlog:
                            self.adopt_compiles()  # a last look, whenever the last one was
                            if not self.backlog:
                                break
                            continue
                        time.sleep(self.opt.poll_s)
                        continue
                    if self.work_on(job_id) == 0:  # others hold the remaining trials: look again later
                        time.sleep(self.opt.poll_s)
                except DATABASE_ERRORS as exc:  # the database went away: retry with backoff and jitter
                    wait = backoff * random.uniform(0.5, 1.5)
                    log.warning("database unreachable, retrying in %.1f s: %s", wait, one_line(exc))
                    time.sleep(wait)
                    backoff = min(backoff * 2, self.opt.max_backoff_s)
        except Abandon:
            log.info("abandoned; exiting")
        finally:
            try:
                self.beat(state=WorkerState.STOPPED.value, job_id=None, current=None)
            except (AutotuneError, *DATABASE_ERRORS):
                pass

    def work_on(self, job_id: int) -> int:
        """Run trials of one job until its plan is spent; returns how many this worker ran."""
        from .tuner import Search
        from .spec import SearchSpec

        job = queue.get_job(self.store, job_id)
        spec = SearchSpec.from_dict(job.search_spec, self.target)
        spec.study_name = job.study_name
        storage = self.store.optuna_storage(self.opt.heartbeat_s, self.opt.grace_s)
        # under the job lock: the first worker creates the rows and measures the baseline, the rest reuse them
        with self.beating(), queue.locked_job(self.store, job_id):  # beating while it waits for the lock too
            search = Search(spec, self.store, self.optimizations)
            study = search.open_study(storage)
            deadline = jobqueue.job_deadline(storage, study.study_name, spec.timeout)  # its clock runs from here
            search.baseline()
        ran = 0
        if deadline is not None:  # no first call runs past the job's deadline either (see CompileCaps.plan)
            search.measurer.caps.deadline = time.monotonic() + deadline - time.time()

        def time_up() -> bool:
            """No trial starts unless a typical one of this worker's ends before the job's deadline."""
            return deadline is not None and time.time() + search.measurer.typical_trial_s() >= deadline

        def reserve(study):  # under the job lock: the trial beats at once, and this worker keeps it in mind
            trial = search.ask(study)
            tid = protocol.trial_id(storage, study, trial.number)
            self.unsettled.append((study, storage, tid))
            storage.record_heartbeat(tid)
            return trial

        while not self.stopping:
            trial, state = jobqueue.reserve_trial(self.store, job_id, study, storage, reserve, time_up)
            if trial is None:
                if state in queue.OPEN:
                    self.finish(job_id, search, study, time_up)
                return ran
            if ran == 0:
                log.info("job %s: %s (study %s)", job_id, spec.source.name, search.study_name)
            self.one_trial(search, study, storage, trial, job_id)
            ran += 1
        return ran

    def one_trial(self, search, study, storage, trial, job_id: int) -> None:
        trial_id = protocol.trial_id(storage, study, trial.number)
        started = time.monotonic()
        try:
            with self.beating(storage, trial_id):
                record = search.step(study, lambda text: self.beat(current=text), trial=trial)
            self.unsettled.remove((study, storage, trial_id))
        except Abandon:
            protocol.retry(study, storage, trial_id)
            self.unsettled.remove((study, storage, trial_id))
            log.info("job %s trial %s abandoned; re-queued for another worker", job_id, trial.number)
            raise
        queue.count_worker_trial(self.store, self.worker_id)
        log.info("job %s trial %s: %s%s in %.0f s: %s", job_id, trial.number, record.status,
                 " (reused)" if record.reused else "", time.monotonic() - started,
                 f"{record.figures.get('tpot_ms_p50', 0):.2f} ms/token" if record.status == Status.OK else record.error)

    def settle(self) -> None:
        """Fail and queue again the trials this worker reserved but could not tell the study how they
        ended (the database went away meanwhile): no trial is left running for ever."""
        while self.unsettled:
            study, storage, trial_id = self.unsettled[0]
            if protocol.settle(study, storage, trial_id):
                log.info("trial %s, cut off by the database outage: queued again", storage.get_trial(trial_id).number)
            self.unsettled.pop(0)

    @contextlib.contextmanager
    def beating(self, storage=None, trial_id: int | None = None):
        """This worker's row (and the trial ``trial_id``'s Optuna heartbeat) beats every ``heartbeat_s``
        for the duration of the block: a long baseline, trial or compile is no stopped worker."""
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(storage, trial_id, stop), daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()

    def _heartbeat(self, storage, trial_id: int | None, stop: threading.Event) -> None:
        while True:
            try:
                if trial_id is not None:
                    storage.record_heartbeat(trial_id)
                queue.beat_worker(self.store, self.worker_id)
            except Exception as exc:  # a missed beat is retried at the next interval
                log.warning("heartbeat failed: %s", one_line(exc))
            if stop.wait(self.opt.heartbeat_s):
                return

    def finish(self, job_id: int, search, study, time_up=lambda: False) -> None:
        """The plan is spent (or the job's ``--timeout``, ``time_up()``): when no trial is still running,
        record the result once."""

        def outcome():
            done, running = protocol.counted_trials(study)
            if running:
                return None
            late = f"its --timeout of {search.spec.timeout:g} s ran out after {done} of {search.spec.trials} trials" \
                if done < search.spec.trials and time_up() else ""
            try:
                result = search.result(study)
            except NoFeasibleRecipe as exc:
                return JobState.FAILED, None, f"{late}: {exc}" if late else str(exc)
            return JobState.DONE, result.best[0].measurement_id, late or f"{done} trials"

        state = queue.finish_job(self.store, job_id, outcome)
        if state is not None:
            log.info("job %s %s", job_id, state)
            self.keep_compiles(job_id, search, study)

    # -- the team's compiles, when idle (autotune.backfill) ----------------------------------
    def keep_compiles(self, job_id: int, search, study) -> None:
        """What the job deferred or stopped at its compile cap, for :meth:`compile_one` (with a team
        compile cache; only the worker that recorded the job's end keeps them: each is compiled once)."""
        from . import backfill

        m = search.measurer
        items = backfill.pending(m, search.study_records(study), backfill.default_budget(m))
        jobqueue.set_compiles_by(self.store.optuna_storage(), study.study_name,
                                 self.worker_id if items else jobqueue.COMPILES_DONE)
        if items:
            log.info("job %s: %d compile%s it could not afford kept for when the queue is idle, for %s", job_id,
                     len(items), "s" * (len(items) != 1), m.compile_share_display())
        self.backlog += [(job_id, m, item) for item in items]

    def adopt_compiles(self) -> None:
        """Take over the kept compiles of jobs of this hardware whose keeper stopped (see :meth:`keep_compiles`):
        under the job's lock, so that one worker adopts them; each is compiled only while still wanted
        (:func:`autotune.backfill.wanted`)."""
        import datetime as dt

        from . import backfill
        from .spec import SearchSpec
        from .store.tables import utcnow
        from .tuner import Search

        storage = self.store.optuna_storage()
        since = utcnow() - dt.timedelta(seconds=ADOPT_WITHIN_S)
        for job_id, study_name in queue.ended_jobs(self.store, lambda hw: jobqueue.hardware_matches(hw, self.target),
                                                   since):
            try:
                keeper = jobqueue.compiles_by(storage, study_name)
            except KeyError:  # a job that ended before its study began
                continue
            if not isinstance(keeper, int) or keeper == self.worker_id or \
                    not jobqueue.worker_gone(self.store, keeper, self.stale_s):
                continue
            if not jobqueue.pass_compiles(self.store, job_id, study_name, keeper, self.worker_id):
                continue  # another worker adopted them meanwhile
            job = queue.get_job(self.store, job_id)
            spec = SearchSpec.from_dict(job.search_spec, self.target)
            spec.study_name, spec.remeasure = job.study_name, False  # the job's baseline as it stands
            with self.beating():
                search = Search(spec, self.store, self.optimizations)
                study = search.open_study(storage)
                search.baseline()
                m = search.measurer
                items = backfill.pending(m, search.study_records(study), backfill.default_budget(m))
            if not items:
                jobqueue.pass_compiles(self.store, job_id, study_name, self.worker_id, jobqueue.COMPILES_DONE)
            log.info("job %s: adopted %d compile%s for the team, kept by worker %s, which stopped", job_id,
                     len(items), "s" * (len(items) != 1), keeper)
            self.backlog += [(job_id, m, item) for item in items]
            if items:
                return  # one job's at a time: the queue is looked at again between compiles

    def compile_one(self) -> None:
        """The first kept compile, into the team cache, within its job's time (its ``--timeout``, else the
        background's default); skipped when a host of the team has compiled it meanwhile or a compile of it
        for the team failed under that limit. Taken off the list once done (a database outage leaves it)."""
        from . import backfill

        job_id, m, item = self.backlog[0]
        keeper = jobqueue.compiles_by(self.store.optuna_storage(), m.study_name)
        if keeper != self.worker_id:  # taken for stopped (a long silence) and adopted: the adopter has them all
            log.info("job %s: its compiles for the team are worker %s's now", job_id, keeper)
            self.backlog = [b for b in self.backlog if b[0] != job_id]
            return
        budget = backfill.default_budget(m)
        if backfill.wanted(m, item, budget):
            self.beat(state=WorkerState.RUNNING.value, job_id=None, current=f"compiling for job {job_id}'s team "
                                                                             f"compile cache ({item.why})")
            with self.beating():
                backfill.compile_pending(m, [item], budget,
                                         lambda text: log.info("job %s, for the team: %s", job_id, text))
            self.beat(state=WorkerState.IDLE.value, job_id=None, current=None)
        self.backlog.pop(0)
        if not any(j == job_id for j, _, _ in self.backlog):
            jobqueue.pass_compiles(self.store, job_id, m.study_name, self.worker_id, jobqueue.COMPILES_DONE)


def reverify(store, target, optimizations) -> list[tuple[int, str]]:
    """Re-measure the chosen recipes of this hardware class that were measured with other library
    versions, through the regression gate (:func:`autotune.budget.regression_checks` at
    :data:`~autotune.budget.DEFAULT_FAIL_UNDER`); mark them stale when they fail or lose speed."""
    from .budget import DEFAULT_FAIL_UNDER, parse_budget, regression_checks
    from .evaluate import evaluate
    from .figures import Figures
    from .sources import resolve_model
    from .workload import Workload

    out = []
    for row in queries.chosen_with_other_versions(store, target.hardware_key, target.versions_key):
        ev = evaluate(resolve_model(row.model.name, row.model.config_only), row.recipe.recipe,
                      Workload.from_dict(row.workload.definition), target, optimizations)
        checks = regression_checks(Figures.from_dict(row.figures), ev.figures, DEFAULT_FAIL_UNDER,
                                   parse_budget(queries.study_budget(store, row.study) or "")) if ev.ok else []
        stale = not ev.ok or not all(c.ok for c in checks)
        if stale:
            writes.mark_stale(store, row.id)
        verdict = "stale" if stale else "still good"
        detail = "; ".join(c.line() for c in checks) if ev.ok else f"({ev.error})"
        out.append((row.id, f"{verdict}: {ev.status} {detail}"))
    return out


def _worker_main(url: str, options: DaemonOptions, device: str | None) -> None:
    import logging as _logging

    from .registry import get_optimizations
    from .store import Store
    from .target import current_target

    from .logs import quiet_libraries

    quiet_libraries()
    _logging.basicConfig(level=_logging.WARNING, format="%(asctime)s %(process)d %(message)s")
    log.setLevel(_logging.INFO)
    worker = Worker(Store(url), current_target(device), get_optimizations(), options)
    worker.install_signals()
    worker.run()


def run_workers(url: str, n: int, options: DaemonOptions, device: str | None, reverify_first: bool) -> None:
    """Run ``n`` workers: in this process for one, else as spawned processes that get our signals."""
    import multiprocessing as mp

    from .registry import get_optimizations
    from .store import Store
    from .target import current_target

    if reverify_first:
        for mid, verdict in reverify(Store(url), current_target(device), get_optimizations()):
            log.info("recipe %s: %s", mid, verdict)
    if n == 1:
        _worker_main(url, options, device)
        return
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(url, options, device)) for _ in range(n)]
    for p in procs:
        p.start()

    def forward(signum, _frame):
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.join()
