"""The compile-time predictor (autotune.compile_cost) and how the search spends its time on it: a
candidate predicted past its cap gets a cap that fits or is deferred, never launched blind."""
from __future__ import annotations

import time

import pytest
from conftest import FAST

from autotune.compile_cost import CompileCost, Past, distance, flat
from autotune.recipe import resolve, recipe_key
from autotune.states import Status
from autotune.store import Store, queries, writes



def recipe(target="forward", mode="default", dtype="bfloat16"):
    return {"compile": {"target": target, "mode": mode}, "dtype": {"dtype": dtype}}


def test_nearest_rows_of_the_nearest_tier():
    history = [Past(1, 1, "h", "v", recipe(), 40.0), Past(2, 1, "h", "v", recipe(), 44.0),
               Past(3, 1, "h", "v", recipe(dtype="float32"), 30.0),
               Past(4, 2, "h", "v", recipe(mode="max-autotune"), 100.0, weights_bytes=2e9),
               Past(5, 1, "other", "v", recipe(mode="max-autotune"), 500.0)]
    cost = CompileCost(history, "h", "v", model_id=1, weights_bytes=1e9)
    exact = cost.predict(recipe())
    assert exact.seconds == 42.0 and exact.n == 2 and "of this recipe here" in exact.basis
    # nothing of this mode on this model here: the other model's, scaled by size, beats another host's
    other = cost.predict(recipe(mode="max-autotune"))
    assert other.seconds == 50.0 and "other models" in other.basis
    assert cost.predict(recipe(target="aoti")) is None  # another compile target says nothing
    assert distance(flat(recipe()), flat(recipe(target="off"))) == float("inf")
    # one decoder layer compiled for all is not the whole model compiled (a missing scope is the model)
    layers = {**recipe(target="decode"), "compile": {"target": "decode", "mode": "default", "scope": "layers"}}
    assert distance(flat(layers), flat(recipe(target="decode"))) == float("inf")
    assert distance(flat({**layers, "compile": {**layers["compile"], "scope": "model"}}),
                    flat(recipe(target="decode"))) == 0


def test_a_recipe_not_measured_itself_is_predicted_from_its_nearest_rows_weighted():
    """Not the nearest row alone (one eager first call of 2-5 s is noisy: the README job's error over all
    first calls reached 27-34%), but the nearest few, the nearer the heavier; a recipe measured itself is
    predicted from its own rows only."""
    near, further = recipe(dtype="float32"), recipe(mode="max-autotune")
    cost = CompileCost([Past(1, 1, "h", "v", near, 40.0), Past(2, 1, "h", "v", further, 80.0)], "h", "v", 1)
    assert distance(flat(recipe()), flat(near)) < distance(flat(recipe()), flat(further))
    guess = cost.predict(recipe())
    assert 40.0 < guess.seconds < 50.0 and guess.n == 2 and "2 similar here" in guess.basis
    cost.add(Past(3, 1, "h", "v", recipe(), 30.0))
    assert cost.predict(recipe()).seconds == 30.0 and "1 of this recipe here" in cost.predict(recipe()).basis
    # one similar compile stopped at a 60 s cap: at least 60 s, exactly, so a 60 s cap defers it
    bound = CompileCost([Past(1, 1, "h", "v", near, 60.0, censored=True)], "h", "v", 1).predict(recipe())
    assert bound.at_least and bound.seconds == 60.0
    # a bound among the nearest raises the estimate; a further one does not make a finished compile's a bound
    both = CompileCost([Past(1, 1, "h", "v", near, 60.0, censored=True), Past(2, 1, "h", "v", further, 40.0)],
                       "h", "v", 1).predict(recipe())
    assert both.at_least and both.seconds == 60.0
    both = CompileCost([Past(1, 1, "h", "v", near, 40.0), Past(2, 1, "h", "v", further, 80.0, censored=True)],
                       "h", "v", 1).predict(recipe())
    assert not both.at_least and both.seconds == 40.0
    # its own compiles that finished say more than its own stopped ones; with none, the largest bound
    own = CompileCost([Past(1, 1, "h", "v", recipe(), 60.0, censored=True), Past(2, 1, "h", "v", recipe(), 120.0,
                                                                                 censored=True)], "h", "v", 1)
    assert own.predict(recipe()).seconds == 120.0 and own.predict(recipe()).at_least
    own.add(Past(3, 1, "h", "v", recipe(), 50.0))
    assert own.predict(recipe()).seconds == 50.0 and not own.predict(recipe()).at_least


