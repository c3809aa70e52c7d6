"""The one exception family the library raises; only ``cli.py`` turns these into messages."""
from __future__ import annotations


class AutotuneError(Exception):
    """Base class of every error autotune raises on purpose."""


class UsageError(AutotuneError):
    """The user asked for something that cannot mean anything (CLI exit code 2)."""


class PluginError(UsageError):
    """Unknown plugin, unknown option, or a value outside an option's choices."""


class RecipeError(UsageError):
    """A recipe (or recipe file) is malformed or impossible on this target."""


class BudgetError(UsageError):
    """A ``--budget`` string does not follow the grammar."""


class ModelError(AutotuneError):
    """A model argument could not be resolved or loaded."""


class StoreError(AutotuneError):
    """The tuning database is unreachable, not a database, read-only or too old."""


class NotFoundError(AutotuneError):
    """A recipe, study or job id that the database does not hold."""


class NoFeasibleRecipe(AutotuneError):
    """A search finished but no candidate met the budget."""
