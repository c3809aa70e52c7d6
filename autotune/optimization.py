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

#: the choices one plugin makes in a recipe: option name -> value
Choices = Mapping[str, Any]
#: a whole recipe: plugin name -> its choices
RecipeDict = Mapping[str, Choices]


@dataclass(frozen=True)
class ModelInfo:
    """What a plugin may know of the model before anything is loaded: its ``config.json``."""

    config: dict = field(default_factory=dict)
    #: the draft model the study gives (``--draft``) for assisted decoding, when it gives one
    draft: "ModelInfo | None" = None
    #: the most rows one call of the study's workload has (its batch size or envelope's ``max_batch``):
    #: a choice that serves one sequence at a time is unavailable above 1
    rows: int = 1

    @property
    def max_positions(self) -> int | None:
        """The most positions (prompt + generated tokens) the model can attend over, when its config
        says (``max_position_embeddings``, in its text config for a multimodal one)."""
        config = self.config.get("text_config") or self.config
        value = config.get("max_position_embeddings") or self.config.get("max_position_embeddings")
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    @property
    def dtype(self) -> str:
        """The dtype the checkpoint is stored in (what ``dtype="auto"`` loads)."""
        return str(self.config.get("dtype") or self.config.get("torch_dtype") or "float32")


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
    active: Callable[[Choices], bool] | None = None
    #: a value the study gives, not a choice the search makes (the draft model of assisted decoding,
    #: from ``--draft``): any text, one value per study, never sampled. ``choices`` holds the default.
    given: bool = False

    @property
    def distribution(self) -> CategoricalDistribution:
        return CategoricalDistribution(list(self.choices))

    def is_active(self, chosen: Choices) -> bool:
        return self.active is None or bool(self.active(chosen))


@dataclass
class ApplyContext:
    """What an optimization may look at while it applies itself: the target, the workload's typical
    call (``prompt_tokens``, ``max_new_tokens``, ``batch_size``) and its envelope (the most positions
    and rows one call may need: ``max_context``, ``max_batch``; 0 means the typical call's), the whole
    recipe — and what one plugin provides the others: ``ladder``, the static caches (an
    :class:`autotune.engines.CacheLadder`) set by the plugin that makes the KV cache static."""

    target: Any  # autotune.target.Target
    device: str  # "cpu" or "cuda"
    max_new_tokens: int
    prompt_tokens: int
    batch_size: int
    recipe: RecipeDict = field(default_factory=dict)
    max_context: int = 0
    max_batch: int = 0
    ladder: Any = None

    def __post_init__(self):
        self.max_context = self.max_context or self.prompt_tokens + self.max_new_tokens
        self.max_batch = self.max_batch or self.batch_size

    @classmethod
    def of(cls, target, workload, recipe: RecipeDict, device: str | None = None) -> "ApplyContext":
        """The context for serving ``workload`` (an :class:`autotune.workload.Workload`) on ``target``."""
        return cls(target, device or target.device, workload.new_tokens, workload.prompt_tokens, workload.batch_size,
                   recipe, workload.max_context, workload.max_batch)

    @property
    def envelope(self):
        from .engines import Envelope

        return Envelope(self.max_context, self.max_batch)


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

    def unavailable(self, target, model: ModelInfo | None = None) -> dict[str, str]:
        """``"option=choice" -> reason`` for every choice that cannot run on ``target`` — or would run
        the same program as another choice there (a duplicate wastes the user's trials) — whatever
        else is chosen. ``model`` (when known) lets a plugin judge by the checkpoint, e.g. a dtype
        choice equal to the checkpoint's own is ``auto``."""
        return {}

    def conflicts(self, recipe: RecipeDict, target, model: ModelInfo | None = None) -> str | None:
        """A reason why this plugin's choice cannot work together with the rest of ``recipe``, or None.
        ``model`` (when known), e.g. what ``dtype=auto`` loads."""
        return None

    def load_kwargs(self, opts: Choices, ctx: ApplyContext) -> dict:
        """Keyword arguments merged into ``from_pretrained``."""
        return {}

    def after_load(self, model, opts: Choices, ctx: ApplyContext):
        """Transform the loaded model (e.g. compile). Return the model (or None to keep it)."""
        return model

    def generate_kwargs(self, opts: Choices, ctx: ApplyContext) -> dict:
        """Keyword arguments merged into every ``generate`` call."""
        return {}

    def wrap_generate(self, generate: GenerateFn, model, opts: Choices, ctx: ApplyContext) -> GenerateFn:
        """Replace or wrap the generate callable (e.g. a compiled decode loop).

        Contract: the callable honours ``min_new_tokens`` and ``logits_processor`` exactly as
        ``model.generate`` does — quality is scored through it, one forced token at a time."""
        return generate

    def runtime_context(self, opts: Choices, ctx: ApplyContext) -> contextlib.AbstractContextManager:
        """A context entered around every forward/generate call (e.g. a forced SDPA backend)."""
        return contextlib.nullcontext()

    def transformers_export(self, opts: Choices) -> dict:
        """What plain transformers can persist for these options:
        ``{"config": {...}, "generation_config": {...}, "load_kwargs": {...}, "steps": ["..."]}``."""
        return {}


def conflicts_for(optimization: Optimization, recipe: RecipeDict, target, model: ModelInfo | None) -> str | None:
    """``optimization.conflicts`` with the model when the plugin accepts it (older plugins take
    the recipe and target only)."""
    import inspect

    if model is not None and "model" in inspect.signature(optimization.conflicts).parameters:
        return optimization.conflicts(recipe, target, model=model)
    return optimization.conflicts(recipe, target)


def unavailable_for(optimization: Optimization, target, model: ModelInfo | None) -> dict[str, str]:
    """``optimization.unavailable`` with the model when the plugin accepts it (older plugins take
    the target only)."""
    import inspect

    if model is not None and "model" in inspect.signature(optimization.unavailable).parameters:
        return optimization.unavailable(target, model=model)
    return optimization.unavailable(target)
