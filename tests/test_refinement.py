"""Refinements of the leader: every other proposal of a TPE search, after its random start, is an
untried recipe one option (then two) away from the best feasible trial so far."""
from __future__ import annotations

import statistics

import optuna
import pytest

from autotune import space as spaces
from autotune.recipe import impossible, recipe_key, resolve
from autotune.registry import get_optimizations
from autotune.proposals import TPE_STARTUP, make_sampler, refinement
from autotune.study import Attr
from autotune.target import current_target

pytestmark = pytest.mark.filterwarnings("ignore")

#: the search-efficiency benchmark's CPU grid, with a second SDPA backend
GRID = {
    "quantization.method": ["none", "torchao-int8-weight"], "dtype.dtype": ["auto", "bfloat16"],
    "attention.implementation": ["sdpa", "eager"], "attention.sdpa_backend": ["auto", "math"], "attention.gqa": ["auto"],
    "cache.implementation": ["dynamic", "static"], "cache.ladder": ["x2"],
    "compile.target": ["off", "forward", "decode"], "compile.mode": ["default"],
    "compile.freezing": [False], "compile.cpp_wrapper": [False], "compile.prefill": ["eager"], "compile.scope": ["model"],
    "quantization.head": ["keep"],
    "runtime.threads": ["auto"], "decoding.method": ["greedy"],
}


@pytest.fixture(scope="module")
def world():
    optimizations, target = get_optimizations(), current_target()
    return optimizations, target, spaces.build_space(optimizations, target, GRID)


def test_neighbours_change_one_option_and_skip_inactive_ones(world):
    optimizations, target, space = world
    leader = spaces.recipe_for({"attention.implementation": "eager", "cache.implementation": "static",
                                "compile.target": "decode"}, space, optimizations)
    near = spaces.neighbours(leader, space, optimizations)
    keys = [recipe_key(r) for r in near]
    assert len(keys) == len(set(keys)) and recipe_key(leader) not in keys
    mine = spaces.params_for(leader, space)
    for r in near:
        theirs = spaces.params_for(r, space)
        shared = set(mine) & set(theirs)
        assert sum(mine[k] != theirs[k] for k in shared) + len(set(mine) ^ set(theirs)) in (1, 2)
        assert sum(mine[k] != theirs[k] for k in shared) <= 1
    # quantization, dtype, attention (sdpa with its default backend), cache, compile x2
    assert len(near) == 6
    sdpa = [r for r in near if r["attention"]["implementation"] == "sdpa"]
    assert sdpa and sdpa[0]["attention"]["sdpa_backend"] == "auto"  # a newly active option takes its default
    # the backend alone is inactive under eager attention: changing it changes nothing
    assert not any(r["attention"].get("sdpa_backend") == "math" for r in near)
    two = spaces.neighbours(leader, space, optimizations, changes=2)
    assert any(r["attention"].get("sdpa_backend") == "math" for r in two)


def _objective(recipe) -> float:
    """A synthetic TPOT with the grid's shape: bf16, int8, eager, a static cache and the decode loop
    each help; one recipe has them all."""
    ms = 40.0
    ms *= 0.5 if recipe["dtype"]["dtype"] == "bfloat16" else 1.0
    ms *= 0.75 if recipe["quantization"]["method"] != "none" else 1.0
    ms *= 0.9 if recipe["attention"]["implementation"] == "eager" else 1.0
    ms *= {"off": 1.0, "forward": 0.75, "decode": 0.7}[recipe["compile"]["target"]]
    ms *= 0.95 if recipe["cache"]["implementation"] == "static" else 1.0
    return ms


def _drive(world, seed: int, refined: bool, log=None) -> int | None:
    """Distinct recipes measured until the best is found (as benchmarks/search_efficiency.py counts)."""
    optimizations, target, space = world
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=make_sampler("tpe", seed, space))
    best = min(_objective(r) for r in spaces.enumerate_recipes(space, optimizations)
               if impossible(r, optimizations, target) is None)
    seen = set()
    for _ in range(400):
        params = refinement(study, space, optimizations, target, seed) if refined else None
        if params is not None:
            study.enqueue_trial(params, user_attrs={"proposed_by": "refinement"})
        trial = study.ask()
        recipe = resolve(spaces.suggest(trial, space), optimizations)
        if log is not None:
            log.append((trial.user_attrs.get("proposed_by", "sampler"), recipe,
                        [t for t in study.get_trials() if t.number != trial.number]))
        if impossible(recipe, optimizations, target):
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        seen.add(recipe_key(recipe))
        study.tell(trial, _objective(recipe))
        if _objective(recipe) <= best:
            return len(seen)
    return None