def test_other_hosts_compiles_are_scaled_by_what_this_host_measured_against_them():
    """The shipped prior is a Xeon's: on an AMD EPYC the int4 ahead-of-time seed compiled in 130 s against
    the 69 s the prior said, and the README job's median prediction error was 46%."""
    xeon = [Past(-1, 1, "xeon", "v", recipe(target="aoti"), 70.0),
            Past(-2, 1, "xeon", "v", recipe(target="decode"), 10.0),
            Past(-3, 1, "xeon", "v", recipe(target="generate"), 60.0, censored=True)]
    cost = CompileCost(xeon, "epyc", "v", 1)
    assert cost.host_factor() == 1.0 and cost.predict(recipe(target="aoti")).seconds == 70.0  # nothing measured here
    cost.add(Past(1, 1, "epyc", "v", recipe(target="decode"), 20.0))  # twice the Xeon's
    aoti = cost.predict(recipe(target="aoti"))
    assert cost.host_factor() == pytest.approx(2.0) and aoti.seconds == pytest.approx(140.0)
    assert "x2.0 for this host" in aoti.basis
    bound = cost.predict(recipe(target="generate"))  # a bound there is a bound twice as high here
    assert bound.at_least and bound.seconds == pytest.approx(120.0)
    assert cost.predict(recipe(target="decode")).seconds == 20.0  # this host's own rows are not scaled
    # held back, a row says nothing of the factor it would be predicted with
    assert cost.host_factor(exclude=1) == 1.0
    assert cost.predict(recipe(target="decode"), exclude=1).seconds == pytest.approx(10.0)
    # eager first calls, stopped compiles and other models here say nothing of this host's compile speed
    cost.add(Past(2, 1, "epyc", "v", recipe(target="off"), 500.0))
    cost.add(Past(3, 1, "epyc", "v", recipe(target="aoti"), 900.0, censored=True))
    assert cost.host_factor() == pytest.approx(2.0)
    cost.add(Past(4, 1, "epyc", "v", recipe(target="aoti"), 7000.0))  # 100 times: past the range, noise
    assert cost.host_factor() == 4.0  # (the median of 2 and 100: their geometric mean, 14)


def test_a_compile_stopped_at_the_cap_is_a_lower_bound():
    cost = CompileCost([Past(1, 1, "h", "v", recipe(), 60.0, censored=True)], "h", "v", 1)
    guess = cost.predict(recipe())
    assert guess.at_least and guess.seconds == 60.0 and guess.text().startswith(">= 60 s")


def test_error_holds_each_measurement_back():
    history = [Past(1, 1, "h", "v", recipe(), 40.0), Past(2, 1, "h", "v", recipe(), 60.0),
               Past(3, 1, "h", "v", recipe(), 50.0, censored=True)]
    error, n = CompileCost(history, "h", "v", 1).error()
    assert n == 2  # the censored row is never scored, nor predicted from beside a compile that finished
    # 40 held back: predicted from 60 (50% off); 60: from 40 (a third off)
    assert error == pytest.approx((0.5 + 1 / 3) / 2)
    # over the recipes that compile only: an eager first call (compile.target off) is no compile
    eager = [Past(6, 1, "h", "v", recipe(target="off"), 2.0), Past(7, 1, "h", "v", recipe(target="off"), 6.0)]
    cost = CompileCost(history + eager, "h", "v", 1)
    assert cost.error()[1] == 4 and cost.error(compiled_only=True) == (pytest.approx((0.5 + 1 / 3) / 2), 2)


