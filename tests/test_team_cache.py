"""The team compile cache (autotune.compile_share) on a real Redis: a second host, with its own local
caches, compiles nothing the first already compiled; a tampered artifact is refused and never
loaded (the function a trial calls before its first call, on the real Redis: a third whole search
would add a minute to CI and nothing the two tests do not check); the password shows nowhere.
.ci/run starts the Redis (scripts/start-redis.sh)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import write_study

from autotune.compile_share import PREFIX, TamperedArtifact, TeamCache, configured, load_into_torch, mask
from autotune.errors import UsageError

REDIS = os.environ.get("AUTOTUNE_TEST_REDIS")
needs_redis = pytest.mark.skipif(not REDIS, reason="AUTOTUNE_TEST_REDIS not set: .ci/run starts Redis and sets it")
PASSWORD = "team-cache-secret"  # scripts/start-redis.sh's

#: one compiled recipe: torch.compile of the forward over a static cache, nothing else searched
ONE_COMPILED = {"compile.target": ["forward"], "compile.mode": ["default"], "compile.freezing": [False],
                "compile.cpp_wrapper": [False], "compile.prefill": ["eager"], "quantization.method": ["none"],
                "dtype.dtype": ["auto"], "attention.implementation": ["sdpa"], "attention.sdpa_backend": ["auto"], "attention.gqa": ["auto"],
                "cache.implementation": ["static"], "cache.ladder": ["one"]}

#: one recipe compiled ahead of time: an AOTInductor package, which no torch cache holds
ONE_AOTI = {"compile.target": ["aoti"], "compile.mode": ["default"], "quantization.method": ["none"],
            "dtype.dtype": ["auto"], "attention.implementation": ["sdpa"], "attention.sdpa_backend": ["auto"],
            "attention.gqa": ["auto"], "cache.implementation": ["static"], "cache.ladder": ["one"]}


def test_urls_are_checked_and_masked():
    assert mask("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert mask("redis://user:pw@host/1") == "redis://user:***@host/1"
    assert mask("redis://host:6379") == "redis://host:6379"
    with pytest.raises(UsageError, match="redis://") as info:
        configured("http://user:pw@host")
    assert "pw" not in str(info.value)


@needs_redis
def test_a_tampered_artifact_is_refused_and_never_loaded(monkeypatch):
    import torch

    cache = TeamCache(REDIS)
    name = cache.put(b"compiled kernels, honestly")
    assert cache.get(name) == b"compiled kernels, honestly"
    cache.client.set(PREFIX + name, b"something else")
    with pytest.raises(TamperedArtifact, match="does not match its hash"):
        cache.get(name)
    loaded = []
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda blob: loaded.append(blob))
    note = load_into_torch(REDIS, name)
    assert note.startswith("refused:") and PASSWORD not in note and "***" in note
    assert loaded == []
    assert load_into_torch(REDIS, "0" * 64).startswith("missing:")


def host_search(tmp_path, model: str, host: str, study: str, db: str, remeasure: bool,
                space: dict = ONE_COMPILED, trials: int = 1, status: str | None = None,
                target: str | None = None) -> tuple[dict, str]:
    """``autotune search`` as one host of the team: its own local caches (autotune's, inductor's), the
    shared database and the shared Redis. Returns its one trial of the compiled recipe (``status``:
    the one that ended so) and its output."""
    home = tmp_path / host
    env = {**os.environ, "AUTOTUNE_CACHE_DIR": str(home / "cache"), "AUTOTUNE_DATA_DIR": str(home / "data"),
           "AUTOTUNE_COMPILE_CACHE": REDIS}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    f = write_study(tmp_path, model, space, trials=trials)
    cmd = [sys.executable, "-m", "autotune", "search", "--study-file", f, "--study", study, "--db", db, "--json",
           "--jobs", "1"] + (["--remeasure"] if remeasure else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(proc.stdout)
    found = [t for t in payload["trials"] if t["recipe"]["compile"]["target"] == (target or space["compile.target"][0])
             and (status is None or t["status"] == status)]
    assert len(found) == 1, [(t["recipe"]["compile"]["target"], t["status"], t.get("error")) for t in payload["trials"]]
    return found[0], proc.stdout + proc.stderr


@needs_redis
def test_a_second_host_compiles_nothing_the_first_compiled(tmp_path, tiny_model):
    db = f"sqlite:///{tmp_path / 'team.db'}"
    first, out_a = host_search(tmp_path, tiny_model, "a", "team-a", db, remeasure=False)
    assert first["status"] == "ok" and first["graphs_built"] > 0 and first["compile_artifact"]
    second, out_b = host_search(tmp_path, tiny_model, "b", "team-b", db, remeasure=True)
    assert second["status"] == "ok"
    assert second["compile_shared"].startswith(f"loaded {first['compile_artifact'][:12]}")
    assert second["graphs_built"] == 0, "host b compiled a graph host a had compiled"
    for out in (out_a, out_b):
        assert PASSWORD not in out


@needs_redis
def test_a_second_host_builds_no_aotinductor_package_the_first_built(tmp_path, tiny_model):
    """torch.export and AOTInductor's compile are in no torch cache: the package travels itself, keyed by
    what makes it (not by its path, which hashes each host's model folder)."""
    db = f"sqlite:///{tmp_path / 'team.db'}"
    first, _ = host_search(tmp_path, tiny_model, "a", "aoti-a", db, remeasure=False, space=ONE_AOTI)
    assert first["status"] == "ok" and first["graphs_built"] > 0 and first["compile_artifact"]
    second, out_b = host_search(tmp_path, tiny_model, "b", "aoti-b", db, remeasure=True, space=ONE_AOTI)
    assert second["status"] == "ok", second
    assert second["compile_shared"].startswith(f"loaded {first['compile_artifact'][:12]}")
    assert "1 AOTInductor package" in second["compile_shared"]
    assert second["graphs_built"] == 0, "host b built a package host a had built"
    assert list((tmp_path / "b" / "cache" / "aoti").glob("*.pt2")), "the package was not written on host b"
    assert PASSWORD not in out_b
    # a host c resumes host a's study, its plan spent: the pair at the end runs host a's best, loading its package
    # (the second host of a README job built the winner's package again for it: 104 s of its 600)
    env = {**os.environ, "AUTOTUNE_CACHE_DIR": str(tmp_path / "c" / "cache"),
           "AUTOTUNE_DATA_DIR": str(tmp_path / "c" / "data"), "AUTOTUNE_COMPILE_CACHE": REDIS}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "autotune", "search", "--study-file", write_study(tmp_path, tiny_model,
                           ONE_AOTI, trials=1), "--study", "aoti-a", "--db", db, "--json", "--side-by-side"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pair = json.loads(proc.stdout)["side_by_side"]
    assert pair and pair["measurement_id"] == first["measurement_id"], pair
    assert pair["best"]["graphs_built"] == 0, "host c built the package again for the pair at the end"


@needs_redis
def test_a_deferred_compile_finishes_after_the_search_and_the_next_host_loads_it(tmp_path, tiny_model):
    """Host a defers the compiled candidate (the history says such a compile took 200 s, past its 120 s
    cap with the margin); after its summary it compiles it in a detached process at idle priority into
    the team cache, recorded as compiled only (its compile's time is history; it is no recipe). A host b
    with its own local caches then measures the candidate loading that artifact: not deferred,
    nothing compiled."""
    import time

    import psutil

    from autotune import api
    from autotune.recipe import recipe_key, resolve
    from autotune.registry import get_optimizations
    from autotune.states import Status
    from autotune.store import Store, queries, writes
    from autotune.tuner import Search

    db = f"sqlite:///{tmp_path / 'team.db'}"
    search = Search(api.search_spec(None, study_file=write_study(tmp_path, tiny_model, ONE_COMPILED, trials=1),
                                    device="cpu"), Store(db), get_optimizations())
    like = resolve({"compile": {"target": "forward"}, "cache": {"implementation": "static"}}, search.optimizations)
    writes.record_measurement(search.store, search.ids, recipe_key=recipe_key(like), recipe=like, study="history",
                              is_baseline=False, status=Status.OK.value, error=None,
                              figures={"first_call_s": 200.0, "tpot_ms_p50": 1.0}, reuse_key="another", trial_limit_s=None)

    # (an uncompiled candidate too, so that host a's search has a recipe to show)
    space = {**ONE_COMPILED, "compile.target": ["off", "forward"]}
    deferred, out_a = host_search(tmp_path, tiny_model, "a", "team", db, remeasure=False, space=space, trials=2,
                                  target="forward")
    assert deferred["status"] == "pruned" and deferred["phase"] == "deferred", deferred
    started = [line for line in out_a.splitlines() if line.startswith("compiling 1 candidate")]
    assert started and "idle priority" in started[0] and PASSWORD not in out_a, out_a[-2000:]
    pid = int(started[0].split("pid ")[1].split(";")[0])
    log = started[0].split("log ")[1].rstrip(")")
    try:
        psutil.Process(pid).wait(timeout=600)
    except psutil.NoSuchProcess:
        pass
    text = open(log).read()
    assert "done: 1 of 1 compiled into the team cache" in text and PASSWORD not in text, text
    assert not list((tmp_path / "a" / "cache" / "background").glob("*.json")), "the job file (it names the db) stays"

    store = Store(db)
    rows = [r for r in queries.list_measurements(store, None, include_failed=True) if r.study == "team"]
    (compiled,) = [r for r in rows if (r.figures or {}).get("phase") == "compiled only"]
    assert compiled.status == "pruned" and compiled.figures["first_call_s"] > 0 and compiled.figures["compile_artifact"]
    assert compiled.id not in {r.id for r in queries.list_measurements(store, None)}, "listed as a recipe"
    assert any(p.id == compiled.id for p in queries.compile_history(store)), "its compile's time is history"

    # host b resumes host a's study for one trial more: the deferred candidate is asked again (no seed is
    # asked twice, and the sampler seldom proposes a pruned point again), loads the artifact, gets figures
    import optuna

    from autotune.proposals import TEAM_COMPILED
    from autotune.study import Attr, counted_trials

    done, _ = counted_trials(optuna.load_study(study_name="team", storage=store.optuna_storage()))
    measured, out_b = host_search(tmp_path, tiny_model, "b", "team", db, remeasure=False, space=space,
                                  trials=done + 1, status="ok", target="forward")
    assert measured["compile_shared"].startswith(f"loaded {compiled.figures['compile_artifact'][:12]}"), measured
    assert measured["graphs_built"] == 0, "host b compiled what the background compiled"
    assert "the search deferred or stopped at the cap" not in out_b, "nothing was left to compile"
    assert PASSWORD not in out_b
    trials = optuna.load_study(study_name="team", storage=store.optuna_storage()).get_trials()
    assert [t.user_attrs.get(Attr.PROPOSED_BY) for t in trials].count(TEAM_COMPILED) == 1, \
        [(t.params, t.state, t.user_attrs) for t in trials]


@needs_redis
def test_an_idle_daemon_compiles_what_its_job_deferred_for_the_team(tmp_path, tiny_model):
    """A daemon is the team's worker: the job's compiled candidate is deferred (the history says such
    a compile took 200 s), the job ends done without it, and the worker that recorded its end, finding
    the queue empty, compiles it into the team cache: a compiled-only row with its artifact, no recipe."""
    from click.testing import CliRunner

    from autotune import api, jobqueue
    from autotune.cli import cli
    from autotune.recipe import recipe_key, resolve
    from autotune.registry import get_optimizations
    from autotune.states import Status
    from autotune.store import Store, queries, queue, writes
    from autotune.tuner import Search

    db = f"sqlite:///{tmp_path / 'queue.db'}"
    study = write_study(tmp_path, tiny_model, {**ONE_COMPILED, "compile.target": ["off", "forward"]}, trials=2)
    search = Search(api.search_spec(None, study_file=study, device="cpu"), Store(db), get_optimizations())
    like = resolve({"compile": {"target": "forward"}, "cache": {"implementation": "static"}}, search.optimizations)
    writes.record_measurement(search.store, search.ids, recipe_key=recipe_key(like), recipe=like, study="history",
                              is_baseline=False, status=Status.OK.value, error=None,
                              figures={"first_call_s": 200.0, "tpot_ms_p50": 1.0}, reuse_key="another", trial_limit_s=None)
    submitted = CliRunner().invoke(cli, ["submit", "--study-file", study, "--db", db])
    assert submitted.exit_code == 0, submitted.output
    job_id = int(submitted.output.split("queued job ")[1].split(":")[0])

    home = tmp_path / "worker"
    env = {**os.environ, "AUTOTUNE_CACHE_DIR": str(home / "cache"), "AUTOTUNE_DATA_DIR": str(home / "data"),
           "AUTOTUNE_COMPILE_CACHE": REDIS}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "autotune", "daemon", "--db", db, "--poll", "0.5", "--exit-when-idle"],
                          env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
    assert "kept for when the queue is idle" in out and PASSWORD not in out, out[-3000:]

    store = Store(db)
    assert queue.get_job(store, job_id).state == "done"
    rows = [r for r in queries.list_measurements(store, None, include_failed=True)]
    deferred = [r for r in rows if (r.figures or {}).get("phase") == "deferred"]
    (compiled,) = [r for r in rows if (r.figures or {}).get("phase") == "compiled only"]
    assert deferred and deferred[0].recipe.recipe == compiled.recipe.recipe
    assert compiled.figures["compile_artifact"] and compiled.figures["first_call_s"] > 0, compiled.figures
    assert compiled.id not in {r.id for r in queries.list_measurements(store, None)}, "listed as a recipe"
    assert jobqueue.compiles_by(store.optuna_storage(), queue.get_job(store, job_id).study_name) == "done"


