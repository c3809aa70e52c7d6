"""The protocol between an Optuna study and autotune's stored measurements: its one home.

An Optuna trial is a slot in a study; a measurement is a row in autotune's store. A trial carries
its measurement's id and a few facts about it as user attributes (:class:`Attr`); a trial whose
worker died is failed and queued again through one retry policy (:func:`retry`); a finished trial is
told to Optuna with the budget as constraints (:func:`tell`); the trials that count toward a plan are
counted in one place (:func:`counted_trials`). The search (:mod:`autotune.tuner`) and the daemon's
workers (:mod:`autotune.daemon`) both go through here; nothing else reads or writes trial attributes.
No private Optuna attribute is read."""
from __future__ import annotations

import os
import socket
from typing import Iterable

import optuna

from .figures import Figures, is_deferred
from .states import FAILURES, Status

S = optuna.trial.TrialState
#: a trial that failed because its worker died is queued again at most this many times
RETRIES = 3
#: trials a plan may ask per trial it counts: rule-pruned and deferred candidates are free, so a
#: sampler that keeps proposing them would otherwise never finish the plan
ASKS_PER_TRIAL = 5


class Attr:
    """User attributes of a trial (and of a study, where said)."""

    MEASUREMENT_ID = "measurement_id"  # the stored measurement this trial stands for
    RECIPE = "recipe"  # its recipe, as text
    STATUS = "status"  # its measurement's status
    FAILURE = "failure"  # why it did not measure ok
    WORKER = "worker"  # host:pid of the process that runs it
    PROPOSED_BY = "proposed_by"  # seed, refinement, or the sampler
    COMPILE_CAPPED = "compile_capped"  # pruned because its first call (compilation) ran past the cap
    DEFERRED = "deferred"  # pruned before it ran: its compile was predicted past any cap it could get (free)
    SEEDS_ASKED = "seeds_asked"  # (study) seed recipes asked so far
    PRICE_PER_HOUR = "price_per_hour"  # (study) what an hour of the machine costs, for the report
    SIDE_BY_SIDE = "side_by_side"  # (study) the HF default and the best, measured again back to back


