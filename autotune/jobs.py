"""The job queue in the tuning database: submit, match hardware, claim, reserve trials, cancel.

Claims and trial reservations happen under a lock on the job's row: ``SELECT ... FOR UPDATE SKIP
LOCKED`` (claim) and ``FOR UPDATE`` (reserve) on PostgreSQL; on SQLite, which has no row locks, an
exclusive file lock beside the database file — safe for several workers on one host only."""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
from pathlib import Path

import optuna
from sqlalchemy import select
from sqlalchemy.engine import make_url

from .budget import parse_budget
from .errors import NotFoundError, UsageError
from .models import resolve_model
from .store import models as m
from .workload import Workload

HARDWARE_HELP = ("this (default: the submitter's hardware), any, cpu, cuda, cuda>=40GiB, or a hardware key "
                 "from `autotune jobs --json`")


def hardware_class(text: str | None, target) -> dict:
    """Parse ``--hardware`` into a matchable dict."""
    text = (text or "this").strip().lower()
    if text == "this":
        return {"kind": "key", "hardware_key": target.hardware_key, "describe": target.describe()}
    if text in ("any", "cpu", "cuda"):
        return {"kind": text, "describe": text}
    match = re.fullmatch(r"cuda\s*>=\s*(\d+(?:\.\d+)?)\s*gib", text)
    if match:
        return {"kind": "cuda", "min_memory_bytes": int(float(match.group(1)) * 2**30),
                "describe": f"CUDA device with >= {match.group(1)} GiB"}
    if re.fullmatch(r"[0-9a-f]{16}", text):
        return {"kind": "key", "hardware_key": text, "describe": f"hardware {text}"}
    raise UsageError(f"--hardware {text!r}: expected {HARDWARE_HELP}")


def hardware_matches(hw: dict, target) -> bool:
    kind = hw.get("kind")
    if kind == "any":
        return True
    if kind == "key":
        return hw.get("hardware_key") == target.hardware_key
    if kind != target.device:
        return False
    return target.memory_bytes >= hw.get("min_memory_bytes", 0)


def spec_to_dict(spec) -> dict:
    return {"model": spec.source.name, "config_only": spec.source.config_only, "workload": spec.workload.to_dict(),
            "budget": spec.budget.text, "objectives": [list(o) for o in spec.objectives], "trials": spec.trials,
            "trial_timeout": spec.trial_timeout, "sampler": spec.sampler, "seed": spec.seed,
            "restrict": spec.restrict, "measure_opts": spec.measure_opts}


def spec_from_dict(d: dict, target):
    from .search import SearchSpec

    return SearchSpec(source=resolve_model(d["model"], config_only=d["config_only"]),
                      workload=Workload.from_dict(d["workload"]), target=target,
                      budget=parse_budget(d["budget"]), objectives=[tuple(o) for o in d["objectives"]],
                      trials=d["trials"], trial_timeout=d["trial_timeout"], sampler=d["sampler"], seed=d["seed"],
                      restrict=d["restrict"], measure_opts=d["measure_opts"])


def submit(store, spec, hardware: dict) -> int:
    """Queue a tuning job; returns its id."""
    store.optuna_storage()  # create Optuna's tables now, not in a race between the first workers
    with store.session() as s:
        job = m.Job(model=spec.source.name, spec=spec_to_dict(spec), hardware=hardware, state="queued",
                    study_name="", trials_planned=spec.trials, submitted_from=socket.gethostname())
        s.add(job)
        s.flush()
        job.study_name = spec.study_name or f"job-{job.id}-{spec.source.name}"
        return job.id


def cancel(store, job_id: int) -> str:
    with store.session() as s:
        job = s.get(m.Job, job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id} in {store.display_url}")
        if job.state not in m.Job.OPEN:
            return job.state
        job.state = "cancelled"
        job.message = "cancelled by user"
        return "cancelled"


def _is_sqlite(store) -> bool:
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


@contextlib.contextmanager
def locked_job(store, job_id: int):
    """A session holding the job's row lock for the duration of the block."""
    guard = _sqlite_lock(store) if _is_sqlite(store) else contextlib.nullcontext()
    with guard, store.session() as s:
        q = select(m.Job).where(m.Job.id == job_id)
        if not _is_sqlite(store):
            q = q.with_for_update()
        yield s, s.scalar(q)


def claim(store, target, worker_id: int) -> int | None:
    """The oldest open job this hardware can run that still has trials to do, or None."""
    guard = _sqlite_lock(store) if _is_sqlite(store) else contextlib.nullcontext()
    with guard, store.session() as s:
        q = select(m.Job).where(m.Job.state.in_(m.Job.OPEN)).order_by(m.Job.id)
        if not _is_sqlite(store):
            q = q.with_for_update(skip_locked=True)
        for job in s.scalars(q):
            if hardware_matches(job.hardware, target):
                job.state = "running"
                worker = s.get(m.Worker, worker_id)
                worker.job_id, worker.state = job.id, "running"
                return job.id
    return None


def counted_trials(study) -> tuple[int, int]:
    """(trials that count toward the plan, trials running now). A measured trial counts once
    finished, whatever its outcome; a trial failed because its worker died does not count (its
    retry does); rule-pruned candidates do not count."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    S = optuna.trial.TrialState
    done = sum(1 for t in trials if t.state == S.COMPLETE or (t.state == S.FAIL and t.number not in retried
                                                              and "measurement_id" in t.user_attrs))
    running = sum(1 for t in trials if t.state == S.RUNNING)
    return done, running


def reserve_trial(store, job_id: int, study, ask):
    """Under the job lock: fail stale trials (retrying them), then ``ask(study)`` for a trial if
    the plan still has room. Returns ``(trial or None, job state)``."""
    with locked_job(store, job_id) as (s, job):
        if job is None or job.state not in m.Job.OPEN:
            return None, (job.state if job else "gone")
        optuna.storages.fail_stale_trials(study)
        done, running = counted_trials(study)
        if done + running >= job.trials_planned:
            return None, job.state
        return ask(study), job.state


def list_jobs(store) -> list[dict]:
    with store.session() as s:
        out = []
        for job in s.scalars(select(m.Job).order_by(m.Job.id)):
            workers = s.scalars(select(m.Worker).where(m.Worker.job_id == job.id, m.Worker.state == "running")).all()
            best = s.get(m.Measurement, job.best_measurement_id) if job.best_measurement_id else None
            out.append({"id": job.id, "model": job.model, "state": job.state, "study": job.study_name,
                        "hardware": job.hardware.get("describe"), "trials_planned": job.trials_planned,
                        "trials_done": _done(store, job), "message": job.message,
                        "best_measurement_id": job.best_measurement_id,
                        "best_tpot_ms_p50": best.tpot_ms_p50 if best else None,
                        "workers": [{"host": w.host, "pid": w.pid, "since": w.started_at.isoformat(timespec="seconds"),
                                     "heartbeat": w.heartbeat_at.isoformat(timespec="seconds"),
                                     "current": w.current} for w in workers],
                        "submitted_from": job.submitted_from,
                        "created_at": job.created_at.isoformat(timespec="seconds")})
        return out


def _done(store, job) -> int:
    try:
        study = optuna.load_study(study_name=job.study_name, storage=store.optuna_storage())
    except KeyError:  # not started yet
        return 0
    return counted_trials(study)[0]


def host_id() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()
