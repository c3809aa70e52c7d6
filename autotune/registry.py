"""The one plugin manager.

Built-in plugins (the folder ``plugins/``, imported as ``autotune.plugins``) and third-party ones are
found the same way: the ``autotune`` entry-point group. ``AUTOTUNE_PLUGINS=a,b`` restricts loading to
those entry-point names (an empty value loads none); ``AUTOTUNE_PLUGIN_MODULES=pkg.mod,...`` also
registers plugin modules by import name (local plugins that are not packaged). Nothing is loaded at
import time: :func:`load_plugins` does it once, on first use.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import PluginError
from .optimization import Optimization

ENV_RESTRICT = "AUTOTUNE_PLUGINS"
ENV_MODULES = "AUTOTUNE_PLUGIN_MODULES"

pm = pluggy.PluginManager("autotune")
pm.add_hookspecs(hookspecs)
_loaded = False


def load_plugins() -> pluggy.PluginManager:
    """Register the entry-point plugins (as restricted by ``AUTOTUNE_PLUGINS``) and the modules in
    ``AUTOTUNE_PLUGIN_MODULES``. Idempotent: later calls do nothing."""
    global _loaded
    if _loaded:
        return pm
    allowed = os.environ.get(ENV_RESTRICT)
    names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for ep in entry_points(group="autotune"):
        if names is not None and ep.name not in names:
            continue
        plugin = ep.load()
        if pm.get_plugin(ep.name) is None and not pm.is_registered(plugin):
            pm.register(plugin, name=ep.name)
    for module in filter(None, (m.strip() for m in os.environ.get(ENV_MODULES, "").split(","))):
        register_module(module)
    pm.check_pending()
    _loaded = True
    return pm


def register_module(module_name: str) -> None:
    """Import a plugin module by name and register it, unless it already is."""
    module = importlib.import_module(module_name)
    if not pm.is_registered(module) and pm.get_plugin(module_name) is None:
        pm.register(module, name=module_name)
        pm.check_pending()


def use_exactly(module_names: list[str]) -> None:
    """Register exactly these plugin modules and nothing else: an isolated trial process re-creates
    its parent's plugin set (which tests or ``AUTOTUNE_PLUGINS`` may have narrowed or widened)."""
    global _loaded
    for module_name in module_names:
        register_module(module_name)
    _loaded = True


def plugin_modules() -> list[str]:
    """Module names of the registered plugins, so a child process can register the same set."""
    load_plugins()
    return sorted({p.__name__ for p in pm.get_plugins() if hasattr(p, "__name__")})


def get_optimizations() -> dict[str, Optimization]:
    """Every registered optimization by name, in apply order."""
    load_plugins()
    found: list[Optimization] = []
    pm.hook.register_optimizations(register=found.append)
    by_name: dict[str, Optimization] = {}
    for opt in sorted(found, key=lambda o: (o.order, o.name)):
        if opt.name in by_name:
            raise PluginError(f"two plugins register an optimization named {opt.name!r}")
        by_name[opt.name] = opt
    return by_name


@dataclass(frozen=True)
class ModelAlias:
    name: str
    resolve: Callable[[], str]
    description: str = ""


def get_model_aliases() -> dict[str, ModelAlias]:
    """Built-in model names (``smollm2-135m``...) contributed by plugins."""
    load_plugins()
    aliases: dict[str, ModelAlias] = {}

    def register(name: str, resolve: Callable[[], str], description: str = "") -> None:
        aliases[name] = ModelAlias(name, resolve, description)

    pm.hook.register_models(register=register)
    return aliases


@dataclass(frozen=True)
class Seed:
    """A recipe the search measures first, before the sampler proposes anything."""

    name: str
    recipe: dict = field(default_factory=dict)  # a partial recipe: plugin -> {option: value}
    rank: int = 50  # lower is asked earlier


def get_seeds(target, optimizations: dict[str, Any]) -> list[Seed]:
    """The seeds plugins contribute for ``target``, best-ranked first, leaving out any that names a
    plugin or option that is not loaded (``AUTOTUNE_PLUGINS=cache,compile`` drops a dtype seed)."""
    load_plugins()
    seeds: list[Seed] = []

    def register(name: str, recipe: dict, rank: int = 50) -> None:
        seeds.append(Seed(name, recipe, rank))

    pm.hook.register_seeds(register=register, target=target)

    def loaded(seed: Seed) -> bool:
        return all(plugin in optimizations and set(opts) <= {o.name for o in optimizations[plugin].options()}
                   for plugin, opts in seed.recipe.items())

    return sorted((s for s in seeds if loaded(s)), key=lambda s: (s.rank, s.name))