def worker_id() -> str:
    """This process, as the ``worker`` attribute names it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def trial_id(storage, study: optuna.Study, number: int) -> int:
    """The storage's id of the study's trial ``number`` (Optuna's public storage API)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def retry(study: optuna.Study, storage, trial_id_: int) -> None:
    """Queue a failed trial again (its worker died or was stopped), at most :data:`RETRIES` times."""
    optuna.storages.RetryFailedTrialCallback(max_retry=RETRIES)(study, storage.get_trial(trial_id_))


def is_retry_of(trial, number: int) -> bool:
    return trial.system_attrs.get("failed_trial") == number


def measurement_id(trial) -> int | None:
    return trial.user_attrs.get(Attr.MEASUREMENT_ID)


def measurement_ids(study: optuna.Study) -> dict[int, int]:
    """Stored measurement id -> trial number, for every trial that has one."""
    return {t.user_attrs[Attr.MEASUREMENT_ID]: t.number for t in study.get_trials(deepcopy=False)
            if Attr.MEASUREMENT_ID in t.user_attrs}


def claim(trial: optuna.Trial) -> None:
    """This process runs ``trial``."""
    trial.set_user_attr(Attr.WORKER, worker_id())


def record(trial: optuna.Trial, measurement: int, recipe_text: str, status: Status, error: str | None) -> None:
    """What the trial measured (or reused): its measurement, recipe and status."""
    trial.set_user_attr(Attr.MEASUREMENT_ID, measurement)
    trial.set_user_attr(Attr.RECIPE, recipe_text)
    trial.set_user_attr(Attr.STATUS, status.value)
    if status != Status.OK and error:
        trial.set_user_attr(Attr.FAILURE, f"{status}: {error}")


#: the constraint a failed trial misses, and by how much: more than any measured trial misses a budget limit
FAILED, FAILED_VIOLATION = "failed", 1e9


def tell(study: optuna.Study, trial: optuna.Trial, status: Status, figures: Figures, violations: dict,
         objectives: list[tuple[str, str]]) -> None:
    """Tell Optuna how a trial ended: ok with its objectives and the budget's ``violations`` as
    constraints; pruned, rule-pruned or failed as pruned (:func:`tell_pruned`). A recipe that failed (an
    error, out of memory, past its time limit) failed on its own choices, as a rule-pruned one would:
    told as failed, TPE leaves it out and keeps proposing its neighbours (float16 with int8 weights, NaN
    at every step, four times in one README job's 40 trials); told as pruned with nothing measured, it
    ranks below every measured trial (its constraint :data:`FAILED` missed by more than any budget
    limit is) and TPE moves away from it."""
    if status != Status.OK:
        if status in FAILURES:  # (a pruned trial with no constraint counts as feasible: before every one that
            # missed the budget, where a tight budget left TPE few feasible ones to learn from)
            trial.set_constraint(FAILED, FAILED_VIOLATION)
        single = len(objectives) == 1 and status == Status.PRUNED
        tell_pruned(study, trial, figures, objectives[0][0] if single else None)
    else:
        for name, value in violations.items():
            trial.set_constraint(name, value)
        _tell(study, trial, [figures.get(key) for key, _ in objectives])


def _tell(study: optuna.Study, trial, values=None, state=None) -> None:
    """``study.tell``, outside ``study.optimize`` as every search tells: Optuna's grid sampler calls
    ``study.stop()`` when the trial told was the grid's last, which raises outside ``optimize`` —
    after the trial is stored (Optuna stores it in a ``finally``); the search asks no more of an
    exhausted grid (``sampler.is_exhausted``)."""
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


def tell_pruned(study: optuna.Study, trial, figures: Figures, objective: str | None) -> None:
    """Tell Optuna a pruned trial as every search does: with its partial ``objective`` when one was
    measured (lets TPE rank hopeless candidates among themselves), and marked
    :attr:`Attr.COMPILE_CAPPED` when its first call ran past the compile cap, or would have (deferred;
    both pause refinements), and :attr:`Attr.DEFERRED` when it never ran."""
    if figures.first_call_cap_s is not None:
        trial.set_user_attr(Attr.COMPILE_CAPPED, True)
    if is_deferred(figures):
        trial.set_user_attr(Attr.DEFERRED, True)
    partial = figures.get(objective) if objective else None
    if partial is not None:
        trial.report(partial, step=0)
    _tell(study, trial, state=S.PRUNED)


def counts_toward_plan(status: Status, deferred: bool) -> bool:
    """Whether a finished trial counts toward a plan (a search's ``--trials``, a job's trials): a
    measured one does, whatever its outcome; a rule-pruned or ``deferred`` one ran nothing and does
    not (16 deferrals ended a README job's second host at 40 trials with 80 of its 600 s unused)."""
    return status != Status.INVALID and not deferred


def counted_trials(study: optuna.Study) -> tuple[int, int]:
    """(trials that count toward the plan, trials running now). A measured trial counts once
    finished, whatever its outcome (hopeless ones pruned after measuring too); a trial failed because
    its worker died does not count (its retry does); rule-pruned and deferred candidates do not count
    (:func:`counts_toward_plan`)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}

    def measured(t) -> bool:
        status = t.user_attrs.get(Attr.STATUS)  # (none yet: its measurement is recorded, so it ran)
        return Attr.MEASUREMENT_ID in t.user_attrs and counts_toward_plan(
            Status(status) if status else Status.ERROR, bool(t.user_attrs.get(Attr.DEFERRED)))

    done = sum(1 for t in trials
               if t.state == S.COMPLETE or (t.state in (S.FAIL, S.PRUNED) and measured(t) and t.number not in retried))
    running = sum(1 for t in trials if t.state == S.RUNNING)
    return done, running


def retry_orphans(study: optuna.Study, storage) -> list[int]:
    """Trials left running by a process of this host that is gone (kill -9 of a search): failed and
    queued again. Other hosts' trials are left to their heartbeats. Returns their numbers."""
    host = socket.gethostname()
    out = []
    for t in study.get_trials(deepcopy=False, states=(S.RUNNING,)):
        owner_host, _, pid = str(t.user_attrs.get(Attr.WORKER, "")).rpartition(":")
        if owner_host != host or not pid.isdigit() or alive(int(pid)):
            continue
        tid = trial_id(storage, study, t.number)
        if storage.set_trial_state_values(tid, S.FAIL):
            retry(study, storage, tid)
            out.append(t.number)
    return out


def beat_unclaimed(study: optuna.Study, storage) -> list[int]:
    """Running trials that no worker claimed and nothing ever beat — a reservation cut off between
    Optuna's ask and its first heartbeat (the database went away; the worker never learned the trial's
    number): given a first heartbeat here, so that, beaten by nobody after it, they go stale after the
    grace period and are queued again like any dead worker's trial (Optuna never counts a trial that
    never beat stale: a daemon waited for ever on one). A live worker's reservation beats on its own;
    this beat changes nothing for it. Returns their numbers."""
    from optuna.storages._rdb.models import TrialHeartbeatModel
    from sqlalchemy import select

    unclaimed = {trial_id(storage, study, t.number): t.number
                 for t in study.get_trials(deepcopy=False, states=(S.RUNNING,)) if Attr.WORKER not in t.user_attrs}
    if not unclaimed:
        return []
    with storage.engine.connect() as conn:
        beating = set(conn.scalars(select(TrialHeartbeatModel.trial_id)
                                   .where(TrialHeartbeatModel.trial_id.in_(list(unclaimed)))))
    out = []
    for tid, number in unclaimed.items():
        if tid not in beating:
            storage.record_heartbeat(tid)
            out.append(number)
    return out


def settle(study: optuna.Study, storage, trial_id_: int) -> bool:
    """A trial whose end its worker could not tell the study (the database went away meanwhile):
    fail it and queue it again, unless another worker has. Left running (whoever moves it to FAIL
    queues it again), or failed by the step's own last words before anything was measured and not
    queued again yet. Returns whether it was queued again here."""
    trial = storage.get_trial(trial_id_)
    ours = trial.state == S.RUNNING and storage.set_trial_state_values(trial_id_, S.FAIL)
    if not ours and trial.state == S.FAIL and Attr.MEASUREMENT_ID not in trial.user_attrs:
        ours = not any(is_retry_of(t, trial.number) for t in study.get_trials(deepcopy=False))
    if ours:
        retry(study, storage, trial_id_)
    return ours


def asked_params(trials: Iterable) -> Iterable[dict]:
    """Every trial's params — a trial asked but not yet suggested (another worker's) holds its
    enqueued params aside."""
    for t in trials:
        yield {**t.system_attrs.get("fixed_params", {}), **t.params}


def alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a trial's owner, a daemon worker)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
