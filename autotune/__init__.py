"""autotune: find the fastest way to run an LLM on this machine within a budget."""
from __future__ import annotations

from .errors import (AutotuneError, BudgetError, ModelError, NoFeasibleRecipe, NotFoundError, PluginError,
                     RecipeError, StoreError, UsageError)
from .hookspecs import hookimpl
from .optimization import ApplyContext, Optimization, Option
from .paths import cache_dir, data_dir

__version__ = "0.2.0"

__all__ = [
    "AutotuneError", "BudgetError", "ModelError", "NoFeasibleRecipe", "NotFoundError", "PluginError",
    "RecipeError", "StoreError", "UsageError", "hookimpl", "ApplyContext", "Optimization", "Option",
    "cache_dir", "data_dir", "load", "__version__",
]


def load(recipe, *, db=None, strict: bool = False, device: str | None = None):
    """Load a model with a recipe applied: ``recipe`` is a recipe JSON path, a stored recipe id,
    or a model name (the best recipe known for this hardware in ``db``). Returns a
    :class:`autotune.loader.TunedModel` with ``.model``, ``.tokenizer`` and ``.generate()``."""
    from .loader import load as _load

    return _load(recipe, db=db, strict=strict, device=device)
