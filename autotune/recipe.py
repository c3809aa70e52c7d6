"""Recipes: which choice each plugin makes. Validation, defaults, ``--set`` parsing, rules."""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from .errors import PluginError, RecipeError
from .optimization import ModelInfo, Optimization, RecipeDict, conflicts_for, unavailable_for

Recipe = dict[str, dict[str, Any]]


def _coerce(raw: str, choices: tuple) -> Any:
    """Turn ``--set`` text into the choice it names (choices may be str, int, bool or None)."""
    for choice in choices:
        if str(choice).lower() == raw.strip().lower():
            return choice
    return raw


def parse_sets(items: Iterable[str], optimizations: Mapping[str, Optimization]) -> Recipe:
    """Parse ``plugin.option=value`` strings into a partial recipe."""
    partial: Recipe = {}
    for item in items:
        key, sep, value = item.partition("=")
        plugin, dot, option = key.strip().partition(".")
        if not sep or not dot or not plugin or not option:
            raise PluginError(f"malformed --set {item!r}: expected plugin.option=value, e.g. cache.implementation=static")
        opt = _find_option(optimizations, plugin, option)
        partial.setdefault(plugin, {})[option] = value.strip() if opt.given else _coerce(value, opt.choices)
    return partial


def _find_option(optimizations: Mapping[str, Optimization], plugin: str, option: str):
    if plugin not in optimizations:
        raise PluginError(f"unknown plugin {plugin!r}; known: {', '.join(optimizations)}")
    for opt in optimizations[plugin].options():
        if opt.name == option:
            return opt
    names = ", ".join(o.name for o in optimizations[plugin].options())
    raise PluginError(f"unknown option {plugin}.{option}; {plugin} has: {names}")


def resolve(partial: Mapping[str, Mapping[str, Any]], optimizations: Mapping[str, Optimization]) -> Recipe:
    """Check a (partial) recipe against the registry and fill in defaults.

    Every registered plugin appears in the result; options that are inactive given the plugin's
    other choices are dropped, so two recipes that behave the same compare equal."""
    if not isinstance(partial, Mapping):
        raise RecipeError("a recipe must map plugin names to their options")
    for plugin, opts in partial.items():
        if not isinstance(opts, Mapping):
            raise RecipeError(f"recipe entry {plugin!r} must map option names to values")
        for option, value in opts.items():
            opt = _find_option(optimizations, plugin, option)
            if opt.given:
                if value is not None and not (isinstance(value, str) and value.strip()):
                    raise PluginError(f"{plugin}.{option} must be a name or a path, got {value!r}")
            elif not any(c == value and type(c) is type(value) for c in opt.choices):
                raise PluginError(f"{plugin}.{option}={value!r} is not one of {list(opt.choices)}")
    recipe: Recipe = {}
    for name, optimization in optimizations.items():
        given = partial.get(name, {})
        chosen: dict[str, Any] = {}
        for opt in optimization.options():
            chosen[opt.name] = given.get(opt.name, opt.default)
        recipe[name] = {o.name: chosen[o.name] for o in optimization.options() if o.is_active(chosen)}
    return recipe


def impossible(recipe: RecipeDict, optimizations: Mapping[str, Optimization], target,
               model: ModelInfo | None = None) -> str | None:
    """Why this recipe cannot run on ``target`` (a plugin rule), or None if it can."""
    for name, optimization in optimizations.items():
        unavailable = unavailable_for(optimization, target, model)
        for option, value in recipe.get(name, {}).items():
            reason = unavailable.get(f"{option}={value}")
            if reason:
                return f"{name}.{option}={value}: {reason}"
    for name, optimization in optimizations.items():
        reason = conflicts_for(optimization, recipe, target, model)
        if reason:
            return f"{name}: {reason}"
    return None


def recipe_key(recipe: RecipeDict) -> str:
    """Canonical text of a resolved recipe: equal recipes have equal keys."""
    return json.dumps(recipe, sort_keys=True, separators=(",", ":"))


def describe(recipe: RecipeDict, optimizations: Mapping[str, Optimization] | None = None) -> str:
    """Short human text naming only the choices that differ from the defaults."""
    parts = []
    for plugin, opts in recipe.items():
        defaults = {}
        if optimizations and plugin in optimizations:
            defaults = {o.name: o.default for o in optimizations[plugin].options()}
        for option, value in opts.items():
            if defaults.get(option, object()) != value:
                parts.append(f"{plugin}.{option}={value}")
    return ", ".join(parts) or "HF default"
