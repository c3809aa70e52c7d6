"""Faults a shared tuning database meets in a week, each against the real part: hostile files and
inputs, a kill -9 mid-trial, a child the kernel kills for memory, concurrent searches, a database
that goes away, a disk that fills. Each counts what it injected and what survived."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_study

from autotune.cli import cli
from autotune.store import Store

TESTS = Path(__file__).parent
PG = os.environ.get("AUTOTUNE_TEST_PG")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- hostile files and inputs: a table -------------------------------------------------------------
def _recipe(**changes) -> dict:
    doc = {"format": "autotune-recipe", "format_version": 1, "model": "{model}", "config_only": False,
           "recipe": {"cache": {"implementation": "static"}},
           "workload": {"prompt_tokens": 8, "new_tokens": 4, "batch_size": 1}, "target": {}}
    doc.update(changes)
    return doc


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


RECIPES = {  # file content (str) or a document (dict) -> expected message
    "truncated": ('{"format": "autotune-rec', "not valid JSON"),
    "empty": ("", "not valid JSON"),
    "array": ("[]", "not an autotune recipe"),
    "string": ('"recipe"', "not an autotune recipe"),
    "number": ("42", "not an autotune recipe"),
    "null": ("null", "not an autotune recipe"),
    "wrong format": (_recipe(format="something-else"), "not an autotune recipe"),
    "future format_version": (_recipe(format_version=99), "format_version 99"),
    "format_version as text": (_recipe(format_version="1"), "format_version '1'"),
    "no model": ({k: v for k, v in _recipe().items() if k != "model"}, '"model" must be a non-empty string'),
    "model a number": (_recipe(model=123), '"model" must be a non-empty string'),
    "model empty": (_recipe(model=""), '"model" must be a non-empty string'),
    "recipe a list": (_recipe(recipe=[]), '"recipe" must map plugin names'),
    "unknown plugin": (_recipe(recipe={"warp": {"drive": 1}}), "unknown plugin 'warp'"),
    "unknown option": (_recipe(recipe={"cache": {"size": 3}}), "unknown option cache.size"),
    "option wrong type": (_recipe(recipe={"cache": {"implementation": 7}}), "not one of"),
    "option not a choice": (_recipe(recipe={"cache": {"implementation": "huge"}}), "not one of"),
    "plugin entry a string": (_recipe(recipe={"cache": "static"}), "must map option names"),
    "bool for int": (_recipe(recipe={"compile": {"freezing": 1}}), "not one of"),
    "new_tokens negative": (_recipe(workload={"new_tokens": -1}), "positive integer"),
    "prompt_tokens as text": (_recipe(workload={"prompt_tokens": "32"}), "positive integer"),
    "batch_size zero": (_recipe(workload={"batch_size": 0}), "positive integer"),
    "unknown workload field": (_recipe(workload={"speed": 3}), "unknown workload field"),
    "no prompts": (_recipe(workload={"prompts": []}), "at least one prompt"),
    "target a list": (_recipe(target=[]), '"target" must be an object'),
    "config_only as text": (_recipe(config_only="yes"), '"config_only" must be true or false'),
    "deeply nested": (_nested(100_000), "nested too deeply"),
    "oversized": ('{"format": "' + "x" * (5 * 2**20) + '"}', "too large to be a recipe"),
    "binary garbage": (b"\xff\xfe\x00\x81recipe", "not UTF-8"),
}


def _model_dir(tmp: Path, tiny_model: str, name: str, edit) -> str:
    import shutil

    out = tmp / name
    shutil.copytree(tiny_model, out)
    edit(out)
    return str(out)


def _config(**changes):
    def edit(folder: Path):
        c = json.loads((folder / "config.json").read_text())
        c.update(changes)
        (folder / "config.json").write_text(json.dumps(c))
    return edit


def _study(text: str):
    return text


STUDIES = {  # study file text -> expected message
    "not TOML": ("model = [", "not valid TOML"),
    "trials as text": ('model = "{model}"\ntrials = "many"', "trials must be a positive whole number"),
    "trials zero": ('model = "{model}"\ntrials = 0', "trials must be a positive whole number"),
    "trials negative": ('model = "{model}"\ntrials = -3', "trials must be a positive whole number"),
    "trials fractional": ('model = "{model}"\ntrials = 1.5', "trials must be a positive whole number"),
    "unknown sampler": ('model = "{model}"\nsampler = "annealing"', "sampler must be one of"),
    "unknown key": ('model = "{model}"\nspeed = "max"', "unknown key(s) speed"),
    "timeout negative": ('model = "{model}"\ntimeout = -1', "timeout must be a positive number"),
    "pareto as text": ('model = "{model}"\npareto = "yes"', "pareto must be true or false"),
    "model a number": ("model = 7", "model must be a model name"),
    "measure as text": ('model = "{model}"\nmeasure = "fast"', "measure must be a [measure] table"),
    "target_cv as text": ('model = "{model}"\n[measure]\ntarget_cv = "low"', "measure.target_cv must be a positive number"),
    "min_runs fractional": ('model = "{model}"\n[measure]\nmin_runs = 2.5', "measure.min_runs must be a whole number"),
    "unknown measure key": ('model = "{model}"\n[measure]\nwarmups = 9', "[measure] takes only"),
    "min above max": ('model = "{model}"\n[measure]\nmin_runs = 9\nmax_runs = 3', "exceeds measure.max_runs"),
    "quality as number": ('model = "{model}"\n[measure]\nquality = 1', "measure.quality must be true or false"),
    "new_tokens zero": ('model = "{model}"\n[workload]\nnew_tokens = 0', "positive integer"),
    "unknown workload key": ('model = "{model}"\n[workload]\ncontext = 9', "unknown workload field"),
    "space choice unknown": ('model = "{model}"\n[space]\n"cache.implementation" = ["huge"]', "not among"),
    "space option unknown": ('model = "{model}"\n[space]\n"cache.size" = [3]', "unknown option(s) in the space"),
    "space a table": ('model = "{model}"\n[space]\n"cache.implementation" = { a = 1 }', "must be a list of choices"),
}

BUDGETS = {
    "fullwidth digits": ("tpot_p50<=２５ms", "budget grammar"),
    "exponent": ("tpot_p50<=1e999ms", "budget grammar"),
    "negative": ("tpot_p50<=-5ms", "budget grammar"),
    "quality above one": ("quality>=2", "floor between 0 and 1"),
    "memory without unit": ("memory<=4", "memory needs a unit"),
    "unknown metric": ("speed>=fast", "budget grammar"),
    "wrong unit": ("tpot_p50<=25GiB", "takes ms or s"),
    "emoji": ("tpot_p50<=25🚀", "budget grammar"),
}


def _cases(tmp: Path, tiny_model: str, db_path: Path) -> list[tuple[str, list[str], int, str]]:
    db = f"sqlite:///{db_path}"
    cases = []
    for name, (content, text) in RECIPES.items():
        f = tmp / f"recipe-{len(cases)}.json"
        if isinstance(content, dict):
            content = json.dumps(content).replace("{model}", tiny_model)
        f.write_bytes(content if isinstance(content, bytes) else content.encode())
        cases.append((f"recipe: {name}", ["bench", "--recipe", str(f)], 2, text))
    cases.append(("recipe: a directory", ["bench", "--recipe", str(tmp)], 2, "not a regular file"))
    cases.append(("recipe: a device", ["bench", "--recipe", "/dev/zero"], 2, "not a regular file"))
    cases.append(("recipe: missing", ["bench", "--recipe", str(tmp / "nope.json")], 2, "cannot read recipe"))
    models = {
        "remote code": (_config(model_type="totally-custom-model", auto_map={"AutoConfig": "evil.Config"}),
                        "its config does not load"),
        "wrong-typed field": (_config(hidden_size="big"), "its config does not load"),
        "config not JSON": (lambda d: (d / "config.json").write_text("{ nope"), "not valid JSON"),
        "config a list": (lambda d: (d / "config.json").write_text("[1, 2]"), "has no model_type"),
        "no model_type": (lambda d: (d / "config.json").write_text('{"hidden_size": 64}'), "has no model_type"),
        "no config": (lambda d: (d / "config.json").unlink(), "has no config.json"),
        "no tokenizer": (lambda d: [p.unlink() for p in d.iterdir() if p.name.startswith(("tokenizer", "special"))],
                         "has no tokenizer"),
    }
    for name, (edit, text) in models.items():
        folder = _model_dir(tmp, tiny_model, f"model-{len(cases)}", edit)
        cases.append((f"model: {name}", ["search", folder, "--db", db, "--trials", "1"], 1, text))
    cases.append(("model: a file", ["bench", str(tmp / "recipe-0.json")], 1, "is a file, not a checkpoint"))
    cases.append(("model: nonsense", ["bench", "not a model!!"], 1, "is not a directory, a .gguf file, a hub id"))
    cases.append(("model: a hub id not in the cache", ["bench", "nobody-org/no-such-model"], 1,
                  "not in the local Hugging Face cache"))
    fake = tmp / "weights.gguf"
    fake.write_bytes(b"GGUF but not really" * 10)
    cases.append(("model: a .gguf file that is not GGUF", ["bench", str(fake)], 1, "cannot read weights.gguf as a GGUF"))
    longer = ("workload: longer than the model's context", ["search", tiny_model, "--db", db, "--prompt-tokens", "100000"],
              2, "but '{m}' has 512 (max_position_embeddings)".format(m=tiny_model))
    cases.append(longer)
    cases.append(("workload: new tokens past the context", ["bench", tiny_model, "--new-tokens", "600"], 2,
                  "max_position_embeddings"))
    f = tmp / "long-study.toml"
    f.write_text(f'model = "{tiny_model}"\n[workload]\nprompt_tokens = 100000\n')
    cases.append(("study: a workload longer than the context", ["search", "--study-file", str(f), "--db", db], 2,
                  "max_position_embeddings"))
    cases.append(("submit: a workload longer than the context",
                  ["submit", tiny_model, "--db", db, "--prompt-tokens", "100000"], 2, "max_position_embeddings"))
    for name, (text_, expected) in STUDIES.items():
        f = tmp / f"study-{len(cases)}.toml"
        f.write_text(text_.replace("{model}", tiny_model))
        cases.append((f"study: {name}", ["search", "--study-file", str(f), "--db", db], 2, expected))
    cases.append(("study: a directory", ["search", "--study-file", str(tmp), "--db", db], 2, "is a directory"))
    bad = tmp / "latin1.toml"
    bad.write_bytes(b'model = "caf\xe9"\n')
    cases.append(("study: not UTF-8", ["search", "--study-file", str(bad), "--db", db], 2, "not UTF-8"))
    for name, (budget, expected) in BUDGETS.items():
        cases.append((f"budget: {name}", ["search", tiny_model, "--db", db, "--budget", budget], 2, expected))
    truncated = tmp / "truncated.db"
    truncated.write_bytes(db_path.read_bytes()[:3000])
    other = tmp / "other-app.db"
    with sqlite3.connect(other) as conn:
        conn.execute("create table invoices (id integer primary key, amount real)")
        conn.execute("insert into invoices (amount) values (12.5)")
    notes = tmp / "notes.txt"
    notes.write_text("my precious notes\n")
    for name, url, expected in (
            ("truncated SQLite", f"sqlite:///{truncated}", "database"),
            ("another application's SQLite", f"sqlite:///{other}", "holds other tables (invoices)"),
            ("a text file", f"sqlite:///{notes}", "not a SQLite database"),
            ("a directory", f"sqlite:///{tmp}", "is a directory"),
            ("not a URL", "nonsense", "not a database URL")):
        code = 2 if name == "not a URL" else 1
        cases.append((f"db: {name}", ["recipes", "--db", url], code, expected))
    if PG:
        from sqlalchemy.engine import make_url

        wrong = make_url(PG).set(password="wrong-secret-pw").render_as_string(hide_password=False)
        cases.append(("db: PostgreSQL, wrong password", ["recipes", "--db", wrong], 1, "***"))
    cases.append(("export: -o inside a file", ["export", "1", "-o", str(notes / "recipe.json"), "--db", db], 2,
                  "cannot write"))
    cases.append(("report: -o inside a file", ["report", "s", "-o", str(notes / "r.html"), "--db", db], 2,
                  "cannot write"))
    cases.append(("set: no value", ["bench", tiny_model, "--set", "cache.implementation"], 2, "malformed --set"))
    cases.append(("set: empty", ["bench", tiny_model, "--set", "="], 2, "malformed --set"))
    return cases


def test_hostile_inputs_fail_cleanly_and_touch_nothing(tmp_path, tiny_model):
    """Every case: a one-line error, the right non-zero exit, no traceback, no child process
    started, and every database file byte-identical."""
    db_path = tmp_path / "tune.db"
    Store(f"sqlite:///{db_path}").optuna_storage()
    cases = _cases(tmp_path, tiny_model, db_path)
    files = [db_path, tmp_path / "other-app.db", tmp_path / "truncated.db", tmp_path / "notes.txt"]
    before = {f: digest(f) for f in files}
    failures = []
    for name, args, code, text in cases:
        result = CliRunner().invoke(cli, args)
        out = result.output
        ok = (result.exit_code == code and text in out and "Traceback" not in out
              and len(out.strip().splitlines()) == 1 and "wrong-secret-pw" not in out)
        if not ok:
            failures.append(f"{name}: exit {result.exit_code} (want {code}): {out.strip()[:300]!r}")
    changed = [str(f) for f in files if digest(f) != before[f]]
    print(f"hostile inputs: {len(cases)} injected, {len(cases) - len(failures)} clean")
    assert len(cases) >= 50
    assert not failures, "\n".join(failures)
    assert not changed, f"touched: {changed}"


# -- processes -------------------------------------------------------------------------------------
#: a space of one recipe (with the test plugins loaded): every trial is the HF default plus chaos
ONE_RECIPE = {"quantization.method": ["none"], "dtype.dtype": ["auto"], "attention.implementation": ["sdpa"],
              "attention.sdpa_backend": ["auto"], "attention.gqa": ["auto"], "cache.implementation": ["dynamic"], "compile.target": ["off"],
              "corrupt.decode": ["clean"]}


def test_the_kernel_oom_killer_is_classified_oom(chaos, tiny_model):
    """A real kill: the trial joins a 1 GiB memory cgroup and touches 3 GiB; the kernel's OOM killer
    sends SIGKILL. (Without the cap the same trial succeeds: this machine has the memory.)"""
    from autotune.errors import UsageError
    from autotune.evaluate import evaluate
    from autotune.recipe import resolve
    from autotune.sources import resolve_model
    from autotune.spec import MeasurePolicy
    from autotune.target import current_target
    from autotune.workload import Workload

    policy = MeasurePolicy(min_runs=2, max_runs=2, memory_cap_bytes=2**30)
    recipe = resolve({"chaos": {"behaviour": "hog"}}, chaos)
    try:
        ev = evaluate(resolve_model(tiny_model), recipe, Workload(prompt_tokens=8, new_tokens=4),
                      current_target("cpu"), chaos, timeout=120, policy=policy)
    except UsageError as exc:
        pytest.skip(str(exc))
    assert ev.status == "oom", ev.error
    assert "killed by the kernel's OOM killer at the 1.00 GiB memory cap in the load phase" in ev.error
    print("oom: 1 injected, classified oom")


def _marked(marker: str) -> list[int]:
    """Processes started with ``marker`` in their environment (a search, its fork server, its trials)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "environ").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def _wait_for_running_trial(db_file: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # read-only polling: never create tables under the search's feet
        try:
            with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True) as conn:
                if conn.execute("select count(*) from trials where state = 'RUNNING'").fetchone()[0]:
                    return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.3)
    raise AssertionError("no trial started")


