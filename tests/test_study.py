"""The protocol between Optuna trials and stored measurements (autotune.study), on a real SQLite
storage: what counts toward a plan, orphans of a killed search queued again, trials cut off by an
outage settled once."""
from __future__ import annotations

import socket
import subprocess
import sys

import optuna
import pytest

from autotune import study as protocol
from autotune.figures import Figures
from autotune.states import Status
from autotune.study import Attr

S = optuna.trial.TrialState
pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture
def storage(tmp_path):
    return optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")


@pytest.fixture
def study(storage):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name="s", storage=storage)


def measured(study, status: Status, state, value=None):
    trial = study.ask({"x": optuna.distributions.CategoricalDistribution([1, 2, 3])})
    protocol.record(trial, 100 + trial.number, "x", status, None if status == Status.OK else "why")
    if state == S.COMPLETE:
        study.tell(trial, value if value is not None else 1.0)
    elif state is not None:
        study.tell(trial, state=state)
    return trial


def test_what_counts_toward_the_plan(study, storage):
    measured(study, Status.OK, S.COMPLETE)
    measured(study, Status.PRUNED, S.PRUNED)  # measured, then pruned as hopeless: counts
    measured(study, Status.INVALID, S.PRUNED)  # a rule pruned it before launch: free
    measured(study, Status.CRASH, S.FAIL)  # measured, crashed: counts
    died = study.ask()  # its worker died: failed without a measurement, then queued again
    study.tell(died, state=S.FAIL)
    protocol.retry(study, storage, protocol.trial_id(storage, study, died.number))
    study.ask()  # the retry, now running
    # deferred on its predicted compile, never launched: free, as the search's own count says too
    deferred = Figures(phase="deferred", first_call_cap_s=60.0)
    trial = study.ask({"x": optuna.distributions.CategoricalDistribution([1, 2, 3])})
    protocol.record(trial, 200, "x", Status.PRUNED, "deferred: ...")
    protocol.tell(study, trial, Status.PRUNED, deferred, {}, [("tpot_ms_p50", "minimize")])
    assert not protocol.counts_toward_plan(Status.PRUNED, deferred=True)
    assert protocol.counts_toward_plan(Status.PRUNED, deferred=False)  # ran to the cap: counts
    assert protocol.counted_trials(study) == (3, 1)
    assert set(protocol.measurement_ids(study)) == {100, 101, 102, 103, 200}


def test_tell_puts_the_budget_in_the_constraints(study):
    trial = study.ask({"x": optuna.distributions.CategoricalDistribution([1, 2])})
    protocol.tell(study, trial, Status.OK, Figures(tpot_ms_p50=12.0), {"tpot_p50<=10.0 ms": 0.2},
                  [("tpot_ms_p50", "minimize")])
    done = study.trials[0]
    assert done.state == S.COMPLETE and done.value == 12.0 and list(done.constraints.values()) == [0.2]
    capped = study.ask()
    protocol.tell(study, capped, Status.PRUNED, Figures(first_call_cap_s=60.0), {}, [("tpot_ms_p50", "minimize")])
    assert study.trials[1].state == S.PRUNED and study.trials[1].user_attrs[Attr.COMPILE_CAPPED] is True


@pytest.mark.parametrize("fits_below", [1.5, 0.5], ids=["x=1 fits", "none fits"])
def test_a_recipe_that_failed_steers_the_sampler_away(study, fits_below):
    """Told as failed, TPE ignores a trial: it keeps proposing a choice (x=3) that failed every time.
    Told as autotune tells it (pruned, nothing measured, its constraint missed by more than any budget
    limit), TPE proposes it less — also when no measured trial fits the budget, where a pruned trial
    with no constraint would count as feasible and rank first (TPE then proposed x=3 40 times in 40)."""
    objectives = [("tpot_ms_p50", "minimize")]
    dist = {"x": optuna.distributions.CategoricalDistribution([1, 2, 3])}

    def proposals_of_3(tell_failure) -> int:
        s = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1, n_startup_trials=4))
        for x in (1, 2, 3, 3, 1, 2, 3):
            s.enqueue_trial({"x": x})
            trial = s.ask(dist)
            if x == 3:
                tell_failure(s, trial)
            else:
                protocol.tell(s, trial, Status.OK, Figures(tpot_ms_p50=10.0 + x), {"memory<=1.00 GiB": x - fits_below},
                              objectives)
        picks = 0
        for _ in range(40):
            trial = s.ask(dist)
            picks += trial.params["x"] == 3
            s.tell(trial, state=S.FAIL)  # (ignored by TPE: the history stays the same)
        return picks

    autotune_way = proposals_of_3(lambda s, t: protocol.tell(s, t, Status.ERROR, Figures(), {}, objectives))
    ignored = proposals_of_3(lambda s, t: s.tell(t, state=S.FAIL))
    assert autotune_way < ignored / 2, (autotune_way, ignored)
    errored = study.ask(dist)
    protocol.tell(study, errored, Status.OOM, Figures(), {}, objectives)
    assert study.trials[0].state == S.PRUNED and study.trials[0].constraints == {protocol.FAILED: protocol.FAILED_VIOLATION}


def test_orphans_of_a_dead_process_of_this_host_are_queued_again(study, storage):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    for worker in (f"{host}:{dead.pid}", protocol.worker_id(), "elsewhere:1"):
        trial = study.ask()
        trial.set_user_attr(Attr.WORKER, worker)
    retried = protocol.retry_orphans(study, storage)
    assert retried == [0]  # not this live process's, not another host's (left to its heartbeat)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states[:3] == [S.FAIL, S.RUNNING, S.RUNNING] and states[3] == S.WAITING


def test_a_trial_cut_off_by_an_outage_is_settled_once(study, storage):
    trial = study.ask()
    tid = protocol.trial_id(storage, study, trial.number)
    assert protocol.settle(study, storage, tid) is True  # left running: failed and queued again
    assert protocol.settle(study, storage, tid) is False  # already queued again: not twice
    assert sum(1 for t in study.get_trials(deepcopy=False) if t.state == S.WAITING) == 1


def test_a_queued_job_whose_every_proposal_is_deferred_still_ends(tmp_path):
    """A daemon reserves trials while the plan has room: deferrals are free of the plan, so only the
    plan's asks (ASKS_PER_TRIAL per trial) end a job whose every proposal is deferred."""
    from autotune import jobqueue
    from autotune.store import Store, queue

    store = Store(f"sqlite:///{tmp_path / 'q.db'}")
    storage = store.optuna_storage()
    job_id = queue.add_job(store, model="m", search_spec={}, hardware={"kind": "any"}, study_name="q", trials=2,
                           submitted_from="here")
    study = optuna.create_study(study_name="q", storage=storage)
    asked = 0
    while asked < 100:
        trial, state = jobqueue.reserve_trial(store, job_id, study, storage,
                                              lambda st: st.ask({"x": optuna.distributions.FloatDistribution(0, 1)}))
        if trial is None:
            break
        asked += 1
        protocol.record(trial, asked, "x", Status.PRUNED, "deferred: ...")
        protocol.tell(study, trial, Status.PRUNED, Figures(phase="deferred", first_call_cap_s=60.0), {},
                      [("tpot_ms_p50", "minimize")])
    assert asked == 2 * protocol.ASKS_PER_TRIAL and protocol.counted_trials(study) == (0, 0)