@pytest.fixture
def tiny_search(tiny_model, tmp_path):
    from dataclasses import replace

    from autotune.budget import parse_budget, parse_objectives
    from autotune.registry import get_optimizations
    from autotune.sources import resolve_model
    from autotune.spec import MeasurePolicy, SearchSpec
    from autotune.target import current_target
    from autotune.tuner import Search
    from autotune.workload import Workload

    policy = replace(MeasurePolicy(**FAST), max_first_call_s=60.0)
    spec = SearchSpec(resolve_model(tiny_model), Workload(prompt_tokens=8, new_tokens=6, max_context=64),
                      current_target("cpu"), parse_budget(""), parse_objectives("tpot", False), policy=policy,
                      restrict={"compile.target": ["forward"], "runtime.threads": ["auto"]})
    return Search(spec, Store(f"sqlite:///{tmp_path / 'tune.db'}"), get_optimizations())


def test_a_candidate_predicted_past_its_cap_is_deferred_and_remembered(tiny_search):
    """The history says this recipe's first call took 500 s: under a 60 s policy cap it is recorded
    as pruned (deferred) with the prediction, without a trial process; a later ask reuses that."""
    search = tiny_search
    search.baseline()
    candidate = resolve({"compile": {"target": "forward"}}, search.optimizations)
    past = writes.record_measurement(
        search.store, search.ids, recipe_key=recipe_key(candidate),
        recipe=candidate, study="earlier", is_baseline=False, status=Status.OK.value, error=None,
        figures={"first_call_s": 500.0, "tpot_ms_p50": 1.0}, reuse_key="another policy", trial_limit_s=None)
    assert any(p.id == past.id for p in queries.compile_history(search.store))
    search.measurer.caps.cost.add(next(p for p in queries.compile_history(search.store) if p.id == past.id))
    started = time.monotonic()
    record = search.measurer.measure_or_reuse(candidate)
    assert time.monotonic() - started < 5, "a deferred candidate is never launched"
    assert record.status == Status.PRUNED and record.figures.phase == "deferred"
    assert record.figures.predicted_first_call_s == 500.0
    assert "predicted at 500 s" in record.error and "60 s cap" in record.error
    again = search.measurer.measure_or_reuse(candidate)
    assert again.measurement_id == record.measurement_id  # not proposed again under the same cap
    # the deferred row is not history: it measured nothing
    assert all(p.id != record.measurement_id for p in queries.compile_history(search.store))


def test_a_recipe_the_team_compiled_loads_rather_than_compiles(tiny_search):
    """With the team compile cache holding a recipe's artifact its first call loads it: no compile to
    predict, never deferred on one; and such a first call (seconds) teaches nothing of the recipe's
    compile — it stays out of the history another host's prediction rests on."""
    search = tiny_search
    search.baseline()
    candidate = resolve({"compile": {"target": "forward"}}, search.optimizations)
    for seconds, note in ((500.0, None), (1.5, "loaded 3f2a9c0e11aa (4.4 MB, 1 AOTInductor package)")):
        writes.record_measurement(
            search.store, search.ids, recipe_key=recipe_key(candidate), recipe=candidate, study="earlier",
            is_baseline=False, status=Status.OK.value, error=None,
            figures={"first_call_s": seconds, "tpot_ms_p50": 1.0, "compile_shared": note}, reuse_key="x",
            trial_limit_s=None)
    history = [p for p in queries.compile_history(search.store) if p.recipe == candidate]
    assert [p.seconds for p in history] == [500.0]
    caps = search.measurer.caps
    caps.cost.add(history[0])
    key = recipe_key(candidate)
    assert caps.plan(candidate, key)[1] is True  # 500 s predicted: deferred
    cap, defer, predicted = caps.plan(candidate, key, shared=True)
    assert not defer and predicted is None and cap == caps.base_cap(key)


def test_a_compile_finished_after_the_search_stands_for_no_measurement(tiny_search):
    """A candidate compiled after its search (:mod:`autotune.backfill`, phase "compiled only") measured
    nothing: the newest row of its recipe in this very study, it is still not taken for a measurement
    (a study resumed on the host measures the candidate); its first call's time is compile history."""
    search = tiny_search
    search.baseline()
    candidate = resolve({"quantization": {"method": "torchao-int8-weight"}}, search.optimizations)
    row = writes.record_measurement(
        search.store, search.ids, recipe_key=recipe_key(candidate), recipe=candidate, study=search.study_name,
        is_baseline=False, status=Status.PRUNED.value, error="compiled after its search",
        figures={"phase": "compiled only", "first_call_s": 2.0, "compile_artifact": "ab" * 32},
        reuse_key=search.measurer.reuse_key, trial_limit_s=None)
    assert any(p.id == row.id and p.seconds == 2.0 for p in queries.compile_history(search.store))
    record = search.measurer.measure_or_reuse(candidate)
    assert record.measurement_id != row.id and record.status == Status.OK, (record.status, record.error)


