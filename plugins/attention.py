"""Attention implementation: eager, SDPA (optionally forcing one SDPA backend), FlashAttention-2."""
from __future__ import annotations

import importlib.util

import autotune
from autotune import Option, Optimization

BACKENDS = ("auto", "math", "flash", "efficient", "cudnn")
TORCH_BACKEND = {"math": "MATH", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                 "cudnn": "CUDNN_ATTENTION"}


class Attention(Optimization):
    name = "attention"
    order = 20
    description = "attention kernels (transformers attn_implementation, torch SDPA backend)"

    def options(self):
        return [
            Option("implementation", ("sdpa", "eager", "flash_attention_2"), "sdpa",
                   "transformers attn_implementation (sdpa is the default)"),
            Option("sdpa_backend", BACKENDS, "auto", "force one torch.nn.attention SDPA backend",
                   active=lambda o: o.get("implementation") == "sdpa"),
        ]

    def unavailable(self, target, model=None):
        out = {}
        why = []
        if importlib.util.find_spec("flash_attn") is None:
            why.append("flash-attn not installed (pip install 'autotune[flash-attn]', needs CUDA)")
        if not target.has_cuda:
            why.append("no CUDA device")
        elif target.compute_capability and float(target.compute_capability) < 8.0:
            why.append(f"FlashAttention-2 needs sm 8.0+, this GPU is sm {target.compute_capability}")
        if why:
            out["implementation=flash_attention_2"] = " / ".join(why)
        if not target.has_cuda:
            out["sdpa_backend=flash"] = ("on CPU, auto already runs the flash kernel "
                                         "(_scaled_dot_product_flash_attention_for_cpu) for unpadded batches")
            out["sdpa_backend=efficient"] = "the memory-efficient SDPA kernel exists only on CUDA"
            out["sdpa_backend=cudnn"] = "the cuDNN SDPA kernel exists only on CUDA"
        return out

    def conflicts(self, recipe, target, model=None):
        mine = recipe.get(self.name, {})
        dtype = recipe.get("dtype", {}).get("dtype", "auto")
        if dtype == "auto" and model is not None:  # what auto loads: the checkpoint's own dtype
            dtype = model.dtype
        half = dtype in ("float16", "bfloat16")
        if mine.get("implementation") == "flash_attention_2" and not half:
            return "flash_attention_2 runs only in fp16/bf16: set dtype.dtype"
        backend = mine.get("sdpa_backend", "auto")
        if backend in ("flash", "cudnn") and target.has_cuda:
            if not half:
                return f"the {backend} SDPA kernel runs only in fp16/bf16: set dtype.dtype"
            if recipe.get("cache", {}).get("implementation") in ("static", "offloaded_static"):
                return (f"the {backend} SDPA kernel takes no explicit attention mask, and a static cache always "
                        "builds one (its unfilled positions are masked)")
        return None

    def load_kwargs(self, opts, ctx):
        return {"attn_implementation": opts["implementation"]}

    def runtime_context(self, opts, ctx):
        import contextlib

        backend = opts.get("sdpa_backend", "auto")
        if backend == "auto":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(getattr(SDPBackend, TORCH_BACKEND[backend]))

    def transformers_export(self, opts):
        out = {"load_kwargs": {"attn_implementation": opts["implementation"]}}
        if opts.get("sdpa_backend", "auto") != "auto":
            out["steps"] = [
                "wrap every generate call in `with torch.nn.attention.sdpa_kernel("
                f"torch.nn.attention.SDPBackend.{TORCH_BACKEND[opts['sdpa_backend']]}):`"
            ]
        return out


@autotune.hookimpl
def register_optimizations(register):
    register(Attention())
