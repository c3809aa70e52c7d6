"""``autotune.load()``: production code applies a recipe in one call."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RecipeError


class RecipeMismatchWarning(UserWarning):
    """The recipe was measured on other hardware or other library versions."""


@dataclass
class TunedModel:
    """A model and tokenizer with every plugin of a recipe applied."""

    applied: Any  # autotune.apply.Applied
    document: dict

    @property
    def model(self):
        return self.applied.model

    @property
    def tokenizer(self):
        return self.applied.tokenizer

    @property
    def recipe(self) -> dict:
        return self.document["recipe"]

    @property
    def workload(self):
        """What the recipe was measured for (an :class:`autotune.workload.Workload`): its envelope
        bounds every call."""
        from .workload import Workload

        return Workload.from_dict(self.document["workload"])

    def warm_up(self) -> "TunedModel":
        """Run every program the recipe holds once (each rung of its cache ladder; ahead-of-time
        packages are loaded from the cache on disk): afterwards no call of the envelope compiles."""
        self.applied.warm_up()
        return self

    def generate_ids(self, input_ids, attention_mask=None, max_new_tokens=None, **kwargs):
        """Token ids in, token ids out (prompt and new tokens), through the recipe's generate path;
        generate's keyword arguments as for ``model.generate``."""
        return self.applied.generate_ids(input_ids, attention_mask, max_new_tokens, **kwargs)

    def generate(self, prompt: str | list[str], max_new_tokens: int | None = None, **kwargs) -> str | list[str]:
        """Text in, new text out, through the recipe's generate path, with the sampling the recipe was
        measured for (its workload's; greedy when it has none) unless ``kwargs`` say otherwise. A
        list of prompts is one left-padded batch."""
        if self.tokenizer is None:
            raise RecipeError("this model has no tokenizer (config-only?); use generate_ids()")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True)
        kwargs = {**self.workload.generate_kwargs(), **kwargs}
        out = self.generate_ids(enc["input_ids"], enc["attention_mask"], max_new_tokens, **kwargs)
        texts = self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return texts[0] if isinstance(prompt, str) else texts


def load(recipe, *, db=None, strict: bool = False, device: str | None = None,
         workload: str | None = None) -> TunedModel:
    from .apply import apply_recipe
    from .export import read_recipe_file
    from .sources import resolve_model
    from .optimization import ApplyContext
    from .registry import get_optimizations
    from .recipe import impossible
    from .target import current_target
    from .workload import Workload

    optimizations = get_optimizations()
    if isinstance(recipe, dict):
        from .export import validate_document

        doc = validate_document(recipe, optimizations)
    elif Path(str(recipe)).is_file():
        doc = read_recipe_file(str(recipe), optimizations)
    else:
        from .export import stored_document
        from .store import Store

        if workload is not None:
            Workload(kind=workload)  # an unknown kind is a UsageError, not "nothing found"
        doc = stored_document(Store(db), str(recipe), current_target(device), optimizations, workload)
    target = current_target(device)
    _check_target(doc, target, strict)
    source = resolve_model(doc["model"], config_only=bool(doc.get("config_only")))
    reason = impossible(doc["recipe"], optimizations, target, source.info_for(doc["recipe"]))
    if reason:
        raise RecipeError(f"recipe cannot run on this machine: {reason}")
    workload = Workload.from_dict(doc["workload"])
    ctx = ApplyContext.of(target, workload, doc["recipe"])
    from .paths import use_persistent_compile_cache

    use_persistent_compile_cache()
    return TunedModel(apply_recipe(source.path, optimizations, doc["recipe"], ctx), doc)


def _check_target(doc: dict, target, strict: bool) -> None:
    from .target import Target

    measured = doc.get("target") or {}
    problems = []
    try:
        then = Target.from_dict(measured)
    except TypeError:
        then = None
    if then is None or then.hardware_key != target.hardware_key:
        problems.append(f"measured on {measured.get('name', 'unknown hardware')}, this is {target.name}")
    for lib in ("torch", "transformers", "bitsandbytes"):
        old, new = (measured.get("versions") or {}).get(lib), target.versions.get(lib)
        if old != new:
            problems.append(f"{lib} {old} then, {new} now")
    if problems:
        message = "recipe was measured elsewhere: " + "; ".join(problems)
        if strict:
            raise RecipeError(message)
        warnings.warn(message, RecipeMismatchWarning, stacklevel=3)
