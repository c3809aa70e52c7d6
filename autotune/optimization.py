"""What a plugin contributes: an :class:`Optimization` with its :class:`Option` s.

An optimization *describes* its options (each an Optuna distribution, so the search space exists
without running Optuna), says which choices are impossible on a target and why, and applies itself
at each stage of a run: ``from_pretrained`` kwargs, after load, ``generate`` kwargs, the generate
call itself, and a runtime context around every call.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from optuna.distributions import CategoricalDistribution

#: options of one plugin, as resolved in a recipe: option name -> value
Options = Mapping[str, Any]
#: a whole recipe: plugin name -> its options
RecipeDict = Mapping[str, Options]


@dataclass(frozen=True)
class Option:
    """One tunable knob of an optimization.

    ``active`` decides from the plugin's other (already chosen) options whether this one means
    anything; an inactive option is not sampled and not stored (e.g. compile mode when compile is off).
    """

    name: str
    choices: tuple
    default: Any
    help: str = ""
    active: Callable[[Options], bool] | None = None

    @property
    def distribution(self) -> CategoricalDistribution:
        return CategoricalDistribution(list(self.choices))

    def is_active(self, chosen: Options) -> bool:
        return self.active is None or bool(self.active(chosen))


@dataclass
class ApplyContext:
    """What an optimization may look at while it applies itself."""

    target: Any  # autotune.target.Target
    device: str  # "cpu" or "cuda"
    max_new_tokens: int
    prompt_tokens: int
    batch_size: int
    recipe: RecipeDict = field(default_factory=dict)


#: the generate callable every stage passes along:
#: generate(model, input_ids, attention_mask, max_new_tokens, streamer, **generate_kwargs) -> token ids
GenerateFn = Callable[..., Any]


class Optimization:
    """Base class for a plugin's optimization. Override what your optimization needs; every hook
    has a harmless default, so the smallest plugin is a name and one option."""

    name: str = ""
    #: lower applies first (quantization and dtype before attention, cache, and compile last)
    order: int = 50
    description: str = ""
    #: bump when what a choice runs changes: measurements taken with another version are not reused
    version: str = "1"

    def options(self) -> list[Option]:
        """The knobs this optimization contributes to the search space."""
        return []

    def unavailable(self, target) -> dict[str, str]:
        """``"option=choice" -> reason`` for every choice impossible on ``target`` whatever else is chosen."""
        return {}

    def conflicts(self, recipe: RecipeDict, target) -> str | None:
        """A reason why this plugin's choice cannot work together with the rest of ``recipe``, or None."""
        return None

    def load_kwargs(self, opts: Options, ctx: ApplyContext) -> dict:
        """Keyword arguments merged into ``from_pretrained``."""
        return {}

    def after_load(self, model, opts: Options, ctx: ApplyContext):
        """Transform the loaded model (e.g. compile). Return the model (or None to keep it).

        Contract: numerics must not change here beyond float reassociation — quality is measured
        on the model as loaded, before these stages, so that compilation is not paid twice."""
        return model

    def generate_kwargs(self, opts: Options, ctx: ApplyContext) -> dict:
        """Keyword arguments merged into every ``generate`` call."""
        return {}

    def wrap_generate(self, generate: GenerateFn, model, opts: Options, ctx: ApplyContext) -> GenerateFn:
        """Replace or wrap the generate callable (e.g. a compiled decode loop)."""
        return generate

    def runtime_context(self, opts: Options, ctx: ApplyContext) -> contextlib.AbstractContextManager:
        """A context entered around every forward/generate call (e.g. a forced SDPA backend)."""
        return contextlib.nullcontext()

    def transformers_export(self, opts: Options) -> dict:
        """What plain transformers can persist for these options:
        ``{"config": {...}, "generation_config": {...}, "load_kwargs": {...}, "steps": ["..."]}``."""
        return {}
