"""Search end to end on a tiny model into a real SQLite file: what it stores, resumes, reuses, prunes and asks."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import SPACE, cli_search as search, study_file, write_study

from autotune.cli import cli
from autotune.store import Store
from autotune.store import tables as m

pytestmark = pytest.mark.filterwarnings("ignore")


def test_search_stores_every_trial(searched, db_url):
    assert searched["study"] == "s1"
    assert len(searched["trials"]) >= 3
    statuses = {t["status"] for t in searched["trials"]}
    assert statuses <= {"ok", "invalid", "error", "oom", "crash", "timeout"}
    assert searched["best"][0]["status"] == "ok" and searched["best"][0]["feasible"]
    assert searched["baseline"]["recipe"]["cache"]["implementation"] == "dynamic"
    store = Store(db_url)
    with store.session() as s:
        ids = {t["measurement_id"] for t in searched["trials"]}
        rows = s.query(m.Measurement).filter(m.Measurement.id.in_(ids)).all()
        assert len(rows) == len(ids)
        assert s.query(m.Study).filter_by(name="s1").one().best_measurement_id == searched["best"][0]["measurement_id"]
    import optuna

    study = optuna.load_study(study_name="s1", storage=db_url)
    assert len(study.trials) == len(searched["trials"])


def test_baseline_and_guide_are_enqueued_first(tiny_model, db_url):
    from autotune.budget import parse_budget, parse_objectives
    from autotune.sources import resolve_model
    from autotune.registry import get_optimizations
    from autotune.tuner import Search, SearchSpec
    from autotune.target import current_target
    from autotune.workload import Workload

    spec = SearchSpec(resolve_model(tiny_model), Workload(), current_target("cpu"), parse_budget(""),
                      parse_objectives("tpot", False))
    search = Search(spec, Store(db_url), get_optimizations())
    study = search.open_study()
    search.ask(study)
    search.ask(study)
    first, second = (t.system_attrs["fixed_params"] for t in study.trials[:2])  # the seeds, asked first
    assert first.get("cache.implementation", "dynamic") == "dynamic"
    assert first.get("compile.target", "off") == "off"
    assert second["cache.implementation"] == "static" and second["dtype.dtype"] == "bfloat16"
    if search.spec.target.has_cuda:  # the guide's recipe, as the guide writes it
        assert second["compile.target"] == "forward" and second["compile.mode"] == "reduce-overhead"
    else:  # on a CPU the measured winner comes first (int4 + AOTInductor), then the layer-compiled decode loop
        assert second["compile.target"] == "aoti" and second["quantization.method"] == "torchao-int4-weight"


def test_search_with_only_some_plugins_loaded(tmp_path, tiny_model):
    """The README's AUTOTUNE_PLUGINS=cache,compile: seeds that name other plugins are left out."""
    import os

    f = write_study(tmp_path, tiny_model, {"compile.target": ["off"], "cache.ladder": ["x2"]}, pin=False,
                    trials=2)
    env = {**os.environ, "AUTOTUNE_PLUGINS": "cache,compile"}
    proc = subprocess.run([sys.executable, "-m", "autotune", "search", "--study-file", f, "--json",
                           "--db", f"sqlite:///{tmp_path / 'few.db'}"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(proc.stdout)
    assert {t["status"] for t in payload["trials"]} == {"ok"}
    assert all(set(t["recipe"]) == {"cache", "compile"} for t in payload["trials"])


def test_resume_by_study_name_and_no_remeasuring(searched, tmp_path, tiny_model, db_url):
    store = Store(db_url)
    with store.session() as s:
        measured = s.query(m.Measurement).filter(m.Measurement.status != "invalid").count()
    f = study_file(tmp_path, tiny_model)
    result, again = search(["--study-file", f, "--study", "s1", "--trials", "3"], db_url)
    assert result.exit_code == 0, result.output
    assert len(again["trials"]) == len(searched["trials"])  # already done: nothing new
    # what the study's earlier run measured is the study's, not this run's time or figures
    assert searched["counts"]["with_figures_this_run"] == searched["counts"]["with_figures"] > 0
    assert searched["time"]["trials_measured"] > 0
    assert again["counts"]["with_figures"] == searched["counts"]["with_figures"]
    assert again["counts"]["with_figures_this_run"] == 0 and again["time"]["trials_measured"] == 0
    result, other = search(["--study-file", f, "--study", "s2", "--sampler", "grid", "--trials", "4"], db_url)
    assert result.exit_code == 0, result.output
    with store.session() as s:
        after = s.query(m.Measurement).filter(m.Measurement.status != "invalid").count()
    reused = [t for t in other["trials"] if t["reused"]]
    assert reused, "configurations measured by s1 must be reused by s2"
    assert after == measured + len([t for t in other["trials"] if not t["reused"] and t["status"] != "invalid"])


def test_budget_nobody_meets_names_the_binding_limit(tmp_path, tiny_model, db_url):
    f = study_file(tmp_path, tiny_model)
    result = CliRunner().invoke(cli, ["search", "--study-file", f, "--db", db_url, "--trials", "2",
                                      "--budget", "tpot_p50<=0.001ms"])
    assert result.exit_code == 1
    assert "tpot_p50: nearest candidate" in result.output and "> 0.0 ms" in result.output
    assert "Traceback" not in result.output
    with Store(db_url).session() as s:
        assert s.query(m.Measurement).count() >= 2  # still stored


def test_malformed_budget(tiny_model, db_url):
    result = CliRunner().invoke(cli, ["search", tiny_model, "--db", db_url, "--budget", "speed>=fast"])
    assert result.exit_code == 2 and "budget grammar" in result.output


def test_ctrl_c_stops_after_the_current_trial_and_resumes(tmp_path, tiny_model):
    import os
    import signal
    import time
    from pathlib import Path

    import sqlite3

    import optuna

    db = f"sqlite:///{tmp_path / 'int.db'}"
    f = study_file(tmp_path, tiny_model, trials=4, **{"chaos.behaviour": ["slow"]})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "AUTOTUNE_PLUGIN_MODULES": "plugins_for_tests",
           "CHAOS_SLOW_S": "3"}
    cmd = [sys.executable, "-m", "autotune", "search", "--study-file", f, "--study", "int", "--db", db]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # read-only polling: never create tables under the search's feet
        try:
            with sqlite3.connect(f"file:{tmp_path / 'int.db'}?mode=ro", uri=True) as conn:
                if conn.execute("select count(*) from trials where state = 'RUNNING'").fetchone()[0]:
                    break
        except sqlite3.OperationalError:  # no database or no tables yet
            pass
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "interrupted: run the same command again to resume" in out
    study = optuna.load_study(study_name="int", storage=db)
    done = [t for t in study.trials if t.state.is_finished()]
    assert 1 <= len(done) < 4 and not any(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from autotune.study import counted_trials

    assert counted_trials(optuna.load_study(study_name="int", storage=db))[0] == 4  # the planned total, not 4 more


def test_a_search_that_timed_out_everywhere_does_not_block_the_next(tmp_path, tiny_model):
    """Failures are not reused forever: everything timed out under a 50 ms limit (the baseline too),
    then the same search with a sane limit measures again and succeeds, on the same database."""
    db = f"sqlite:///{tmp_path / 't.db'}"
    f = study_file(tmp_path, tiny_model, trials=2)
    first = CliRunner().invoke(cli, ["search", "--study-file", f, "--db", db, "--trial-timeout", "0.05"])
    assert first.exit_code == 1 and "baseline itself failed (timeout)" in first.output, first.output
    result, payload = search(["--study-file", f], db)
    assert result.exit_code == 0, result.output
    assert payload["baseline"]["status"] == "ok" and payload["best"]
    with Store(db).session() as s:
        statuses = [r.status for r in s.query(m.Measurement).order_by(m.Measurement.id)]
    assert statuses[0] == "timeout" and statuses.count("timeout") == 1


def test_remeasure_reuses_nothing(tmp_path, tiny_model):
    db = f"sqlite:///{tmp_path / 'r.db'}"
    f = study_file(tmp_path, tiny_model, trials=2)

    def measured():
        with Store(db).session() as s:
            return s.query(m.Measurement).filter(m.Measurement.status != "invalid").count()

    assert search(["--study-file", f, "--study", "a"], db)[0].exit_code == 0
    before = measured()
    result, payload = search(["--study-file", f, "--study", "b"], db)
    assert result.exit_code == 0 and measured() == before  # study b reuses all of a's measurements
    assert all(t["reused"] for t in payload["trials"])
    result, payload = search(["--study-file", f, "--study", "c", "--remeasure"], db)
    assert result.exit_code == 0 and not any(t["reused"] for t in payload["trials"])
    assert measured() >= before + len(payload["trials"])  # the baseline and every other trial, again


def test_a_grid_search_ends_when_its_grid_does(tmp_path, tiny_model, db_url):
    """Optuna's grid sampler calls study.stop() when the trial told was the grid's last, which raises
    outside study.optimize: a one-recipe grid (a user checking one recipe over an envelope) ended in
    a traceback. The search ends with the grid, every point measured."""
    f = write_study(tmp_path, tiny_model, {**SPACE, "quantization.method": ["none"], "cache.ladder": ["x2"],
                                           "cache.implementation": ["static"]}, trials=3, sampler="grid")
    result, payload = search(["--study-file", f], db_url)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert any(t["recipe"]["cache"]["implementation"] == "static" and t["status"] == "ok" for t in payload["trials"])


def test_a_grid_over_the_whole_space_is_refused_in_one_line(tiny_model, db_url):
    """Optuna's GridSampler lists every point up front: over the whole space (hundreds of thousands
    of recipes, more in the product of choices) it took 24 GB and the kernel's OOM killer."""
    result, _ = search([tiny_model, "--sampler", "grid", "--trials", "1"], db_url)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "narrow the space" in result.output and len(result.output.strip().splitlines()) == 1
    from autotune.errors import UsageError
    from autotune.registry import get_optimizations
    from autotune.tuner import Search
    from autotune.spec import build

    with pytest.raises(UsageError, match="narrow the space"):  # when the search is set up: before any bar is drawn
        Search(build(model=tiny_model, sampler="grid"), Store(db_url), get_optimizations())


def test_seeds_get_the_policys_whole_compile_cap(tiny_model, db_url):
    """A time-boxed search caps a candidate's first call at a tenth of its time; the seeds (an
    AOTInductor seed compiles in 110-206 s cold on 2 cores) get 40% of it, or the policy's cap if more."""
    from autotune.recipe import recipe_key
    from autotune.registry import get_optimizations
    from autotune.tuner import Search
    from autotune.spec import build

    spec = build(model=tiny_model, timeout=600)
    run = Search(spec, Store(db_url), get_optimizations())
    caps = run.measurer.caps
    aoti = [r for r in run.seeds if r["compile"].get("target") == "aoti"]
    assert aoti and recipe_key(aoti[0]) in caps.seed_keys
    assert caps.base_cap("not a seed") == 60
    assert caps.base_cap(recipe_key(aoti[0])) == 240 > spec.policy.max_first_call_s == 120
    short = Search(build(model=tiny_model, timeout=200), Store(db_url), get_optimizations()).measurer.caps
    assert short.base_cap(recipe_key(aoti[0])) == 120


def test_once_a_seed_fits_the_budget_the_seeds_compiled_like_it_get_the_ordinary_cap(tiny_model, db_url):
    """A seed's share of the search pays for one figure of its compile target: once the int4
    AOTInductor seed is within the budget, the int8 one (110 s of a fresh host's 600) competes like any
    candidate; a seed over the budget, or the baseline, leaves the others' share alone."""
    from autotune.figures import Figures
    from autotune.measurer import TrialRecord
    from autotune.recipe import recipe_key
    from autotune.registry import get_optimizations
    from autotune.states import Status
    from autotune.tuner import Search
    from autotune.spec import build

    run = Search(build(model=tiny_model, timeout=600, budget="memory<=2GiB"), Store(db_url), get_optimizations())
    m, caps = run.measurer, run.measurer.caps
    aoti = [r for r in run.seeds if r["compile"].get("target") == "aoti"]
    others = [r for r in run.seeds if r["compile"].get("target") not in ("aoti", "off")]
    assert len(aoti) == 2 and others, [r["compile"] for r in run.seeds]
    first, second = aoti

    def fits(recipe, memory_gib):
        figures = Figures(peak_memory_bytes=memory_gib * 2**30, quality=0.97)
        return TrialRecord(0, 1, recipe, Status.OK, figures, None, False, missed=run.budget.missed(figures))

    m.note_incumbent(fits(run.baseline_recipe, 1))
    m.note_incumbent(fits(first, 3))  # over the budget
    assert caps.base_cap(recipe_key(second), second) == 240
    m.note_incumbent(fits(first, 1))
    assert caps.base_cap(recipe_key(second), second) == 60
    assert all(caps.base_cap(recipe_key(r), r) == 240 for r in others)


def test_a_compile_past_the_cap_stands_for_searches_with_no_larger_cap(chaos, tmp_path, tiny_model, monkeypatch):
    """Compile time is the recipe's, the target's and the versions' (all in the reuse key), not the
    incumbent's: a candidate whose first call ran past a 2 s cap is not compiled again by another
    study with a cap of at most 2 s; a larger cap measures it again."""
    from autotune.tuner import Search
    from autotune.spec import build, with_policy

    monkeypatch.setenv("CHAOS_SLOW_S", "60")
    store = Store(f"sqlite:///{tmp_path / 'cap.db'}")
    f = study_file(tmp_path, tiny_model, trials=1, **{"chaos.behaviour": ["slow-compile"]})

    def trial(study: str, cap: float):
        spec = with_policy(build(study_file=f, study_name=study), max_first_call_s=cap)
        records = Search(spec, store, chaos).run(strict=False).records
        assert len(records) == 1 and records[0].status.value == "pruned", records
        return records[0]

    first = trial("a", 2.0)
    assert not first.reused and first.figures.first_call_cap_s == 2.0
    import optuna

    from autotune.study import Attr

    told = optuna.load_study(study_name="a", storage=store.url).get_trials()
    assert [t.user_attrs.get(Attr.COMPILE_CAPPED) for t in told] == [True]  # what pauses refinements
    again = trial("b", 2.0)
    assert again.reused and again.measurement_id == first.measurement_id
    larger = trial("c", 3.0)
    assert not larger.reused and larger.measurement_id != first.measurement_id
    assert larger.figures.first_call_cap_s == 3.0
    # the same study resumed with a larger cap measures it again too
    spec = with_policy(build(study_file=f, study_name="c", trials=2, jobs=2), max_first_call_s=4.0)
    records = Search(spec, store, chaos).run(strict=False).records
    assert [r.figures.first_call_cap_s for r in records] == [3.0, 4.0], records
    # it compiled sharing the CPU with another trial (two lanes): a search that runs one trial at a
    # time measures it again; one with as many lanes reuses it
    assert spec.lanes == 2 and records[-1].figures.lanes == 2
    for study, jobs, reused in (("d", 1, False), ("e", 2, True)):
        spec = with_policy(build(study_file=f, study_name=study, jobs=jobs), max_first_call_s=4.0)
        again = Search(spec, store, chaos).run(strict=False).records
        assert len(again) == 1 and again[0].reused == reused, (study, again)


def test_trials_say_what_proposed_them_and_refinements_are_untried(tmp_path, tiny_model, db_url):
    """After the sampler's random start every other proposal refines the leader (an untried recipe
    one option away); each trial's proposed_by says which it was."""
    import optuna

    from autotune.proposals import TPE_STARTUP

    f = study_file(tmp_path, tiny_model, trials=6, **{"cache.implementation": ["dynamic", "static"]})
    result, payload = search(["--study-file", f, "--study", "r"], db_url)
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="r", storage=db_url).get_trials()
    kinds = [t.user_attrs.get("proposed_by", "sampler") for t in trials]
    assert "refinement" in kinds and kinds.index("refinement") >= TPE_STARTUP, kinds
    params = [tuple(sorted(t.params.items())) for t in trials]
    for i, kind in enumerate(kinds):
        if kind == "refinement":  # never a repeat of an earlier trial (the sampler may repeat it later)
            assert params[i] not in params[:i], (i, kinds, params)


def test_the_best_is_measured_again_beside_a_fresh_baseline_at_the_end(tmp_path, tiny_model, db_url, monkeypatch):
    """Both sides of the headline ratio are measured at one time: the HF default and the best, back to
    back in their own processes, after the trials; kept on the study, never stored as measurements."""
    import optuna

    from autotune import measurer

    monkeypatch.setattr(measurer, "SIDE_BY_SIDE_AFTER_S", 0.0)  # a tiny model's search is seconds old
    # the HF default is no trial of this space: the best is never the baseline (whichever is faster)
    f = study_file(tmp_path, tiny_model, trials=2, **{"quantization.method": ["torchao-int8-weight"]})
    result, payload = search(["--study-file", f, "--study", "sbs"], db_url)
    assert result.exit_code == 0, result.output
    sbs = payload["side_by_side"]
    assert sbs["measurement_id"] == payload["best"][0]["measurement_id"]
    best_id, base_id = sbs["measurement_id"], payload["baseline"]["measurement_id"]
    assert best_id != base_id and sbs["apart_s"] > 0 and sbs["seconds"] >= sbs["apart_s"]
    for side, stored in (("baseline", payload["baseline"]), ("best", payload["best"][0])):
        fresh = sbs[side]
        assert fresh["e2e_ms_p50"] > 0 and fresh["e2e_ms_p50"] != stored["e2e_ms_p50"]  # measured again
        assert [(s["prompt_tokens"], s["new_tokens"]) for s in fresh["shapes"]] == \
            [(s["prompt_tokens"], s["new_tokens"]) for s in stored["shapes"]]
    assert sbs["speedup_tokens_per_s"] == pytest.approx(sbs["best"]["tokens_per_s"] / sbs["baseline"]["tokens_per_s"])
    with Store(db_url).session() as s:  # not stored as measurements: those are the trials' (and baselines')
        stored = {row.tokens_per_s for row in s.query(m.Measurement).all()}
    assert sbs["best"]["tokens_per_s"] not in stored and sbs["baseline"]["tokens_per_s"] not in stored
    study = optuna.load_study(study_name="sbs", storage=db_url)
    assert study.user_attrs["side_by_side"]["best"]["tokens_per_s"] == sbs["best"]["tokens_per_s"]
    text = CliRunner().invoke(cli, ["search", "--study-file", f, "--study", "sbs2", "--db", db_url])
    assert text.exit_code == 0, text.output
    assert "side by side at the end (the HF default, then recipe" in text.output

    off, payload = search(["--study-file", f, "--study", "sbs3", "--no-side-by-side"], db_url)
    assert off.exit_code == 0 and payload["side_by_side"] is None


def test_the_time_kept_for_the_pair_at_the_end_follows_the_best_without_its_compile():
    """The pair at the end runs the HF default again and the best from its programs on disk: the time a
    time-boxed search keeps for it is the baseline's trial and the best's, less quality, the rounds past
    the pair's cap, and the best's compile (twice the baseline's kept 66 s where the pair took 43)."""
    from autotune.figures import Figures
    from autotune.measurer import SIDE_BY_SIDE_MEASURE_S, Measurer, TrialRecord
    from autotune.states import Status

    m = Measurer.__new__(Measurer)
    base = Figures(wall_s=46.0, measure_s=26.0, quality_s=2.2, first_call_s=1.9, warmup_s=1.9)
    m.baseline_record = TrialRecord(-1, 1, {}, Status.OK, base, None, False)
    m._best_feasible = None
    alone = 2 * (46.0 - 26.0 - 2.2 + SIDE_BY_SIDE_MEASURE_S)
    assert m.side_by_side_reserve() == pytest.approx(alone)  # nothing beat the baseline yet: twice its own
    m._best_feasible = Figures(wall_s=99.0, measure_s=8.6, quality_s=0.6, first_call_s=82.7, warmup_s=0.5)
    m._best_here = True
    best = (99.0 - 8.6 - 0.6 + 8.6) - (82.7 - 0.5)
    assert m.side_by_side_reserve() == pytest.approx(alone / 2 + best)
    m._best_here = False  # measured by another host or run: it compiles (or loads) here, as it did there
    assert m.side_by_side_reserve() == pytest.approx(alone / 2 + best + 82.7 - 0.5)
    # a baseline whose envelope pass was its one round (no measured rounds): in the pair that pass is the
    # first of its two rounds, so one round more of it
    m._best_feasible = None
    m.baseline_record.figures = Figures(wall_s=20.0, measure_s=0.0, quality_s=2.2, first_call_s=1.9, warmup_s=1.9,
                                        shapes=[{"e2e_ms_p50": 2000.0}, {"e2e_ms_p50": 3000.0}])
    assert m.side_by_side_reserve() == pytest.approx(2 * (20.0 - 2.2 + 5.0))
    # a round longer than the pair's cap on rounds is measured whole (the EPYC's HF default: 22 s a round,
    # where 15 s were kept and the pair took 24 s more than it kept)
    m.baseline_record.figures.shapes = [{"e2e_ms_p50": 5000.0}, {"e2e_ms_p50": 6000.0}, {"e2e_ms_p50": 11000.0}]
    assert m.side_by_side_reserve() == pytest.approx(2 * (20.0 - 2.2 + 22.0))
    # such a baseline is a time-boxed search's that measures the pair at its end; any other's is measured
    from types import SimpleNamespace

    from autotune.spec import MeasurePolicy

    for timeout, pair, one_round in ((600.0, True, True), (None, True, False), (600.0, False, False)):
        m.spec = SimpleNamespace(timeout=timeout, side_by_side=pair, policy=MeasurePolicy())
        assert m.baseline_policy().pass_round is one_round
        # a time-boxed search's trials take their envelope pass as their first round; the pair always does
        assert m.trial_policy().pass_first is m.baseline_policy().pass_first is (timeout is not None)
        assert m.side_by_side_policy().pass_first and not m.side_by_side_policy().quality


def test_a_time_boxed_search_starts_no_trial_that_would_end_past_its_deadline(tiny_model, db_url, monkeypatch):
    """The timeout covers the whole search, from the caller's clock: no trial starts unless a typical one
    of the run (the median wall time of the trials with figures it measured) ends before the deadline.
    The README job ran its last trial 10-14 s past the deadline and ended 20-45 s past its 600 s."""
    import time

    from autotune.figures import Figures
    from autotune.measurer import Measurer, TrialRecord
    from autotune.registry import get_optimizations
    from autotune.states import Status
    from autotune.study import counted_trials
    from autotune.tuner import Search
    from autotune.spec import build

    m = Measurer.__new__(Measurer)
    m._walls, m._best_feasible, m._measured_now = [], None, {1, 3, 4, 5}
    assert m.typical_trial_s() == 0.0
    for i, wall, status in ((1, 10.0, Status.OK), (2, 99.0, Status.OK), (3, 30.0, Status.OK),
                            (4, 500.0, Status.PRUNED), (5, 20.0, Status.OK)):
        m.note_incumbent(TrialRecord(0, i, {}, status, Figures(wall_s=wall), None, False, missed=["memory"]))
    # measured by this run, with figures: not another study's or an earlier run's (2), not a pruned one (4)
    assert m.typical_trial_s() == 20.0

    runs = iter(range(3))

    def trials_run(started=None):
        run = Search(build(model=tiny_model, timeout=600, trials=3, budget="memory<=2GiB", study_name=f"s{next(runs)}",
                           space={"runtime.threads": [1, "auto"]}), Store(db_url), get_optimizations())
        run.run(strict=False, started=started)
        return counted_trials(run.open_study())[0]

    assert trials_run() == 3  # the plan: plenty of time
    assert trials_run(started=time.monotonic() - 599) == 0  # the caller's clock: a second left, the baseline only
    monkeypatch.setattr(Measurer, "typical_trial_s", lambda self: 600.0)
    assert trials_run() == 0  # a typical trial would end past the deadline