def test_refinements_alternate_with_the_sampler_and_move_from_the_leader(world):
    optimizations, target, space = world
    log = []
    _drive(world, seed=3, refined=True, log=log)
    kinds = [kind for kind, _, _ in log]
    assert "refinement" in kinds
    for i, (kind, recipe, before) in enumerate(log):
        finished = [t for t in before if t.state.is_finished()]
        if kind != "refinement":
            continue
        assert len(finished) >= TPE_STARTUP
        assert kinds[i - 1] != "refinement"  # never two in a row: the sampler keeps exploring
        tried = {recipe_key(spaces.recipe_for(t.params, space, optimizations)) for t in before}
        assert recipe_key(recipe) not in tried and impossible(recipe, optimizations, target) is None
        complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
        leader = spaces.recipe_for(min(complete, key=lambda t: t.value).params, space, optimizations)
        near = {recipe_key(r) for n in (1, 2) for r in spaces.neighbours(leader, space, optimizations, n)}
        assert recipe_key(recipe) in near


def test_an_infeasible_trial_is_never_the_leader(world):
    """The fastest trial misses the budget: refinements start from the best one that fits."""
    optimizations, target, space = world
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=make_sampler("tpe", 0, space))
    fast = {"quantization.method": "torchao-int8-weight", "dtype.dtype": "bfloat16",
            "attention.implementation": "eager", "cache.implementation": "static", "compile.target": "decode"}
    fits = {"quantization.method": "none", "dtype.dtype": "auto", "attention.implementation": "sdpa",
            "attention.sdpa_backend": "auto", "cache.implementation": "dynamic", "compile.target": "off"}
    slower = [{**fits, "attention.sdpa_backend": "math"}, {**fits, "compile.target": "forward", "dtype.dtype": "bfloat16"}]
    for params, value, violation in [(fast, 10.0, 1.0), (fits, 20.0, -1.0), (slower[0], 30.0, -1.0),
                                     (slower[1], 25.0, -1.0)]:
        study.enqueue_trial(params)
        trial = study.ask()
        spaces.suggest(trial, space)
        trial.set_constraint("quality", violation)
        study.tell(trial, value)
    leader = spaces.recipe_for(fits, space, optimizations)
    near = {recipe_key(r) for r in spaces.neighbours(leader, space, optimizations)}
    for seed in range(5):
        params = refinement(study, space, optimizations, target, seed)
        assert recipe_key(spaces.recipe_for(params, space, optimizations)) in near


def test_refinements_find_the_best_sooner_than_tpe_alone(world):
    refined = [_drive(world, seed, refined=True) for seed in range(8)]
    alone = [_drive(world, seed, refined=False) for seed in range(8)]
    assert None not in refined
    assert statistics.median(refined) < statistics.median([n if n is not None else 99 for n in alone])


def test_refinements_pause_when_a_neighbour_of_the_leader_ran_past_the_compile_cap(world):
    """A refinement pruned at the compile cap says the leader's neighbours cost more than the search
    affords: the sampler proposes until another leader appears."""
    optimizations, target, space = world
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=make_sampler("tpe", 0, space))
    base = {"quantization.method": "none", "dtype.dtype": "bfloat16", "attention.implementation": "sdpa",
            "attention.sdpa_backend": "auto", "cache.implementation": "static", "compile.target": "off"}

    def told(params, value=None, **attrs):
        study.enqueue_trial(params, user_attrs=attrs)
        trial = study.ask()
        spaces.suggest(trial, space)
        if value is None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)

    for i, backend in enumerate(["auto", "math"]):
        told({**base, "attention.sdpa_backend": backend}, 30.0 + i)
    told({**base, "compile.target": "forward"}, 20.0)  # the leader
    told({**base, "dtype.dtype": "auto"}, 40.0)
    assert refinement(study, space, optimizations, target, 0) is not None
    told({**base, "compile.target": "decode"}, None, proposed_by="refinement", **{Attr.COMPILE_CAPPED: True})
    told({**base, "quantization.method": "torchao-int8-weight"}, 35.0)  # the sampler's turn, no new leader
    assert refinement(study, space, optimizations, target, 0) is None
    told({**base, "attention.implementation": "eager"}, 15.0)  # a new leader: refinements resume
    assert refinement(study, space, optimizations, target, 0) is not None


def test_a_maximised_objective_refines_its_largest(world):
    optimizations, target, space = world
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=make_sampler("tpe", 0, space))
    base = {"quantization.method": "none", "dtype.dtype": "auto", "attention.implementation": "sdpa",
            "attention.sdpa_backend": "auto", "cache.implementation": "dynamic", "compile.target": "off"}
    far = {"quantization.method": "torchao-int8-weight", "dtype.dtype": "bfloat16", "attention.implementation": "eager",
           "cache.implementation": "static", "compile.target": "decode"}
    for params, tokens_per_s in [(base, 90.0), (far, 30.0), ({**base, "attention.sdpa_backend": "math"}, 20.0),
                                 ({**base, "compile.target": "forward"}, 40.0)]:
        study.enqueue_trial(params)
        trial = study.ask()
        spaces.suggest(trial, space)
        study.tell(trial, tokens_per_s)
    near = {recipe_key(r) for r in spaces.neighbours(spaces.recipe_for(base, space, optimizations), space, optimizations)}
    params = refinement(study, space, optimizations, target, 0)
    assert recipe_key(spaces.recipe_for(params, space, optimizations)) in near
