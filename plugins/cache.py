"""KV cache: dynamic (default), static (pre-allocated, compile-friendly), offloaded, quantized.

A static cache serves the workload's whole envelope: one cache of max_context positions, each call's
attention reading only the smallest rung of a ladder of windows that holds it (``ladder``: each rung
``x2`` or ``x4`` the one below, up to max_context, or ``one`` window of all of it), so a short call
does not attend over the longest's slots; a compiled program takes the window as a dynamic size, so
one program serves every rung. The ladder is core code (:mod:`autotune.engines.ladder`); this plugin
provides it to the rest of the recipe (``ctx.ladder``)."""
from __future__ import annotations

import importlib.util

import autotune
from autotune import Option, Optimization

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
    version = "3"  # one static cache per batch width, each call windowed to a rung (was: a cache per rung)
    description = "KV cache implementation used by generate"

    def options(self):
        return [
            Option("implementation", ("dynamic", "static", "offloaded", "offloaded_static", "quantized"),
                   "dynamic", "transformers cache_implementation"),
            Option("ladder", ("x2", "x4", "one"), "x2",
                   "windows a call's attention reads of the static cache: rungs x2 / x4 apart up to max_context, "
                   "or one of all of it", active=_static),
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

    def after_load(self, model, opts, ctx):
        if _static(opts):
            from autotune.engines import GROWTH, CacheLadder

            ctx.ladder = CacheLadder(model, ctx.envelope, GROWTH[opts["ladder"]],
                                     offloading=opts["implementation"] == "offloaded_static")
        return model

    def generate_kwargs(self, opts, ctx):
        if not _quantized(opts):
            return {}  # dynamic: generate's default; static: the ladder's caches are handed to each call
        return {"cache_implementation": "quantized", "cache_config": {"backend": opts["backend"],
                                                                      "nbits": opts["nbits"]}}

    def wrap_generate(self, generate, model, opts, ctx):
        if not _static(opts):
            return generate
        from autotune.engines import serve_from

        return serve_from(ctx.ladder, generate, f"cache.implementation={opts['implementation']}")

    def transformers_export(self, opts):
        impl = opts["implementation"]
        if impl == "dynamic":
            return {}
        gen = {"cache_implementation": impl}
        out = {"generation_config": gen}
        if _static(opts):
            out["steps"] = [f"autotune serves the envelope from a ladder of static caches ({opts['ladder']}); plain "
                            "generate sizes one cache (max_cache_len: the envelope's max_context), or use "
                            "autotune.load()"]
        if _quantized(opts):
            gen["cache_config"] = {"backend": opts["backend"], "nbits": opts["nbits"]}
        return out


@autotune.hookimpl
def register_optimizations(register):
    register(Cache())
