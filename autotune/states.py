"""The states things end in — one home for each vocabulary, shared by the domain and the store
(this module imports nothing): how a trial ended (:class:`Status`), where a queued job is
(:class:`JobState`), what a daemon worker is doing (:class:`WorkerState`)."""
from __future__ import annotations

import enum


class _Named(str, enum.Enum):
    def __str__(self) -> str:
        return self.value


class Status(_Named):
    """How a trial ended. ``ok``: measured; ``pruned``: abandoned early as hopeless (partial figures
    kept); ``invalid``: a plugin rule forbids the combination (never launched); the rest are failures."""

    OK = "ok"
    PRUNED = "pruned"
    INVALID = "invalid"
    ERROR = "error"
    OOM = "oom"
    CRASH = "crash"
    TIMEOUT = "timeout"

    @property
    def failed(self) -> bool:
        return self in FAILURES


FAILURES = frozenset({Status.ERROR, Status.OOM, Status.CRASH, Status.TIMEOUT})


class JobState(_Named):
    """queued -> running -> done | failed | cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: the states in which a job still has work
OPEN_JOB_STATES = (JobState.QUEUED.value, JobState.RUNNING.value)


class WorkerState(_Named):
    IDLE = "idle"
    RUNNING = "running"
    STOPPED = "stopped"