def test_a_compile_that_timed_out_after_the_search_is_a_bound_in_the_history(tiny_search):
    """A compile after the search (:mod:`autotune.backfill`) killed at its time limit in its first call
    (the README job's compiled generate: 239 s and no artifact) says its compile takes at least that
    long: the history counts it as a bound, so the next search of the recipe defers it under a 60 s cap
    rather than launching it blind."""
    search = tiny_search
    search.baseline()
    candidate = resolve({"compile": {"target": "forward"}}, search.optimizations)
    row = writes.record_measurement(
        search.store, search.ids, recipe_key=recipe_key(candidate), recipe=candidate, study=search.study_name,
        is_baseline=False, status=Status.TIMEOUT.value, error="no result within 239 s",
        figures={"phase": "compiled only", "first_call_past_s": 239.0}, reuse_key=search.measurer.reuse_key,
        trial_limit_s=239.0)
    (past,) = [p for p in queries.compile_history(search.store) if p.id == row.id]
    assert past.censored and past.seconds == 239.0
    caps = search.measurer.caps
    caps.cost.add(past)
    cap, defer, predicted = caps.plan(candidate, recipe_key(candidate))
    assert defer and predicted.at_least and predicted.seconds == 239.0


def test_the_background_compiles_what_it_can_finish_first(tiny_search):
    """After a search, compiles predicted from finished ones go first, cheapest first, each within three
    times its prediction; a bound (">= 60 s": its top unknown) goes last with all that is left; a
    recipe whose background compile already failed under the limit it would get now is not tried again;
    and no time for it (``--finish-compiles 0``) starts nothing."""
    from autotune.backfill import Pending, order, pending, start
    from autotune.figures import Figures
    from autotune.measurer import TrialRecord

    bound, cheap, dear = (Pending({"a": {}}, 60.0, "deferred", bound=True), Pending({"b": {}}, 72.0, "deferred"),
                          Pending({"c": {}}, 164.0, "deferred"))
    assert order([bound, dear, cheap]) == [cheap, dear, bound]
    assert cheap.limit(600) == 216.0 and bound.limit(600) == 600 and dear.limit(100) == 100
    assert Pending({}, 5.0, "x").limit(600) == 60.0

    search = tiny_search
    search.baseline()
    m = search.measurer
    m.compile_cache = "redis://:pw@nowhere:6379/0"  # (pending reads the database only)
    candidate = resolve({"compile": {"target": "forward"}}, search.optimizations)
    deferred = Figures(phase="deferred", first_call_cap_s=60.0, predicted_first_call_s=90.0)
    records = [TrialRecord(0, 1, candidate, Status.PRUNED, deferred, "deferred", reused=False)]
    (item,) = pending(m, records, 600.0)
    assert item.recipe == candidate and item.why == "deferred"
    assert start(m, records, 0) is None, "--finish-compiles 0 started a background"
    writes.record_measurement(
        search.store, search.ids, recipe_key=recipe_key(candidate), recipe=candidate, study=search.study_name,
        is_baseline=False, status=Status.TIMEOUT.value, error="no result within 600 s",
        figures={"phase": "compiled only"}, reuse_key=m.reuse_key, trial_limit_s=600.0)
    assert m.failed_background_limits(candidate) == 600.0
    assert pending(m, records, 600.0) == [], "tried again under the limit it failed under"


