"""The tuning daemon against real databases: PostgreSQL (started by .ci/run) and SQLite.

Daemons run as separate processes, as they would on separate hosts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import write_study

from autotune.cli import cli
from autotune.study import counted_trials
from autotune.store import Store

TESTS = Path(__file__).parent
PG = os.environ.get("AUTOTUNE_TEST_PG")


def _reset_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def queue_db(request, tmp_path):
    if request.param == "postgresql":
        if not PG:
            pytest.skip("AUTOTUNE_TEST_PG not set: .ci/run starts PostgreSQL and sets it")
        _reset_postgres(PG)
        return PG
    return f"sqlite:///{tmp_path / 'queue.db'}"


#: the queue tests' budget: met by every measured recipe. Under the default quality floor a job whose
#: sampled recipes (the sampler's seed follows the study name, so the tmp path) all lose top-1 agreement on
#: a random-weight model (fp16, an int4 head) ends ``failed``: clean-clone CI m failed on it
BINDS_NOTHING = "quality>=0"


def job_file(tmp_path, model, trials, budget: str = BINDS_NOTHING, **space) -> str:
    if any(k.startswith("chaos.") for k in space):  # the test plugins are loaded: keep decode steps clean
        space = {"corrupt.decode": ["clean"], **space}
    return write_study(tmp_path, model, {"compile.target": ["off"], "cache.ladder": ["x2"], **space},
                       trials=trials, budget=budget)


def submit(db, args) -> int:
    result = CliRunner().invoke(cli, ["submit", *args, "--db", db])
    assert result.exit_code == 0, result.output
    return int(result.output.split("queued job ")[1].split(":")[0])


def env(**extra) -> dict:
    e = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **extra}
    return e


def daemon(db, *args, **env_extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autotune", "daemon", "--db", db, "--poll", "0.5",
                             "--heartbeat", "1", "--grace", "3", *args],
                            env=env(**env_extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def job(db, job_id) -> dict:
    result = CliRunner().invoke(cli, ["jobs", "--json", "--db", db])
    assert result.exit_code == 0, result.output
    return next(j for j in json.loads(result.output) if j["id"] == job_id)


def study_of(db, job_id):
    return optuna.load_study(study_name=job(db, job_id)["study"], storage=Store(db).optuna_storage())


def wait_running(db, job_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            study = study_of(db, job_id)
            if any(t.state == optuna.trial.TrialState.RUNNING for t in study.trials):
                return
        except KeyError:
            pass
        time.sleep(0.5)
    raise AssertionError("no trial started running")


def test_four_daemons_share_one_study(queue_db, tmp_path, tiny_model):
    trials = 6
    job_id = submit(queue_db, ["--study-file", job_file(tmp_path, tiny_model, trials)])
    procs = [daemon(queue_db, "--exit-when-idle") for _ in range(4)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-2000:]
        assert "Traceback" not in err and "database error" not in err and "locked" not in err.lower()
        assert "tuner-secret-pw" not in err + out
    j = job(queue_db, job_id)
    assert j["state"] == "done", j
    study = study_of(queue_db, job_id)
    done, running = counted_trials(study)
    assert (done, running) == (trials, 0)  # every planned trial exactly once
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    workers_that_ran = sum(1 for _, err in outputs if " trial " in err)
    assert workers_that_ran >= 2, "the trials should be shared between daemons"
    # the best recipe is now answered from the database, by name, in another process
    code = f"import autotune; r = autotune.load({tiny_model!r}, db={queue_db!r}); print(r.document['measurement_id'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.strip().splitlines()[-1]) == j["best_measurement_id"]
    # and the report reads the same database (SQLite or PostgreSQL), by job id
    report = CliRunner().invoke(cli, ["report", str(job_id), "-o", str(tmp_path / "r.html"), "--db", queue_db])
    assert report.exit_code == 0, report.output
    assert f"({trials} measured" in report.output  # (and the trials the rules ruled out, free)


def test_kill9_mid_trial_is_retried_elsewhere(queue_db, tmp_path, tiny_model):
    job_id = submit(queue_db, ["--study-file", job_file(tmp_path, tiny_model, 2, **{"chaos.behaviour": ["slow"]})])
    extra = {"AUTOTUNE_PLUGIN_MODULES": "plugins_for_tests", "CHAOS_SLOW_S": "6"}
    a = daemon(queue_db, **extra)
    wait_running(queue_db, job_id)
    os.killpg(a.pid, signal.SIGKILL)  # the worker and its trial process: a lost machine
    a.communicate()
    b = daemon(queue_db, "--exit-when-idle", **extra)
    out, err = b.communicate(timeout=600)
    assert b.returncode == 0, err[-2000:]
    study = study_of(queue_db, job_id)
    S = optuna.trial.TrialState
    stale = [t for t in study.trials if t.state == S.FAIL and "measurement_id" not in t.user_attrs]
    assert len(stale) == 1, [(t.number, t.state) for t in study.trials]
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == stale[0].number]
    assert len(retries) == 1 and retries[0].state == S.COMPLETE
    assert counted_trials(study) == (2, 0)
    assert len([t for t in study.trials if t.state == S.COMPLETE]) == 2  # none lost, none duplicated
    assert job(queue_db, job_id)["state"] == "done", (job(queue_db, job_id), err[-3000:])


def test_a_job_nothing_fits_ends_failed_saying_why(queue_db, tmp_path, tiny_model):
    # an int4 LM head on a random-weight model loses top-1 agreement: the default floor binds
    job_id = submit(queue_db, ["--study-file", job_file(tmp_path, tiny_model, 2, budget="", **{
        "quantization.method": ["none"], "quantization.head": ["int4"], "dtype.dtype": ["bfloat16"]})])
    p = daemon(queue_db, "--exit-when-idle")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0 and "Traceback" not in err, err[-2000:]
    j = job(queue_db, job_id)
    assert j["state"] == "failed" and j["trials_done"] == 2, j
    assert "quality" in j["message"] and "nearest candidate" in j["message"], j
    assert j["best_measurement_id"] is None


def test_a_jobs_timeout_travels_with_it_and_runs_from_its_first_worker(queue_db, tmp_path, tiny_model):
    # `--timeout` was dropped on the way to the queue: a job ran its whole plan however long it took
    from autotune import jobqueue
    from autotune.store import queue

    job_id = submit(queue_db, ["--study-file", job_file(tmp_path, tiny_model, 3), "--timeout", "1"])
    assert queue.get_job(Store(queue_db), job_id).search_spec["timeout"] == 1
    p = daemon(queue_db, "--exit-when-idle")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0 and "Traceback" not in err, err[-2000:]
    j = job(queue_db, job_id)  # the clock ran from before the baseline: no time is left for a trial after it
    assert j["trials_done"] == 0 and "its --timeout of 1 s ran out after 0 of 3 trials" in j["message"], j
    study = study_of(queue_db, job_id)
    started = study.user_attrs[jobqueue.STARTED_AT]
    assert started < time.time() - 1  # set once, by the first worker: one that comes later keeps the clock
    assert jobqueue.job_deadline(Store(queue_db).optuna_storage(), study.study_name, 5) == started + 5


def test_sigterm_exits_cleanly_and_the_job_resumes(queue_db, tmp_path, tiny_model):
    job_id = submit(queue_db, ["--study-file", job_file(tmp_path, tiny_model, 2, **{"chaos.behaviour": ["slow"]})])
    extra = {"AUTOTUNE_PLUGIN_MODULES": "plugins_for_tests", "CHAOS_SLOW_S": "30"}
    a = daemon(queue_db, **extra)
    wait_running(queue_db, job_id)
    started = time.monotonic()
    a.send_signal(signal.SIGTERM)
    out, err = a.communicate(timeout=60)
    assert a.returncode == 0, err[-2000:]
    assert time.monotonic() - started < 30, "SIGTERM must not wait for the 30 s trial"
    assert "re-queued" in err and "Traceback" not in err
    assert job(queue_db, job_id)["state"] == "running"
    study = study_of(queue_db, job_id)
    assert any(t.state == optuna.trial.TrialState.WAITING for t in study.trials)
    b = daemon(queue_db, "--exit-when-idle", **{**extra, "CHAOS_SLOW_S": "1"})
    out, err = b.communicate(timeout=600)
    assert b.returncode == 0, err[-2000:]
    assert job(queue_db, job_id)["state"] == "done", (job(queue_db, job_id), err[-3000:])
    assert counted_trials(study_of(queue_db, job_id)) == (2, 0)


def test_job_for_other_hardware_stays_queued(queue_db, tmp_path, tiny_model):
    job_id = submit(queue_db, ["--study-file", job_file(tmp_path, tiny_model, 2), "--hardware", "cuda>=4000GiB"])
    p = daemon(queue_db, "--exit-when-idle")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    j = job(queue_db, job_id)
    assert j["state"] == "queued" and j["trials_done"] == 0
    assert "4000 GiB" in j["hardware"]


def test_submit_jobs_cancel_round_trip(queue_db, tmp_path, tiny_model):
    job_id = submit(queue_db, [tiny_model, "--budget", "tpot_p50<=50ms", "--trials", "3"])
    assert job(queue_db, job_id)["state"] == "queued"
    text = CliRunner().invoke(cli, ["jobs", "--db", queue_db])
    assert "queued" in text.output and str(job_id) in text.output
    result = CliRunner().invoke(cli, ["cancel", str(job_id), "--db", queue_db])
    assert result.exit_code == 0 and "cancelled" in result.output
    assert job(queue_db, job_id)["state"] == "cancelled"
    p = daemon(queue_db, "--exit-when-idle")
    p.communicate(timeout=120)
    assert job(queue_db, job_id)["state"] == "cancelled"
    result = CliRunner().invoke(cli, ["cancel", "999", "--db", queue_db])
    assert result.exit_code == 1 and "no job 999" in result.output
    result = CliRunner().invoke(cli, ["submit", tiny_model, "--hardware", "quantum", "--db", queue_db])
    assert result.exit_code == 2 and "--hardware" in result.output


@pytest.mark.skipif(not PG, reason="AUTOTUNE_TEST_PG not set")
def test_password_never_shown():
    bad = PG.replace("tuner-secret-pw", "wrong-secret-pw")
    result = CliRunner().invoke(cli, ["jobs", "--db", bad])
    assert result.exit_code == 1
    assert "wrong-secret-pw" not in result.output and "tuner-secret-pw" not in result.output
    assert "***" in result.output
    result = CliRunner().invoke(cli, ["submit", "smollm2-135m", "--db", PG, "--trials", "1", "--hardware", "cuda"])
    assert "tuner-secret-pw" not in result.output and "***" in result.output


def test_a_trial_cut_off_by_the_database_is_settled_by_its_worker(queue_db, tmp_path, tiny_model, monkeypatch):
    """The database goes away while a trial is in flight, before it ever heartbeat: Optuna never
    counts such a trial stale, so its worker fails it and queues it again once the database is
    back — and the plan still finishes with nothing left running (the daemon under a PostgreSQL
    outage once waited for ever on such a trial)."""
    from autotune.daemon import DaemonOptions, Worker
    from autotune.errors import StoreError
    from autotune.registry import get_optimizations
    from autotune.tuner import Search
    from autotune.target import current_target

    job_id = submit(queue_db, ["--study-file", job_file(tmp_path, tiny_model, trials=2)])
    store = Store(queue_db)
    worker = Worker(store, current_target("cpu"), get_optimizations(),
                    DaemonOptions(poll_s=0.2, heartbeat_s=1, grace_s=3600, exit_when_idle=True))
    worker.register()
    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", lambda self, trial_id: None)  # never beats
    real_step = Search.step
    outage = []

    def step_cut_off(self, *args, **kwargs):
        if not outage:
            outage.append(1)
            raise StoreError("database postgresql://...: connection refused")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Search, "step", step_cut_off)
    with pytest.raises(StoreError):
        worker.work_on(job_id)
    study = study_of(queue_db, job_id)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.RUNNING]
    assert not optuna.storages.fail_stale_trials(study) and study.trials[0].state == optuna.trial.TrialState.RUNNING
    _runs_off_the_plan(worker, queue_db, job_id)


def test_a_reservation_cut_off_before_its_worker_knew_the_trial_is_queued_again(queue_db, tmp_path, tiny_model,
                                                                                monkeypatch):
    """The database goes away inside Optuna's ask, after the trial row is written: its worker never
    learns the trial's number, so nobody claims, beats or settles it — and Optuna never counts a trial
    that never beat stale. The next reservation gives it a first heartbeat, it goes stale after the
    grace period, is queued again, and the plan finishes (a daemon under a PostgreSQL outage once
    waited for ever on such a trial)."""
    from autotune.daemon import DaemonOptions, Worker
    from autotune.errors import StoreError
    from autotune.registry import get_optimizations
    from autotune.tuner import Search
    from autotune.target import current_target

    job_id = submit(queue_db, ["--study-file", job_file(tmp_path, tiny_model, trials=2)])
    store = Store(queue_db)
    worker = Worker(store, current_target("cpu"), get_optimizations(),
                    DaemonOptions(poll_s=0.2, heartbeat_s=1, grace_s=2, exit_when_idle=True))
    worker.register()
    real_ask = Search.ask
    outage = []

    def ask_cut_off(self, study):
        trial = real_ask(self, study)
        if not outage:
            outage.append(trial.number)
            raise StoreError("database postgresql://...: connection refused")
        return trial

    monkeypatch.setattr(Search, "ask", ask_cut_off)
    with pytest.raises(StoreError):
        worker.work_on(job_id)
    assert not worker.unsettled  # the worker knows nothing of the trial
    study = study_of(queue_db, job_id)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.RUNNING]
    _runs_off_the_plan(worker, queue_db, job_id)


def _runs_off_the_plan(worker, queue_db, job_id) -> None:
    """``worker`` settles the trial 0 a database outage cut off, works off the 2-trial plan and exits
    idle: trial 0 failed and queued again (not lost), nothing left running, the job done."""
    import threading

    runner = threading.Thread(target=worker.run)
    runner.start()
    runner.join(120)
    worker.stopping = True  # a worker still waiting on a trial nobody will finish stops here
    runner.join(30)
    study = study_of(queue_db, job_id)
    states = [t.state for t in study.trials]
    assert states[0] == optuna.trial.TrialState.FAIL and optuna.trial.TrialState.RUNNING not in states, states
    assert any(t.system_attrs.get("failed_trial") == 0 for t in study.trials)  # queued again, not lost
    assert counted_trials(study) == (2, 0) and job(queue_db, job_id)["state"] == "done"


def test_an_idle_workers_compile_waits_for_the_other_workers_of_its_host(queue_db):
    """A compile for the team runs only when no other live worker of this host is running (a trial it
    would slow, or that would starve it past its limit): a running worker with a live pid holds it, one
    whose process is gone, one that is idle, one of another host, one silent past the stale limit (hung,
    a zombie) or one with this process's pid (a restarted container's daemon before this one) does not."""
    import datetime as dt
    import socket
    from functools import partial

    from autotune.jobqueue import worker_gone
    from autotune.jobqueue import others_running_here as running
    from autotune.states import WorkerState
    from autotune.store import queue
    from autotune.store import tables as t

    others_running_here = partial(running, stale_s=60.0)
    store = Store(queue_db)
    me = queue.add_worker(store, host=socket.gethostname(), pid=os.getpid(), hardware_key="x")
    queue.beat_worker(store, me, state=WorkerState.RUNNING.value)
    assert not others_running_here(store, me), "its own state held it"
    before = queue.add_worker(store, host=socket.gethostname(), pid=os.getpid(), hardware_key="x")
    queue.beat_worker(store, before, state=WorkerState.RUNNING.value)
    assert worker_gone(store, before, 60.0) and not others_running_here(store, me), "this pid's earlier worker"
    queue.beat_worker(store, before, state=WorkerState.STOPPED.value)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = queue.add_worker(store, host=socket.gethostname(), pid=int(dead.stdout), hardware_key="x")
    queue.beat_worker(store, gone, state=WorkerState.RUNNING.value)
    elsewhere = queue.add_worker(store, host="another-host", pid=os.getpid(), hardware_key="x")
    queue.beat_worker(store, elsewhere, state=WorkerState.RUNNING.value)
    idle = queue.add_worker(store, host=socket.gethostname(), pid=os.getppid(), hardware_key="x")
    assert not others_running_here(store, me)
    queue.beat_worker(store, idle, state=WorkerState.RUNNING.value)
    assert others_running_here(store, me) and not worker_gone(store, idle, 60.0)
    with store.session() as s:  # silent for two minutes: hung, or a zombie the os still lists
        s.get(t.Worker, idle).heartbeat_at = t.utcnow() - dt.timedelta(seconds=120)
    assert worker_gone(store, idle, 60.0) and not others_running_here(store, me)
    queue.beat_worker(store, idle)
    queue.beat_worker(store, elsewhere)
    assert not worker_gone(store, elsewhere, 60.0)
    queue.beat_worker(store, elsewhere, state=WorkerState.STOPPED.value)
    assert worker_gone(store, elsewhere, 60.0)