def test_kill_9_of_a_search_mid_trial_leaves_no_orphan_and_resumes(tmp_path, tiny_model):
    import optuna

    marker = f"AUTOTUNE_TEST_MARK=k9-{os.getpid()}-{time.time_ns()}"
    db_file = tmp_path / "k9.db"
    f = write_study(tmp_path, tiny_model, {"chaos.behaviour": ["slow"], **ONE_RECIPE}, trials=2)
    env = {**os.environ, "PYTHONPATH": str(TESTS), "AUTOTUNE_PLUGIN_MODULES": "plugins_for_tests",
           "CHAOS_SLOW_S": "120", marker.split("=")[0]: marker.split("=")[1]}
    cmd = [sys.executable, "-m", "autotune", "search", "--study-file", f, "--study", "k9", "--db", f"sqlite:///{db_file}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_running_trial(db_file)
    time.sleep(2)  # the trial process is sleeping inside the chaos plugin
    assert len(_marked(marker)) >= 3  # the search, its fork server, the trial
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 15
    while _marked(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = _marked(marker)
    assert not orphans, f"processes outlived the killed search: {orphans}"
    env["CHAOS_SLOW_S"] = "0"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    trials = optuna.load_study(study_name="k9", storage=f"sqlite:///{db_file}").trials
    S = optuna.trial.TrialState
    assert not any(t.state == S.RUNNING for t in trials)
    killed = [t for t in trials if t.state == S.FAIL]  # one per lane that was mid-trial
    assert 1 <= len(killed) <= 2 and not any("measurement_id" in t.user_attrs for t in killed)
    for dead in killed:
        retried = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
        assert len(retried) == 1 and retried[0].state in (S.COMPLETE, S.PRUNED)  # measured to its end
    from autotune.study import counted_trials

    assert counted_trials(optuna.load_study(study_name="k9", storage=f"sqlite:///{db_file}")) == (2, 0)
    print(f"kill -9 of a search: 1 injected, 0 orphans, {len(killed)} trials failed and retried, 0 lost")


def test_three_searches_at_once_on_a_fresh_postgresql(tmp_path, tiny_model):
    if not PG:
        pytest.skip("AUTOTUNE_TEST_PG not set: .ci/run starts PostgreSQL and sets it")
    from test_daemon import _reset_postgres

    _reset_postgres(PG)
    f = write_study(tmp_path, tiny_model, {"compile.target": ["off"], "cache.ladder": ["x2"]}, trials=2)
    procs = [subprocess.Popen([sys.executable, "-m", "autotune", "search", "--study-file", f, "--study", f"c{i}",
                               "--db", PG], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert "IntegrityError" not in err and "Traceback" not in err and "duplicate key" not in err
    print("concurrent searches: 3 started at once on a fresh database, 3 finished")


# -- the database going away -----------------------------------------------------------------------
def _pg_cluster(action: str) -> None:
    version = sorted(os.listdir("/usr/lib/postgresql"), key=lambda v: [int(x) for x in v.split(".")])[-1]
    done = subprocess.run(["pg_ctlcluster", version, "main", action, *(["-m", "fast"] if action == "stop" else [])],
                          capture_output=True, text=True, timeout=60)
    if done.returncode and "already running" not in done.stdout + done.stderr:
        raise AssertionError(f"pg_ctlcluster {action}: {(done.stdout + done.stderr).strip()}")
    if action == "start":
        from sqlalchemy import create_engine, text

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with create_engine(PG).connect() as conn:
                    conn.execute(text("select 1"))
                return
            except Exception:
                time.sleep(0.5)


@pytest.fixture
def postgres_outage():
    if not PG or not os.path.isdir("/usr/lib/postgresql"):
        pytest.skip("needs the local PostgreSQL that .ci/run starts")
    from test_daemon import _reset_postgres

    _reset_postgres(PG)
    try:
        yield _pg_cluster
    finally:
        _pg_cluster("start")


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(TESTS), "AUTOTUNE_PLUGIN_MODULES": "plugins_for_tests", **extra}


def _wait_for_a_completed_trial(study_name: str, timeout: float = 180) -> None:
    """Poll the study until one trial is complete (the study may not exist yet)."""
    import optuna

    storage = Store(PG).optuna_storage()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
            if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
                return
        except KeyError:
            pass
        time.sleep(0.3)


def test_postgresql_down_30s_under_two_daemons(postgres_outage, tmp_path, tiny_model):
    """Both daemons survive (one line per retry, no traceback), every planned trial is done exactly
    once, none is left running."""
    import optuna

    from autotune.study import counted_trials

    trials = 8
    f = write_study(tmp_path, tiny_model, {"chaos.behaviour": ["slow"], **ONE_RECIPE}, trials=trials)
    result = CliRunner().invoke(cli, ["submit", "--study-file", f, "--study", "outage", "--db", PG])
    assert result.exit_code == 0, result.output
    daemons = [subprocess.Popen([sys.executable, "-m", "autotune", "daemon", "--db", PG, "--poll", "0.5",
                                 "--heartbeat", "1", "--grace", "3", "--exit-when-idle"],
                                env=_env(CHAOS_SLOW_S="4"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True) for _ in range(2)]
    _wait_for_a_completed_trial("outage")
    gone_before = [d.poll() is not None for d in daemons]  # a daemon already done cannot meet the outage
    assert not all(gone_before), "both daemons exited before the outage: nothing was tested"
    postgres_outage("stop")
    time.sleep(30)
    postgres_outage("start")
    outs = [d.communicate(timeout=600) for d in daemons]
    for d, (out, err) in zip(daemons, outs):
        assert d.returncode == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert "database unreachable, retrying" in err or gone_before[daemons.index(d)], err[-3000:]
        assert "tuner-secret-pw" not in out + err
    study = optuna.load_study(study_name="outage", storage=Store(PG).optuna_storage())
    done, running = counted_trials(study)
    numbers = [t.number for t in study.trials]
    assert (done, running) == (trials, 0), [(t.number, t.state, t.system_attrs.get("failed_trial")) for t in study.trials]
    assert len(numbers) == len(set(numbers))
    lost = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL
            and not any(r.system_attrs.get("failed_trial") == t.number for r in study.trials)]
    assert not lost
    print(f"PostgreSQL down 30 s under 2 daemons: 2/2 daemons survived, {trials}/{trials} trials done, "
          f"0 lost, 0 duplicated, {sum(err.count('database unreachable') for _, err in outs)} retries logged")


def test_postgresql_down_under_a_search_then_resume(postgres_outage, tmp_path, tiny_model):
    """A search in flight stops with a one-line error and nothing half-written; the same command,
    once the database is back, resumes the study and finishes the plan."""
    import optuna

    from autotune.study import counted_trials

    # three different recipes (the grid of these two choices), each slow: the outage hits a trial
    space = {**ONE_RECIPE, "chaos.behaviour": ["slow"], "cache.implementation": ["dynamic", "static"],
             "attention.implementation": ["sdpa", "eager"]}
    f = write_study(tmp_path, tiny_model, space, trials=3, sampler="grid", jobs=1)  # one trial in flight
    cmd = [sys.executable, "-m", "autotune", "search", "--study-file", f, "--study", "down", "--db", PG]
    proc = subprocess.Popen(cmd, env=_env(CHAOS_SLOW_S="8"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_a_completed_trial("down")
    postgres_outage("stop")
    out, err = proc.communicate(timeout=300)
    postgres_outage("start")
    assert proc.returncode == 1, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "run the same command again to resume" in lines[0], err[-3000:]
    assert "Traceback" not in err
    again = subprocess.run(cmd, env=_env(CHAOS_SLOW_S="0"), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    study = optuna.load_study(study_name="down", storage=Store(PG).optuna_storage())
    assert counted_trials(study) == (3, 0)
    print("PostgreSQL down under a search: one-line error, resumed, 3/3 trials done")


# -- the disk filling up ---------------------------------------------------------------------------
def test_disk_full_mid_search_is_one_line_and_resumable(tmp_path, tiny_model):
    """The database file may not grow (RLIMIT_FSIZE: the kernel refuses the write, as on a full
    disk): one-line error, nothing corrupt, and the same command resumes once there is room."""
    db_file = tmp_path / "full.db"
    db = f"sqlite:///{db_file}"
    space = {**ONE_RECIPE, "chaos.behaviour": ["none", "slow", "raise", "abort"], "corrupt.decode": ["clean", "noisy"]}
    f = write_study(tmp_path, tiny_model, space, trials=2)  # fast recipes (none hangs), enough to outgrow the cap
    first = subprocess.run([sys.executable, "-m", "autotune", "search", "--study-file", f, "--study", "a",
                            "--db", db], env=_env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    cap = db_file.stat().st_size + 4096
    cmd = ["prlimit", f"--fsize={cap}", sys.executable, "-m", "autotune", "search", "--study-file", f,
           "--study", "b", "--trials", "6", "--remeasure", "--db", db]
    full = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert full.returncode == 1, full.stderr[-2000:]
    errors = [line for line in full.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and ("full" in errors[0] or "disk" in errors[0]), full.stderr[-2000:]
    assert "Traceback" not in full.stderr
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    again = subprocess.run(cmd[2:], env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    print("disk full mid-search: one-line error, integrity_check ok, resumed")