def test_a_cap_that_fits():
    """Predicted 40 s against a 30 s cap of a time-boxed search: a 52 s cap when the policy allows it
    and the time left affords it; deferred when it does not. Seeds get 40% of the search's time, or
    the policy's cap when more."""
    from autotune.compile_cost import CompileCaps, Prediction
    from autotune.spec import MeasurePolicy

    caps = CompileCaps(MeasurePolicy(max_first_call_s=60.0), timeout=300, seed_keys={"seed"})
    assert caps.base_cap("seed") == 120.0 and caps.base_cap("other") == 30.0  # 40% of 300 s, above the policy's
    guess = Prediction(40.0, 1, "1 of this recipe here")
    assert caps.cap_for(guess, 30.0) == (pytest.approx(52.0), False)
    assert caps.cap_for(Prediction(20.0, 1, "x"), 30.0) == (30.0, False)
    assert caps.cap_for(None, 30.0) == (30.0, False)
    caps.deadline = time.monotonic() + 120  # a quarter of what is left is under 52 s
    assert caps.cap_for(guess, 30.0) == (30.0, True)
    caps.deadline = None
    assert caps.cap_for(Prediction(50.0, 1, "x"), 30.0) == (30.0, True)  # 65 s is past the policy's 60 s
    # a like recipe stopped at this very cap took at least the cap: this one is deferred, not run to it again
    assert caps.cap_for(Prediction(60.0, 1, "x", at_least=True), 60.0) == (60.0, True)
    # and a bound past the cap gets no cap "that fits" (the bound says nothing of the top): deferred
    assert caps.cap_for(Prediction(40.0, 1, "x", at_least=True), 30.0) == (30.0, True)
    assert caps.cap_for(Prediction(40.0, 1, "x"), 30.0) == (pytest.approx(52.0), False)
    # a prediction that fits but not its margin gets the margin, within the time left
    assert caps.cap_for(Prediction(60.0, 1, "x"), 60.0) == (pytest.approx(78.0), False)
    assert caps.cap_for(Prediction(25.0, 1, "x"), 30.0) == (pytest.approx(32.5), False)
    assert caps.cap_for(Prediction(185.0, 1, "x"), 240.0) == (pytest.approx(240.5), False)  # a seed's 40%
    assert caps.cap_for(Prediction(50.0, 1, "x", at_least=True), 60.0) == (60.0, False)  # a bound under it
    caps.deadline = time.monotonic() + 38.5  # the time left caps it: 38.3 s predicted does not fit in it
    assert caps.cap_for(Prediction(38.3, 1, "x"), 38.5) == (38.5, True)
    caps.deadline = time.monotonic() + 200
    assert caps.cap_for(Prediction(185.0, 1, "x"), 200.0) == (200.0, True)


def test_a_seed_compiled_like_one_that_fits_is_deferred_on_its_prediction():
    """After the int4 AOTInductor seed fits the budget, the int8 one predicted at 92 s from it is
    deferred under the ordinary cap (60 s) rather than run for 110 s under a seed's 240; a seed of
    another compile target keeps its share."""
    from autotune.compile_cost import CompileCaps, Prediction
    from autotune.spec import MeasurePolicy

    aoti, layers = {"compile": {"target": "aoti"}}, {"compile": {"target": "decode", "scope": "layers"}}
    caps = CompileCaps(MeasurePolicy(max_first_call_s=60.0), timeout=600, seed_keys={"int4", "int8", "layers"})

    class Cost:
        def predict(self, recipe):
            return Prediction(92.0, 1, "1 of the same compile target here")

    caps.cost = Cost()
    assert caps.plan(aoti, "int8")[:2] == (240.0, False)
    caps.seed_fits(aoti, "not a seed")
    caps.seed_fits({"compile": {"target": "off"}}, "int8")
    assert caps.plan(aoti, "int8")[:2] == (240.0, False)
    caps.seed_fits(aoti, "int4")
    assert caps.plan(aoti, "int8")[:2] == (60.0, True)
    assert caps.plan(layers, "layers")[:2] == (240.0, False)


def test_no_first_call_runs_past_the_searchs_deadline():
    """A seed's 120 s cap shrinks to the time the search has left (at least 10 s), and a candidate
    predicted past what is left is deferred, not launched to be stopped."""
    from autotune.compile_cost import CompileCaps, MIN_CAP_S, Prediction
    from autotune.spec import MeasurePolicy

    caps = CompileCaps(MeasurePolicy(max_first_call_s=60.0), timeout=300, seed_keys={"seed"})
    assert caps.plan({}, "seed")[:2] == (120.0, False)
    caps.deadline = time.monotonic() + 50
    cap, defer, _ = caps.plan({}, "seed")
    assert 45 < cap <= 50 and not defer
    caps.deadline = time.monotonic() + 2
    assert caps.plan({}, "seed")[0] == MIN_CAP_S
    caps.deadline = time.monotonic() + 50

    class Cost:
        def predict(self, recipe):
            return Prediction(100.0, 1, "1 of this recipe here")

    caps.cost = Cost()
    assert caps.plan({}, "seed")[1] is True


