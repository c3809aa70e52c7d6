"""Attention implementation: eager, SDPA (optionally forcing one SDPA backend, optionally reading grouped
key/value heads in place), FlashAttention-2."""
from __future__ import annotations

import contextlib
import importlib.util
import os

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
            Option("gqa", ("auto", "native"), "auto",
                   "grouped-query attention under SDPA: auto is transformers' choice (with a mask, or in a "
                   "compiled program, each key/value head is copied once per query head it serves: "
                   "repeat_kv); native hands SDPA the grouped heads (enable_gqa), read in place",
                   active=lambda o: o.get("implementation") == "sdpa"),
        ]

    def unavailable(self, target, model=None):
        out = {}
        if model is not None and model.config:
            config = model.config.get("text_config") or model.config
            heads = config.get("num_attention_heads")
            if heads and (config.get("num_key_value_heads") or heads) == heads:
                out["gqa=native"] = "the model has as many key/value heads as query heads: nothing is grouped"
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
        if backend in ("efficient", "cudnn") and target.has_cuda and mine.get("gqa") == "native":
            # torch's SDPA docs: grouped-query attention "currently works only for Flash_attention and math
            # kernel on CUDA tensor" (sdp_utils.cpp: the mem-efficient checks take no grouped heads)
            return (f"gqa=native hands SDPA grouped key/value heads, which the {backend} kernel does not take on "
                    "CUDA (flash and math do): No available kernel")
        return None

    def load_kwargs(self, opts, ctx):
        return {"attn_implementation": opts["implementation"]}

    def runtime_context(self, opts, ctx):
        stack = contextlib.ExitStack()
        if opts.get("gqa", "auto") == "native":
            stack.enter_context(_native_gqa())
        backend = opts.get("sdpa_backend", "auto")
        if backend != "auto":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel(getattr(SDPBackend, TORCH_BACKEND[backend])))
        return stack

    def transformers_export(self, opts):
        out = {"load_kwargs": {"attn_implementation": opts["implementation"]}}
        if opts.get("sdpa_backend", "auto") != "auto":
            out["steps"] = [
                "wrap every generate call in `with torch.nn.attention.sdpa_kernel("
                f"torch.nn.attention.SDPBackend.{TORCH_BACKEND[opts['sdpa_backend']]}):`"
            ]
        if opts.get("gqa", "auto") == "native":
            out.setdefault("steps", []).append(
                "set the environment variable TRANSFORMERS_SDPA_FORCE_GQA=1 while generating (transformers' "
                "switch for handing SDPA the grouped key/value heads: enable_gqa)")
        return out


@contextlib.contextmanager
def _native_gqa():
    """transformers' own switch (read at each attention call, and at trace time by a compiled program):
    SDPA gets the grouped key/value heads with ``enable_gqa`` instead of copies of them."""
    before = os.environ.get(GQA_SWITCH)
    os.environ[GQA_SWITCH] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(GQA_SWITCH, None)
        else:
            os.environ[GQA_SWITCH] = before


GQA_SWITCH = "TRANSFORMERS_SDPA_FORCE_GQA"


@autotune.hookimpl
def register_optimizations(register):
    register(Attention())
