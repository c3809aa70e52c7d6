"""KV cache: dynamic (default), static (pre-allocated, compile-friendly), offloaded, quantized."""
from __future__ import annotations

import importlib.util

import autotune
from autotune import Option, Optimization
from autotune.errors import RecipeError

STATIC = ("static", "offloaded_static")
QUANT_BACKENDS = {"quanto": "optimum.quanto", "hqq": "hqq"}


def _static(o):
    return o.get("implementation") in STATIC


def _quantized(o):
    return o.get("implementation") == "quantized"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


class Cache(Optimization):
    name = "cache"
    order = 40
    description = "KV cache implementation used by generate"

    def options(self):
        return [
            Option("implementation", ("dynamic", "static", "offloaded", "offloaded_static", "quantized"),
                   "dynamic", "transformers cache_implementation"),
            Option("max_cache_len", ("auto", 256, 512, 1024, 2048, 4096), "auto",
                   "static cache size in tokens; auto = prompt + new tokens of the call", active=_static),
            Option("backend", tuple(QUANT_BACKENDS), "quanto", "quantized-cache backend", active=_quantized),
            Option("nbits", (2, 4), 4, "quantized-cache bits", active=_quantized),
        ]

    def unavailable(self, target, model=None):
        out = {}
        if not target.has_cuda:
            reason = "offloading moves the KV cache from an accelerator to CPU memory; this target has none"
            out["implementation=offloaded"] = reason
            out["implementation=offloaded_static"] = reason
        missing = {b: m for b, m in QUANT_BACKENDS.items() if not _importable(m)}
        for backend, module in missing.items():
            out[f"backend={backend}"] = f"{module} is not installed"
        if len(missing) == len(QUANT_BACKENDS):
            out["implementation=quantized"] = "no quantized-cache backend installed (optimum-quanto or hqq)"
        return out

    def generate_kwargs(self, opts, ctx):
        impl = opts["implementation"]
        if impl == "dynamic":
            return {}
        kwargs = {"cache_implementation": impl}
        if _static(opts) and opts["max_cache_len"] != "auto":
            needed = ctx.prompt_tokens + ctx.max_new_tokens
            if opts["max_cache_len"] < needed:
                raise RecipeError(f"cache.max_cache_len={opts['max_cache_len']} is smaller than the workload "
                                  f"({needed} tokens)")
            kwargs["max_cache_len"] = opts["max_cache_len"]
        if _quantized(opts):
            kwargs["cache_config"] = {"backend": opts["backend"], "nbits": opts["nbits"]}
        return kwargs

    def transformers_export(self, opts):
        impl = opts["implementation"]
        if impl == "dynamic":
            return {}
        gen = {"cache_implementation": impl}
        if _static(opts) and opts["max_cache_len"] != "auto":
            gen["max_cache_len"] = opts["max_cache_len"]
        if _quantized(opts):
            gen["cache_config"] = {"backend": opts["backend"], "nbits": opts["nbits"]}
        return {"generation_config": gen}


@autotune.hookimpl
def register_optimizations(register):
    register(Cache())