def test_with_nothing_similar_the_nearest_of_the_same_compile_target_predicts():
    """A recipe five weighted options away from every row is not launched blind: the nearest row that
    compiles the same thing predicts it (another target still says nothing)."""
    cost = CompileCost([Past(1, 1, "h", "v", recipe(), 40.0)], "h", "v", 1)
    far = {**recipe(mode="max-autotune", dtype="float32"), "cache": {"implementation": "static"}}
    assert distance(flat(far), flat(recipe())) > 4
    guess = cost.predict(far)
    assert guess.seconds == 40.0 and "of the same compile target" in guess.basis
    assert cost.predict(recipe(target="aoti")) is None


def test_the_shipped_prior_warns_a_fresh_time_boxed_cpu_search(tiny_search):
    """On an empty database a time-boxed CPU search knows the whole forward's compile ran past 160 s for
    a model of SmolLM2's size (scaled down for a smaller one); a search without a timeout launches as before."""
    from dataclasses import replace

    from autotune.compile_cost import shipped_prior

    prior = shipped_prior()
    forward = next(p for p in prior if p.recipe["compile"]["target"] == "forward")
    assert forward.censored and forward.seconds >= 160
    smollm = CompileCost(prior, "here", "now", model_id=1, weights_bytes=forward.weights_bytes)
    guess = smollm.predict(forward.recipe)
    assert guess.at_least and guess.seconds >= 160 and "other hosts" in guess.basis
    small = CompileCost(prior, "here", "now", model_id=1, weights_bytes=forward.weights_bytes / 100)
    assert small.predict(forward.recipe).seconds == pytest.approx(guess.seconds / 100)

    search = tiny_search
    search.baseline()
    assert all(p.id > 0 for p, _ in search.measurer.caps.cost.history)  # no timeout: only this database's rows
    search.spec = search.measurer.spec = replace(search.spec, timeout=300.0)
    search.baseline()
    assert sum(p.id < 0 for p, _ in search.measurer.caps.cost.history) == len(prior)


def test_deferrals_are_free_of_the_plan_but_not_endless(tiny_search):
    """Every candidate predicted past any cap it could get: each deferral ran nothing and leaves the
    plan (--trials 2) untouched, and the plan's asks (ASKS_PER_TRIAL each) still end the search."""
    from dataclasses import replace

    from autotune.study import ASKS_PER_TRIAL, Attr
    from autotune.tuner import Search

    spec = tiny_search.spec  # few rule-pruned proposals: plain weights, every one a compiled forward
    spec = replace(spec, trials=2, restrict={**spec.restrict, "quantization.method": ["none"],
                                             "quantization.head": ["keep"]})
    search = Search(spec, tiny_search.store, tiny_search.optimizations)
    search.baseline()
    candidate = resolve({"compile": {"target": "forward"}}, search.optimizations)
    writes.record_measurement(
        search.store, search.ids, recipe_key=recipe_key(candidate), recipe=candidate, study="earlier",
        is_baseline=False, status=Status.OK.value, error=None, figures={"first_call_s": 500.0, "tpot_ms_p50": 1.0},
        reuse_key="another policy", trial_limit_s=None)
    started = time.monotonic()
    result = search.run(strict=False)
    trials = search.open_study().get_trials()
    deferred = [t for t in trials if t.user_attrs.get(Attr.DEFERRED)]
    assert len(deferred) > 2 and len(trials) == 2 * ASKS_PER_TRIAL, str(sorted((t.user_attrs.get("status"), (t.user_attrs.get("failure") or "")[9:40]) for t in trials))
    assert not [r for r in result.records if r.status == Status.OK and r.recipe != search.baseline_recipe]
    assert time.monotonic() - started < 60, "deferrals launch nothing"
