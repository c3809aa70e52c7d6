"""autotune: find the fastest way to run an LLM on this machine within a budget."""
from __future__ import annotations

from .api import (BenchResult, TuningResult, VerifyResult, bench, export_results, import_results, search,
                  verify)
from .errors import (AutotuneError, BudgetError, ModelError, NoFeasibleRecipe, NotFoundError, PluginError,
                     RecipeError, StoreError, UsageError)
from .hookspecs import hookimpl
from .logs import drop_false_alarms
from .optimization import ApplyContext, Optimization, Option
from .paths import cache_dir, data_dir

__version__ = "0.3.0"

drop_false_alarms()  # a plain script gets no false alarms from libraries either (autotune.logs)


__all__ = [
    "AutotuneError", "BudgetError", "ModelError", "NoFeasibleRecipe", "NotFoundError", "PluginError",
    "RecipeError", "StoreError", "UsageError", "hookimpl", "ApplyContext", "Optimization", "Option",
    "cache_dir", "data_dir", "load", "__version__",
    "search", "bench", "verify", "export_results", "import_results", "TuningResult", "BenchResult", "VerifyResult",
]


def load(recipe, *, db=None, strict: bool = False, device: str | None = None, workload: str | None = None):
    """Load a model with a recipe applied: ``recipe`` is a recipe JSON path, a stored recipe id,
    or a model name (the best recipe known for this hardware in ``db``, for the ``workload`` kind
    when given: chat, summarize, code-edit). Returns a :class:`autotune.loader.TunedModel` with
    ``.model``, ``.tokenizer`` and ``.generate()``."""
    from .loader import load as _load

    return _load(recipe, db=db, strict=strict, device=device, workload=workload)
