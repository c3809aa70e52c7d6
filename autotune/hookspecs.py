"""The plugin hooks. Each hook gets a ``register`` callable; a plugin calls it once per thing it adds.

Hooks only ever grow new arguments: pluggy lets an implementation accept fewer arguments than the
spec, so old plugins keep working.
"""
from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("autotune")
hookimpl = pluggy.HookimplMarker("autotune")


@hookspec
def register_optimizations(register: Callable) -> None:
    """Register :class:`autotune.Optimization` instances. Every implementation is called."""


@hookspec
def register_models(register: Callable) -> None:
    """Register model aliases: ``register(name, resolve, description)``; ``resolve()`` returns a
    local checkpoint directory. Every implementation is called."""


@hookspec
def register_seeds(register: Callable, target) -> None:
    """Register recipes the search measures first on ``target`` (an :class:`autotune.target.Target`):
    ``register(name, partial_recipe, rank=50)``, lower ranks first. A seed that names a plugin or
    option that is not loaded is left out. Every implementation is called."""
