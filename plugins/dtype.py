"""The model's floating-point dtype (fp32 / bf16 / fp16 where the device computes in it).

The smallest useful plugin: one option, a rule, and one stage (``load_kwargs``). Copy this file to
start a new plugin, and add it to your package's ``autotune`` entry points."""
from __future__ import annotations

import autotune
from autotune import Option, Optimization


class Dtype(Optimization):
    name = "dtype"
    order = 10
    description = "floating-point dtype the weights are loaded in"

    def options(self):
        return [Option("dtype", ("auto", "float32", "bfloat16", "float16"), "auto",
                       "auto keeps the checkpoint's dtype (the transformers default)")]

    def unavailable(self, target, model=None):
        out = {}
        if target.has_cuda:
            if target.compute_capability and float(target.compute_capability) < 8.0:
                out["dtype=bfloat16"] = f"sm {target.compute_capability} has no bf16 tensor cores (needs sm 8.0+)"
        if model is not None and model.dtype in ("float32", "bfloat16", "float16"):
            out.setdefault(f"dtype={model.dtype}", f"the checkpoint is stored in {model.dtype}: the same as auto")
        return out

    def load_kwargs(self, opts, ctx):
        import torch

        if opts["dtype"] == "auto":
            return {}
        return {"dtype": getattr(torch, opts["dtype"])}

    def transformers_export(self, opts):
        if opts["dtype"] == "auto":
            return {}
        return {"load_kwargs": {"dtype": opts["dtype"]}}


@autotune.hookimpl
def register_optimizations(register):
    register(Dtype())
