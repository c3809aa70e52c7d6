"""The job queue's rows: jobs and the workers that run them.

Claims and trial reservations happen under a lock on the job's row: ``SELECT ... FOR UPDATE SKIP
LOCKED`` (claim) and ``FOR UPDATE`` (reserve) on PostgreSQL; on SQLite, which has no row locks, an
exclusive file lock beside the database file — safe for several workers on one host only."""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
from pathlib import Path
from typing import Callable

from sqlalchemy import select
from sqlalchemy.engine import make_url

from ..errors import NotFoundError
from . import tables as t
from ..states import JobState, WorkerState
from .tables import utcnow

OPEN = t.Job.OPEN


def is_sqlite(store) -> bool:
    return make_url(store.url).get_backend_name() == "sqlite"


@contextlib.contextmanager
def _sqlite_lock(store):
    """SQLite has no row locks: serialise queue operations with an exclusive lock on a file beside
    the database. Correct for workers on one host; SQLite is not for several hosts."""
    db = make_url(store.url).database or ":memory:"
    path = Path(db.removeprefix("file:").split("?")[0] + ".queue-lock")
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _guard(store):
    return _sqlite_lock(store) if is_sqlite(store) else contextlib.nullcontext()


def add_job(store, *, model: str, search_spec: dict, hardware: dict, study_name: str | None, trials: int,
            submitted_from: str) -> int:
    with store.session() as s:
        job = t.Job(model=model, search_spec=search_spec, hardware=hardware, state=JobState.QUEUED.value, study_name="",
                    trials_planned=trials, submitted_from=submitted_from)
        s.add(job)
        s.flush()
        job.study_name = study_name or f"job-{job.id}-{model}"
        return job.id


def cancel_job(store, job_id: int) -> str:
    with store.session() as s:
        job = s.get(t.Job, job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id} in {store.display_url}")
        if job.state not in OPEN:
            return job.state
        job.state, job.message = JobState.CANCELLED.value, "cancelled by user"
        return JobState.CANCELLED.value


def get_job(store, job_id: int) -> t.Job:
    with store.session() as s:
        job = s.get(t.Job, job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id} in {store.display_url}")
        return job


@contextlib.contextmanager
def locked_job(store, job_id: int):
    """``(session, job)`` holding the job's row lock for the duration of the block."""
    with _guard(store), store.session() as s:
        q = select(t.Job).where(t.Job.id == job_id)
        if not is_sqlite(store):
            q = q.with_for_update()
        yield s, s.scalar(q)


def claim_job(store, can_run: Callable[[dict], bool], worker_id: int) -> int | None:
    """The oldest open job whose hardware class ``can_run`` accepts, marked running; or None."""
    with _guard(store), store.session() as s:
        q = select(t.Job).where(t.Job.state.in_(OPEN)).order_by(t.Job.id)
        if not is_sqlite(store):
            q = q.with_for_update(skip_locked=True)
        for job in s.scalars(q):
            if can_run(job.hardware):
                job.state = JobState.RUNNING.value
                worker = s.get(t.Worker, worker_id)
                worker.job_id, worker.state = job.id, WorkerState.RUNNING.value
                return job.id
    return None


def jobs_with_workers(store) -> list[tuple[t.Job, list[t.Worker], t.Measurement | None]]:
    with store.session() as s:
        out = []
        for job in s.scalars(select(t.Job).order_by(t.Job.id)):
            workers = s.scalars(select(t.Worker).where(t.Worker.job_id == job.id, t.Worker.state == WorkerState.RUNNING.value)).all()
            best = s.get(t.Measurement, job.best_measurement_id) if job.best_measurement_id else None
            out.append((job, list(workers), best))
        return out


def add_worker(store, *, host: str, pid: int, hardware_key: str) -> int:
    with store.session() as s:
        w = t.Worker(host=host, pid=pid, hardware_key=hardware_key, state=WorkerState.IDLE.value, trials_done=0)
        s.add(w)
        s.flush()
        return w.id


def beat_worker(store, worker_id: int, **fields) -> None:
    """The worker is alive; optionally update its state, job, current trial text."""
    with store.session() as s:
        w = s.get(t.Worker, worker_id)
        for k, v in fields.items():
            setattr(w, k, v)
        w.heartbeat_at = utcnow()


def running_workers(store, host: str) -> list[tuple[int, int]]:
    """(worker id, pid) of the workers on ``host`` the database says are running (a job's trials, or a
    compile for the team)."""
    with store.session() as s:
        return [(w.id, w.pid) for w in s.scalars(select(t.Worker).where(
            t.Worker.host == host, t.Worker.state == WorkerState.RUNNING.value))]


def worker_row(store, worker_id: int) -> tuple[str, int, str, dt.datetime] | None:
    """(host, pid, state, last heartbeat) of a worker, or None when there is no such row."""
    with store.session() as s:
        w = s.get(t.Worker, worker_id)
        return None if w is None else (w.host, w.pid, w.state, w.heartbeat_at)


def ended_jobs(store, can_run: Callable[[dict], bool], since: dt.datetime) -> list[tuple[int, str]]:
    """(id, study name) of the jobs that ended (done or failed) since ``since`` whose hardware class
    ``can_run`` accepts, newest first."""
    with store.session() as s:
        q = (select(t.Job).where(t.Job.state.in_((JobState.DONE.value, JobState.FAILED.value)),
                                 t.Job.updated_at >= since).order_by(t.Job.id.desc()))
        return [(job.id, job.study_name) for job in s.scalars(q) if can_run(job.hardware)]


def count_worker_trial(store, worker_id: int) -> None:
    with store.session() as s:
        s.get(t.Worker, worker_id).trials_done += 1


def finish_job(store, job_id: int, outcome: Callable[[], tuple[JobState, int | None, str] | None]) -> str | None:
    """Under the job's lock: ``outcome()`` says how the job ended — (state, best measurement id,
    message) — or None while trials still run; the job row records it once. Returns the new state."""
    with locked_job(store, job_id) as (s, job):
        if job is None or job.state not in OPEN:
            return None
        ended = outcome()
        if ended is None:
            return None
        state, best, message = ended
        job.state, job.best_measurement_id, job.message = JobState(state).value, best, message
        return job.state