@needs_redis
def test_the_compiles_a_killed_worker_kept_are_adopted_by_the_next_idle_one(tmp_path, tiny_model):
    """The worker that kept a job's deferred compile is killed (-9) before compiling it: the next daemon
    of the same hardware, idle, adopts it from the job's study and compiles it into the team cache."""
    import signal
    import threading

    from click.testing import CliRunner

    from autotune import api, jobqueue
    from autotune.cli import cli
    from autotune.recipe import recipe_key, resolve
    from autotune.registry import get_optimizations
    from autotune.states import Status
    from autotune.store import Store, queries, queue, writes
    from autotune.tuner import Search

    db = f"sqlite:///{tmp_path / 'queue.db'}"
    study = write_study(tmp_path, tiny_model, {**ONE_COMPILED, "compile.target": ["off", "forward"]}, trials=2)
    search = Search(api.search_spec(None, study_file=study, device="cpu"), Store(db), get_optimizations())
    like = resolve({"compile": {"target": "forward"}, "cache": {"implementation": "static"}}, search.optimizations)
    writes.record_measurement(search.store, search.ids, recipe_key=recipe_key(like), recipe=like, study="history",
                              is_baseline=False, status=Status.OK.value, error=None,
                              figures={"first_call_s": 200.0, "tpot_ms_p50": 1.0}, reuse_key="another", trial_limit_s=None)
    submitted = CliRunner().invoke(cli, ["submit", "--study-file", study, "--db", db])
    assert submitted.exit_code == 0, submitted.output
    job_id = int(submitted.output.split("queued job ")[1].split(":")[0])

    def daemon(name):
        home = tmp_path / name
        env = {**os.environ, "AUTOTUNE_CACHE_DIR": str(home / "cache"), "AUTOTUNE_DATA_DIR": str(home / "data"),
               "AUTOTUNE_COMPILE_CACHE": REDIS}
        env.pop("TORCHINDUCTOR_CACHE_DIR", None)
        return subprocess.Popen([sys.executable, "-m", "autotune", "daemon", "--db", db, "--poll", "0.5",
                                 "--exit-when-idle"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first, seen = daemon("first"), []
    stuck = threading.Timer(900, first.kill)  # a daemon that never gets there fails the test, never hangs it
    stuck.start()
    for line in first.stdout:  # killed the moment it has kept the compile, before it could compile it
        seen.append(line)
        if "kept for when the queue is idle" in line:
            first.send_signal(signal.SIGKILL)
            break
    stuck.cancel()
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
    store = Store(db)
    storage = store.optuna_storage()
    name = queue.get_job(store, job_id).study_name
    assert isinstance(jobqueue.compiles_by(storage, name), int)  # the killed worker keeps it
    rows = queries.list_measurements(store, None, include_failed=True)
    assert not [r for r in rows if (r.figures or {}).get("phase") == "compiled only"], "compiled before the kill"

    second = daemon("second")
    out, _ = second.communicate(timeout=900)
    assert second.returncode == 0 and "Traceback" not in out, out[-3000:]
    assert f"job {job_id}: adopted 1 compile for the team" in out and PASSWORD not in out, out[-3000:]
    rows = queries.list_measurements(store, None, include_failed=True)
    deferred = [r for r in rows if (r.figures or {}).get("phase") == "deferred"]
    (compiled,) = [r for r in rows if (r.figures or {}).get("phase") == "compiled only"]
    assert deferred and deferred[0].recipe.recipe == compiled.recipe.recipe
    assert compiled.figures["compile_artifact"], compiled.figures
    assert jobqueue.compiles_by(storage, name) == jobqueue.COMPILES_DONE