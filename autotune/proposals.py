"""What a search measures next: a candidate whose compile the team now holds, the seed recipes,
then — when it is their turn — refinements of the leader, else whatever the sampler proposes. Samplers are Optuna's; seeds come from the
plugins (``register_seeds``); refinements are autotune's own (:func:`refinement`)."""
from __future__ import annotations

import math
import random
import warnings
from typing import Callable

import optuna

from . import space as spaces
from .errors import UsageError
from .recipe import impossible, recipe_key
from .spec import SAMPLERS
from .study import Attr, asked_params

#: the most points a grid search may list (Optuna's GridSampler holds them all in memory)
MAX_GRID_POINTS = 100_000
#: TPE's random start: finished trials before it models them (and before refinements begin)
TPE_STARTUP = 4
#: the samplers whose proposals alternate with refinements of the leader (see :func:`refinement`)
REFINED = ("tpe",)
#: the ``proposed_by`` of a candidate asked again once the team compile cache holds its compile
TEAM_COMPILED = "team compile"


def check_sampler(name: str, space) -> None:
    """A usage error for a sampler that cannot search ``space``: an unknown name, or a grid too large
    to list (checked when a search is set up, before anything is measured or drawn)."""
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    if name == "grid":
        points = math.prod(len(c) for c in spaces.sampled(space).values())
        if points > MAX_GRID_POINTS:  # Optuna lists every point up front: a whole space would exhaust memory
            raise UsageError(f"--sampler grid over this space lists {points:,} points (at most {MAX_GRID_POINTS:,}): "
                             "narrow the space in a study file's [space] table, or use tpe / random")


def make_sampler(name: str, seed, space):
    check_sampler(name, space)
    if name == "tpe":
        with warnings.catch_warnings():  # multivariate and group are "experimental" in Optuna: we chose them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP, multivariate=True, group=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GridSampler(spaces.sampled(space), seed=seed)


def next_trial(study: optuna.Study, seeds: list[dict], space, sampler: str, refine: bool, optimizations, target,
               seed: int | None, model=None, loads: Callable[[dict], bool] | None = None) -> optuna.Trial:
    """The next trial: a waiting one first (e.g. the retry of a trial whose worker died), else a
    candidate the study deferred or stopped at its compile cap whose compile the team compile cache
    now holds (``loads``; see :func:`team_compiled`), else the next seed recipe not yet tried, else a
    refinement of the leader when it is its turn (and ``refine``), else whatever the sampler proposes.
    These are enqueued one at a time, just before they are asked, so they never starve a retry; each
    trial's ``proposed_by`` attribute says which it was."""
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    if not waiting and sampler != "grid":  # a grid visits everything anyway
        done = study.user_attrs.get(Attr.SEEDS_ASKED, 0)
        again = team_compiled(study, space, optimizations, loads) if loads else None
        if again is not None:
            study.enqueue_trial(again, user_attrs={Attr.PROPOSED_BY: TEAM_COMPILED})
        elif done < len(seeds):
            study.set_user_attr(Attr.SEEDS_ASKED, done + 1)
            study.enqueue_trial(spaces.params_for(seeds[done], space), user_attrs={Attr.PROPOSED_BY: "seed"})
        elif refine and sampler in REFINED:
            params = refinement(study, space, optimizations, target, seed, model)
            if params is not None:
                study.enqueue_trial(params, user_attrs={Attr.PROPOSED_BY: "refinement"})
    return study.ask()


def team_compiled(study: optuna.Study, space, optimizations, loads: Callable[[dict], bool]) -> dict | None:
    """The params of a candidate the study deferred or stopped at its compile cap, whose compiled
    artifact the team compile cache now holds (``loads(recipe)``: compiled after the search, or by
    another host), that no other trial of the study measured or is measuring; each is asked again once
    (a trial ``proposed_by`` :data:`TEAM_COMPILED`). Else None. A resumed study asks no seed twice and
    its sampler seldom proposes a pruned point again: the second host of a README job loaded none of
    the three compiles the first host finished after its search (the int8 AOTInductor seed among them)."""
    trials = study.get_trials(deepcopy=False)
    capped, others, again = {}, set(), set()
    for t, params in zip(trials, asked_params(trials)):
        key = recipe_key(spaces.recipe_for(params, space, optimizations))
        if t.user_attrs.get(Attr.PROPOSED_BY) == TEAM_COMPILED:
            again.add(key)
        elif t.state == optuna.trial.TrialState.PRUNED and t.user_attrs.get(Attr.COMPILE_CAPPED):
            capped.setdefault(key, params)
        else:
            others.add(key)
    for key, params in capped.items():
        if key not in others and key not in again and loads(spaces.recipe_for(params, space, optimizations)):
            return params
    return None


def refinement(study: optuna.Study, space, optimizations, target, seed: int | None, model=None) -> dict | None:
    """When it is refinement's turn, the params of an untried recipe one option away from the leader
    (the study's best feasible trial; two options away once no one-option change is left), chosen
    at random among those the rules allow; else None, and the sampler proposes.

    Refinements take every other proposal once ``TPE_STARTUP`` trials have finished (never two in a
    row: the sampler keeps exploring), and pause once a refinement of the leader was pruned at the
    compile cap, until another leader appears: measured in the README's 10-minute search, each of
    the AOTInductor seed's neighbours compiled past the cap (~65 s cold on 2 cores). The space's
    good recipes share most choices (bf16, int8 weights, a static cache and a compiled loop), and
    the best differs from the runners-up in one or two of them: replayed over a whole CPU grid of 40
    recipes, TPE alone needed a median 10 trials to come within 5% of its best, TPE with refinements
    8, random search 22 (benchmarks/RESULTS.md)."""
    trials = study.get_trials(deepcopy=False)
    finished = sum(1 for t in trials if t.state.is_finished())
    if finished < TPE_STARTUP or trials[-1].user_attrs.get(Attr.PROPOSED_BY) == "refinement":
        return None
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE
                and all(v <= 0 for v in t.constraints.values())]
    if not complete:
        return None
    best = (min if study.direction == optuna.study.StudyDirection.MINIMIZE else max)(complete, key=lambda t: t.value)
    if any(t.number > best.number and t.user_attrs.get(Attr.PROPOSED_BY) == "refinement"
           and t.user_attrs.get(Attr.COMPILE_CAPPED) for t in trials):
        return None  # this leader's neighbours compile longer than the search affords: the sampler's turn
    leader = spaces.recipe_for(best.params, space, optimizations)
    tried = {recipe_key(spaces.recipe_for(params, space, optimizations)) for params in asked_params(trials)}
    for changes in (1, 2):
        untried = [r for r in spaces.neighbours(leader, space, optimizations, changes)
                   if recipe_key(r) not in tried and impossible(r, optimizations, target, model) is None]
        if untried:
            pick = random.Random(None if seed is None else f"{seed}:{len(trials)}").choice(untried)
            return spaces.params_for(pick, space)
    return None
