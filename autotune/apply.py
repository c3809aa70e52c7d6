"""Apply a recipe: load the model with every plugin's ``from_pretrained`` kwargs, run the
after-load stages in apply order, and build the generate callable and its kwargs.

Used both by the isolated trial (measurement) and by :func:`autotune.load` (production), so what
is measured is exactly what is deployed."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ModelError
from .optimization import ApplyContext, GenerateFn, Optimization


def hf_generate(model, input_ids, attention_mask, max_new_tokens, streamer=None, **kwargs):
    """The plain transformers path every plugin starts from: greedy ``model.generate``."""
    kwargs.setdefault("do_sample", False)
    if kwargs.get("pad_token_id") is None:
        eos = model.generation_config.eos_token_id
        kwargs["pad_token_id"] = eos[0] if isinstance(eos, (list, tuple)) else eos
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                          streamer=streamer, **kwargs)


@dataclass
class Applied:
    """A model with a recipe applied, ready to generate."""

    model: Any
    tokenizer: Any
    optimizations: Mapping[str, Optimization]
    recipe: Mapping[str, Mapping[str, Any]]
    ctx: ApplyContext
    generate_fn: GenerateFn = hf_generate
    generate_kwargs: dict = field(default_factory=dict)

    @contextlib.contextmanager
    def running(self):
        """Inference mode plus every plugin's runtime context (e.g. a forced SDPA backend)."""
        import torch

        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            for name, opt in self.optimizations.items():
                stack.enter_context(opt.runtime_context(self.recipe[name], self.ctx))
            yield

    def generate_ids(self, input_ids, attention_mask=None, max_new_tokens=None, streamer=None, **extra):
        """Generate for ``input_ids`` through the recipe's path; a call outside the envelope the recipe
        was measured for (longer than its max_context, wider than its max_batch) is refused."""
        import torch

        device = self.ctx.device
        max_new_tokens = max_new_tokens or self.ctx.max_new_tokens
        self.ctx.envelope.check(input_ids.shape[0], input_ids.shape[1] + max_new_tokens, "this recipe")
        input_ids = input_ids.to(device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs = {**self.generate_kwargs, **extra}
        with self.running():
            return self.generate_fn(self.model, input_ids, attention_mask.to(device), max_new_tokens, streamer,
                                    **kwargs)

    def warm_up(self) -> None:
        """Run every program the recipe's generate path holds once (each rung of its cache ladder, each
        compiled or ahead-of-time program), so that serving any call of its envelope compiles nothing."""
        warm = getattr(self.generate_fn, "warm_up", None)
        if warm is not None:
            with self.running():
                warm(self.model)


def hub_kernels() -> dict:
    """``from_pretrained``'s hub-kernel switch. transformers 5.25 with the ``kernels`` package (one of
    its requirements) swaps layers for kernels fetched from the Hub when it loads onto a GPU (Llama's
    rotary embedding: ``kernels-community/rotary``). Offline that load fails ("not available in the
    local cache": every trial of the first H200 run), online it downloads code at load time, and
    either way the layers measured are not the ones a recipe chose. autotune loads without them
    unless ``USE_HUB_KERNELS`` (transformers' own switch) says yes."""
    wanted = os.environ.get("USE_HUB_KERNELS", "").strip().upper() in ("1", "Y", "YES", "ON", "T", "TRUE")
    return {} if wanted else {"use_kernels": False}


def load_model(path: str, optimizations: Mapping[str, Optimization], recipe, ctx: ApplyContext):
    """Stage 1: ``from_pretrained`` with every plugin's load kwargs (quantization, dtype, attention)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict = {**hub_kernels()}
    for name, opt in optimizations.items():
        kwargs.update(opt.load_kwargs(recipe[name], ctx))
    kwargs.setdefault("device_map", ctx.device)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {path!r}: {str(exc).splitlines()[0]}") from None
    model.eval()
    return model


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception:  # a config-only or tokenizer-less checkpoint: workloads fall back to ids
        return None


def apply_recipe(path: str, optimizations: Mapping[str, Optimization], recipe, ctx: ApplyContext) -> Applied:
    """Load the model and tokenizer and apply every stage of ``recipe``: what is measured and what
    :func:`autotune.load` serves."""
    model = load_model(path, optimizations, recipe, ctx)
    return finish(model, load_tokenizer(path), optimizations, recipe, ctx)


def finish(model, tokenizer, optimizations: Mapping[str, Optimization], recipe, ctx: ApplyContext) -> Applied:
    """Stage 2 and 3: after-load transforms (compile last), then generate wrappers and kwargs."""
    for name, opt in optimizations.items():
        model = opt.after_load(model, recipe[name], ctx) or model
    applied = Applied(model, tokenizer, optimizations, recipe, ctx)
    for name, opt in optimizations.items():
        applied.generate_kwargs.update(opt.generate_kwargs(recipe[name], ctx))
        applied.generate_fn = opt.wrap_generate(applied.generate_fn, model, recipe[name], ctx)
    return applied
