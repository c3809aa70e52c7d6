"""The queue of tuning jobs: hardware classes, submitting, claiming, reserving trials, listing. The
rows and their locks live in :mod:`autotune.store.queue`; the trials' protocol in :mod:`autotune.study`."""
from __future__ import annotations

import os
import re
import socket

import optuna

from .errors import UsageError
from .store import queue
from .study import ASKS_PER_TRIAL, beat_unclaimed, counted_trials

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


def submit(store, spec, hardware: dict) -> int:
    """Queue a tuning job; returns its id."""
    store.optuna_storage()  # create Optuna's tables now, not in a race between the first workers
    return queue.add_job(store, model=spec.source.name, search_spec=spec.to_dict(), hardware=hardware,
                         study_name=spec.study_name, trials=spec.trials, submitted_from=socket.gethostname())


def cancel(store, job_id: int) -> str:
    return queue.cancel_job(store, job_id)


def claim(store, target, worker_id: int) -> int | None:
    """The oldest open job this hardware can run that still has trials to do, or None."""
    return queue.claim_job(store, lambda hw: hardware_matches(hw, target), worker_id)


def worker_gone(store, worker_id: int, stale_s: float) -> bool:
    """Whether worker ``worker_id`` has stopped: its row says so (or is missing), it has not beaten for
    ``stale_s`` seconds (a worker beats through its baselines, trials and compiles: a hung one, a zombie,
    one on a host gone; the hosts' clocks are taken to agree), or its process on this host is gone (a
    kill -9) or is this one (a restarted container's daemon has the pid of the one before)."""
    import datetime as dt

    from .states import WorkerState
    from .store.tables import utcnow
    from .study import alive

    row = queue.worker_row(store, worker_id)
    if row is None or row[2] == WorkerState.STOPPED.value:
        return True
    host, pid, _, heartbeat = row
    if utcnow() - heartbeat > dt.timedelta(seconds=stale_s):
        return True
    return host == host_id()[0] and (not alive(pid) or pid == os.getpid())


#: a study attribute: the worker that keeps the compiles its job could not afford, for the team
#: (:mod:`autotune.daemon`), or :data:`COMPILES_DONE` once none is left
COMPILES_BY = "team_compiles_by"
COMPILES_DONE = "done"


def compiles_by(storage, study_name: str):
    """Who keeps the job's compiles for the team (a worker id, :data:`COMPILES_DONE`, or None: nobody)."""
    return storage.get_study_user_attrs(storage.get_study_id_from_name(study_name)).get(COMPILES_BY)


def set_compiles_by(storage, study_name: str, who) -> None:
    storage.set_study_user_attr(storage.get_study_id_from_name(study_name), COMPILES_BY, who)


def pass_compiles(store, job_id: int, study_name: str, keeper, to) -> bool:
    """Under the job's lock: the job's compiles go from ``keeper`` to ``to`` (a worker id, or
    :data:`COMPILES_DONE`) — only while ``keeper`` still keeps them. Whether they did."""
    storage = store.optuna_storage()
    with queue.locked_job(store, job_id):
        if compiles_by(storage, study_name) != keeper:
            return False
        set_compiles_by(storage, study_name, to)
        return True


def reserve_trial(store, job_id: int, study, storage, ask, time_up=lambda: False):
    """Under the job lock: fail stale trials (retrying them; a reservation cut off before its first
    heartbeat is given one, so it goes stale too), then ``ask(study)`` for a trial if the plan still
    has room and it is not ``time_up()`` (the job's ``--timeout``). Returns ``(trial or None, job state)``."""
    with queue.locked_job(store, job_id) as (s, job):
        if job is None or job.state not in queue.OPEN:
            return None, (job.state if job else "gone")
        beat_unclaimed(study, storage)
        optuna.storages.fail_stale_trials(study)
        done, running = counted_trials(study)
        asked = len(study.get_trials(deepcopy=False))  # rule-pruned and deferred ones are free, not endless
        if done + running >= job.trials_planned or asked >= job.trials_planned * ASKS_PER_TRIAL or time_up():
            return None, job.state
        return ask(study), job.state


#: a study attribute: when (seconds since the epoch) the job's first worker began it; a job's ``--timeout``
#: runs from then, for all its workers (the hosts' clocks are taken to agree, as for heartbeats)
STARTED_AT = "team_started_at"


def job_deadline(storage, study_name: str, timeout: float | None) -> float | None:
    """Under the job's lock: the job's deadline (seconds since the epoch), ``timeout`` after its first
    worker began it — now, when none has; None without a timeout. A worker that joins later, or
    restarts, keeps the job's clock: the job ends when the user said, not ``timeout`` after its last
    worker came."""
    import time

    sid = storage.get_study_id_from_name(study_name)
    started = storage.get_study_user_attrs(sid).get(STARTED_AT)
    if started is None:
        started = time.time()
        storage.set_study_user_attr(sid, STARTED_AT, started)
    return None if timeout is None else float(started) + timeout


def list_jobs(store) -> list[dict]:
    out = []
    for job, workers, best in queue.jobs_with_workers(store):
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


def others_running_here(store, worker_id: int, stale_s: float) -> bool:
    """Whether another live worker of this host runs something now (a trial, or a compile for the team):
    an idle worker's compile waits for it, so that it neither slows a measurement nor, starved at idle
    priority, runs past its limit and is taken for a compile that failed (a stopped one, see
    :func:`worker_gone`, holds nothing up)."""
    host, _ = host_id()
    return any(wid != worker_id and not worker_gone(store, wid, stale_s)
               for wid, _ in queue.running_workers(store, host))
