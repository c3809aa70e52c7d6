"""Weight quantization at load time: bitsandbytes 8-bit / 4-bit and torchao weight-only int8 / int4."""
from __future__ import annotations

import importlib.util

import autotune
from autotune import Option, Optimization

METHODS = ("none", "bnb-int8", "bnb-4bit", "torchao-int8-weight", "torchao-int4-weight")


def _is_4bit(o):
    return o.get("method") == "bnb-4bit"


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


class Quantization(Optimization):
    name = "quantization"
    order = 5
    description = "quantize weights while loading (bitsandbytes, torchao)"

    def options(self):
        return [
            Option("method", METHODS, "none", "quantization scheme applied by from_pretrained"),
            Option("quant_type", ("nf4", "fp4"), "nf4", "bitsandbytes 4-bit data type", active=_is_4bit),
            Option("double_quant", (False, True), False, "quantize the 4-bit scales too", active=_is_4bit),
            Option("compute_dtype", ("float32", "bfloat16", "float16"), "float32",
                   "dtype bitsandbytes 4-bit matmuls compute in", active=_is_4bit),
        ]

    def unavailable(self, target, model=None):
        out = {}
        if _missing("bitsandbytes"):
            for m in ("bnb-int8", "bnb-4bit"):
                out[f"method={m}"] = "bitsandbytes is not installed (pip install 'autotune[quant]')"
        if _missing("torchao"):
            for m in ("torchao-int8-weight", "torchao-int4-weight"):
                out[f"method={m}"] = "torchao is not installed (pip install 'autotune[quant]')"
        elif not target.has_cuda:
            out["method=torchao-int4-weight"] = "torchao int4 weight-only needs CUDA (tinygemm kernels) on this torchao"
        return out

    def conflicts(self, recipe, target):
        method = recipe.get(self.name, {}).get("method")
        dtype = recipe.get("dtype", {}).get("dtype", "auto")
        if method == "torchao-int4-weight" and dtype != "bfloat16":
            return "torchao int4 weight-only needs dtype.dtype=bfloat16"
        return None

    def _config(self, opts):
        import torch

        method = opts["method"]
        if method.startswith("bnb"):
            from transformers import BitsAndBytesConfig

            if method == "bnb-int8":
                return BitsAndBytesConfig(load_in_8bit=True)
            return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=opts["quant_type"],
                                      bnb_4bit_use_double_quant=opts["double_quant"],
                                      bnb_4bit_compute_dtype=getattr(torch, opts["compute_dtype"]))
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        if method == "torchao-int8-weight":
            return TorchAoConfig(Int8WeightOnlyConfig())
        return TorchAoConfig(Int4WeightOnlyConfig(group_size=128))

    def load_kwargs(self, opts, ctx):
        if opts["method"] == "none":
            return {}
        return {"quantization_config": self._config(opts)}

    def transformers_export(self, opts):
        # the quantized weights and their quantization_config are written by save_pretrained itself
        return {}


@autotune.hookimpl
def register_optimizations(register):
    register(Quantization())


@autotune.hookimpl
def register_seeds(register, target):
    """The guide's recipe plus torchao weight-only int8: the best recipe measured by hand on a Xeon."""
    register("guide + torchao int8", {"quantization": {"method": "torchao-int8-weight"},
                                      "dtype": {"dtype": "bfloat16"}, "cache": {"implementation": "static"},
                                      "compile": {"target": "forward", "mode": "default"}}, rank=20)
