"""The search space the plugins contribute for one target: every option with the choices that are
possible here (unavailable ones left out), optionally narrowed by a study definition."""
from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any, Iterator, Mapping

from .errors import PluginError
from .optimization import ModelInfo, Optimization, Option, unavailable_for
from .recipe import Recipe, recipe_key, resolve

Space = dict[str, list[Option]]


def build_space(optimizations: Mapping[str, Optimization], target,
                restrict: Mapping[str, list] | None = None, model: ModelInfo | None = None) -> Space:
    """``restrict``: ``{"plugin.option": [choices]}`` narrows an option (a study file's ``space``);
    ``model`` lets plugins leave out choices that duplicate another for this checkpoint."""
    restrict_in = dict(restrict or {})
    restrict = dict(restrict_in)
    space: Space = {}
    for name, opt in optimizations.items():
        unavailable = unavailable_for(opt, target, model)
        options = []
        for o in opt.options():
            choices = [c for c in o.choices if f"{o.name}={c}" not in unavailable]
            key = f"{name}.{o.name}"
            if o.given:  # the study's value (e.g. --draft), or the default: one choice, never sampled
                given = restrict.pop(key, [o.default])
                if len(given) != 1:
                    raise PluginError(f"{key}: give one value, not {len(given)}")
                options.append(replace(o, choices=tuple(given), default=given[0]))
                continue
            if key in restrict:
                wanted = restrict.pop(key)
                bad = [c for c in wanted if c not in o.choices]
                if bad:
                    raise PluginError(f"{key}: {bad} not among {list(o.choices)}")
                choices = [c for c in choices if c in wanted]
            if not choices:
                if key in restrict_in:
                    raise PluginError(f"{key}: none of {restrict_in[key]} is possible on this target")
                choices = [o.default]  # only reachable through an unavailable parent choice: never sampled
            default = o.default if o.default in choices else choices[0]
            options.append(replace(o, choices=tuple(choices), default=default))
        space[name] = options
    if restrict:
        raise PluginError(f"unknown option(s) in the space: {', '.join(restrict)}")
    return space


def suggest(trial, space: Space) -> dict[str, dict[str, Any]]:
    """Define-by-run sampling: an option is sampled only when active given its plugin's earlier
    choices; options with one possible choice are fixed, not sampled."""
    partial: dict[str, dict[str, Any]] = {}
    for plugin, options in space.items():
        chosen: dict[str, Any] = {}
        for o in options:
            if not o.is_active(chosen):
                continue
            if len(o.choices) == 1:
                chosen[o.name] = o.choices[0]
            else:
                chosen[o.name] = trial.suggest_categorical(f"{plugin}.{o.name}", list(o.choices))
        partial[plugin] = chosen
    return partial


def params_for(recipe: Recipe, space: Space) -> dict[str, Any]:
    """The Optuna params that :func:`suggest` would produce for ``recipe`` (for enqueue_trial)."""
    return {f"{p}.{o.name}": recipe[p][o.name] for p, options in space.items() for o in options
            if o.name in recipe.get(p, {}) and len(o.choices) > 1 and recipe[p][o.name] in o.choices}


class _Fixed:
    """Answers :func:`suggest` from fixed params, as an Optuna trial would; an option the params do not
    name (one that a change made active) takes the space's default."""

    def __init__(self, params: Mapping[str, Any], space: Space):
        self.params = params
        self.defaults = {f"{p}.{o.name}": o.default for p, options in space.items() for o in options}

    def suggest_categorical(self, name: str, choices: list) -> Any:
        value = self.params.get(name, self.defaults[name])
        return next((c for c in choices if c == value and type(c) is type(value)), self.defaults[name])


def recipe_for(params: Mapping[str, Any], space: Space, optimizations: Mapping[str, Optimization]) -> Recipe:
    """The recipe an Optuna trial with these params stands for (the inverse of :func:`params_for`)."""
    return resolve(suggest(_Fixed(params, space), space), optimizations)


def neighbours(recipe: Recipe, space: Space, optimizations: Mapping[str, Optimization],
               changes: int = 1) -> list[Recipe]:
    """Every distinct recipe of the space that differs from ``recipe`` in ``changes`` of the options a
    search samples (an option a change makes active takes its default), in a stable order. (A change
    to an option the recipe leaves inactive changes nothing: with ``changes=2`` some results differ
    in one option only.)"""
    params, options = params_for(recipe, space), sampled(space)
    seen, out = {recipe_key(recipe)}, []
    for names in itertools.combinations(options, changes):
        alternatives = [[c for c in options[n] if c != params.get(n)] for n in names]
        for values in itertools.product(*alternatives):
            near = recipe_for({**params, **dict(zip(names, values))}, space, optimizations)
            key = recipe_key(near)
            if key not in seen:  # a change to an option the recipe leaves inactive changes nothing
                seen.add(key)
                out.append(near)
    return out


def canonical(recipe: Recipe, optimizations: Mapping[str, Optimization], target, model: ModelInfo | None) -> Recipe:
    """``recipe`` with every choice that duplicates another for this model (a dtype equal to the
    checkpoint's is ``auto``) replaced by the option's default."""
    out = {p: dict(c) for p, c in recipe.items()}
    for name, opt in optimizations.items():
        duplicates = set(unavailable_for(opt, target, model)) - set(opt.unavailable(target))
        defaults = {o.name: o.default for o in opt.options()}
        for option, value in recipe.get(name, {}).items():
            if f"{option}={value}" in duplicates:
                out[name][option] = defaults[option]
    return resolve(out, optimizations)


def contains(space: Space, recipe: Recipe) -> bool:
    """Whether every choice of ``recipe`` is among the space's choices (a study file may narrow it)."""
    return all(recipe.get(p, {}).get(o.name, o.choices[0]) in o.choices
               for p, options in space.items() for o in options if o.name in recipe.get(p, {}))


def enumerate_recipes(space: Space, optimizations: Mapping[str, Optimization]) -> Iterator[Recipe]:
    """Every distinct recipe of the space (inactive options not multiplied in)."""
    per_plugin = {p: list(_plugin_choices(options)) for p, options in space.items()}
    names = list(per_plugin)
    for combo in itertools.product(*(per_plugin[n] for n in names)):
        yield resolve(dict(zip(names, combo)), optimizations)


def _plugin_choices(options: list[Option], chosen: dict | None = None, i: int = 0) -> Iterator[dict]:
    chosen = chosen or {}
    if i == len(options):
        yield dict(chosen)
        return
    o = options[i]
    if not o.is_active(chosen):
        yield from _plugin_choices(options, chosen, i + 1)
        return
    for c in o.choices:
        yield from _plugin_choices(options, {**chosen, o.name: c}, i + 1)


def sampled(space: Space) -> dict[str, list]:
    """``"plugin.option" -> choices`` for every option a search can be asked to sample: more than one
    choice, and active for at least one combination of its plugin's choices (a grid over the rest
    would multiply points that are never visited)."""
    out = {}
    for plugin, options in space.items():
        active = set().union(*(combo.keys() for combo in _plugin_choices(options)))
        out.update({f"{plugin}.{o.name}": list(o.choices) for o in options if len(o.choices) > 1 and o.name in active})
    return out


def count(space: Space) -> int:
    """How many distinct recipes the space holds."""
    n = 1
    for options in space.values():
        n *= sum(1 for _ in _plugin_choices(options))
    return n
