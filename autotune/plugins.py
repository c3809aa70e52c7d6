"""The one plugin manager.

Built-in plugins (the ``autotune_plugins`` package, folder ``plugins/``) and third-party ones are
found the same way: the ``autotune`` entry-point group. ``AUTOTUNE_PLUGINS=a,b`` restricts loading to
those entry-point names (an empty value loads none); ``AUTOTUNE_PLUGIN_MODULES=pkg.mod,...`` also
registers plugin modules by import name (local plugins that are not packaged).
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

import pluggy

from . import hookspecs
from .errors import PluginError
from .optimization import Optimization

ENV_RESTRICT = "AUTOTUNE_PLUGINS"
ENV_MODULES = "AUTOTUNE_PLUGIN_MODULES"

pm = pluggy.PluginManager("autotune")
pm.add_hookspecs(hookspecs)


def _load_entry_points() -> None:
    allowed = os.environ.get(ENV_RESTRICT)
    names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for ep in entry_points(group="autotune"):
        if names is not None and ep.name not in names:
            continue
        if pm.get_plugin(ep.name) is None:
            pm.register(ep.load(), name=ep.name)
    for module in filter(None, (m.strip() for m in os.environ.get(ENV_MODULES, "").split(","))):
        register_module(module)
    pm.check_pending()


def register_module(module_name: str) -> None:
    """Import a plugin module by name and register it (used to re-create the parent's plugins
    inside an isolated trial process)."""
    if pm.get_plugin(module_name) is None and not any(
        getattr(p, "__name__", None) == module_name for p in pm.get_plugins()
    ):
        pm.register(importlib.import_module(module_name), name=module_name)
        pm.check_pending()


_load_entry_points()


def plugin_modules() -> list[str]:
    """Module names of the registered plugins, so a child process can register the same set."""
    return sorted({p.__name__ for p in pm.get_plugins() if hasattr(p, "__name__")})


def get_optimizations() -> dict[str, Optimization]:
    """Every registered optimization by name, in apply order."""
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
    aliases: dict[str, ModelAlias] = {}

    def register(name: str, resolve: Callable[[], str], description: str = "") -> None:
        aliases[name] = ModelAlias(name, resolve, description)

    pm.hook.register_models(register=register)
    return aliases
