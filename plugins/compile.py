"""torch.compile, in the three flavours of the Transformers guide "LLM inference optimization":

- ``forward``: compile the model's forward pass and let ``generate`` drive it;
- ``decode``: compile a decode-one-token step and drive it from our own loop over a StaticCache;
- ``generate``: compile the whole ``generate`` call;

and beyond it, ``aoti``: the model over a StaticCache exported once (torch.export) and compiled ahead
of time by AOTInductor into a shared library, cached on disk, driven by the same thin loop with no
Python, no guards and no dynamo between the tokens — the CPU's answer to CUDA graphs. Measured on
a 2-core EPYC the compiled decode step spent ~5 of its 12 ms per token in dynamo's guards and the
Python wrapper; the AOTI step runs the same kernels without them.

with the compile mode and inductor's CPU options (freezing, cpp_wrapper).
"""
from __future__ import annotations

import autotune
from autotune import Option, Optimization

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: the modes that capture CUDA graphs (on CUDA)
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def _on(o):
    return o.get("target", "off") != "off"


def _wrapped(o):  # AOTInductor's wrapper is C++ whatever is chosen: cpp_wrapper would duplicate
    return _on(o) and o.get("target") != "aoti"


def compile_kwargs(opts) -> dict:
    """torch.compile arguments: ``mode`` and ``options`` are exclusive, so fold the mode into options."""
    import torch._inductor

    options = dict(torch._inductor.list_mode_options(opts["mode"]))
    if opts.get("freezing"):
        options["freezing"] = True
    if opts.get("cpp_wrapper"):
        options["cpp_wrapper"] = True
    return {"options": options}


def cache_ready(model, compiled):
    """The compiled forward, entered with its StaticCache already allocated. transformers allocates a
    StaticCache's buffers on their first update — inside the compiled prefill, where it cannot mark
    their addresses static ("Without this, we cannot use cudagraphs"), so CUDA graphs would never be
    captured; allocated here, before the compiled region, they are marked."""
    from transformers import StaticCache

    def forward(*args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # (transformers 5.24 renamed it "cache")
        if isinstance(cache, StaticCache) and not all(layer.is_initialized for layer in cache.layers):
            inputs = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
            inputs = inputs if inputs is not None else args[0]
            heads, head_dim = kv_shape(model.config.get_text_config())
            cache.early_initialization(batch_size=inputs.shape[0], num_heads=heads, head_dim=head_dim,
                                       dtype=model.dtype, device=model.device)
        return compiled(*args, **kwargs)

    forward.compiled = compiled
    return forward


def kv_shape(config) -> tuple[int, int]:
    """(key/value heads, head dim) of a decoder config."""
    heads = getattr(config, "num_attention_heads", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return kv_heads, getattr(config, "head_dim", None) or config.hidden_size // heads


def _decode_one_token(model, cur_token, cache_position, past_key_values):
    """One decode step over the static cache: the next-token logits, ``[batch, vocab]``."""
    logits = model(cur_token, cache_position=cache_position, past_key_values=past_key_values,
                   return_dict=False, use_cache=True)[0]
    return logits[:, -1]


def _max_cache_len(ctx) -> int | None:
    """The recipe's cache.max_cache_len; None for ``auto`` (sized to the call)."""
    max_len = ctx.recipe.get("cache", {}).get("max_cache_len", "auto")
    return None if max_len == "auto" else max_len


class DecodeLoop:
    """The guide's compiled decode loop: eager prefill, then one compiled step per new token over a
    StaticCache that is allocated once and reset between calls."""

    name = "compile.target=decode"

    def __init__(self, model, opts, ctx):
        import torch

        self.compiled = torch.compile(_decode_one_token, **compile_kwargs(opts))
        self.max_cache_len = _max_cache_len(ctx)
        self.cache = None
        self.cache_shape = None
        self.eos = model.generation_config.eos_token_id

    def _cache_for(self, model, batch, needed):
        from transformers import StaticCache

        length = self.max_cache_len or needed
        if self.cache is None or self.cache_shape != (batch, length):
            self.cache = StaticCache(config=model.config, max_cache_len=length)
            self.cache_shape = (batch, length)
        else:
            self.cache.reset()
        return self.cache

    def prefill(self, model, input_ids, needed: int):
        """The prompt's pass: the last position's logits, ``[batch, vocab]``; fills the cache."""
        import torch

        cache = self._cache_for(model, input_ids.shape[0], needed)
        cache_position = torch.arange(input_ids.shape[1], device=input_ids.device)
        return model(input_ids, cache_position=cache_position, past_key_values=cache,
                     return_dict=False, use_cache=True)[0][:, -1]

    def step(self, model, token, cache_position):
        """One new token's pass at ``cache_position``: its logits, ``[batch, vocab]``."""
        return self.compiled(model, token.clone(), cache_position, self.cache).clone()

    def __call__(self, model, input_ids, attention_mask, max_new_tokens, streamer=None, logits_processor=None,
                 **kwargs):
        """Greedy decoding like ``model.generate``: honours ``min_new_tokens`` (exact length) and
        ``logits_processor`` (applied to each step's logits before the argmax, as generate does)."""
        import torch

        if attention_mask is not None and not bool(attention_mask.all()):
            raise autotune.RecipeError(f"{self.name} does not support padded batches")
        batch, seq = input_ids.shape
        exact = kwargs.get("min_new_tokens") == max_new_tokens
        eos = torch.tensor(self.eos if isinstance(self.eos, list) else [self.eos or -1], device=input_ids.device)
        sequence = input_ids

        def pick(logits):
            nonlocal sequence
            if logits_processor:
                logits = logits_processor(sequence, logits.float())
            token = torch.argmax(logits, dim=-1)[:, None]
            if logits_processor:
                sequence = torch.cat([sequence, token], dim=1)
            return token

        if streamer is not None:
            streamer.put(input_ids)
        token = pick(self.prefill(model, input_ids, seq + max_new_tokens))
        tokens = [token]
        if streamer is not None:
            streamer.put(token[:, 0])
        cache_position = torch.tensor([seq], device=input_ids.device)
        done = torch.isin(token[:, 0], eos)
        for _ in range(1, max_new_tokens):
            if not exact and bool(done.all()):
                break
            token = pick(self.step(model, token, cache_position))
            tokens.append(token)
            if streamer is not None:
                streamer.put(token[:, 0])
            done |= torch.isin(token[:, 0], eos)
            cache_position += 1
        if streamer is not None:
            streamer.end()
        return torch.cat([input_ids, *tokens], dim=1)


class AheadOfTimeLoop(DecodeLoop):
    """The same loop over one AOTInductor program: the model with its StaticCache as buffers
    (transformers' ``TorchExportableModuleWithStaticCache``), exported with the query length as a
    dynamic dimension so the prompt's pass and every token's step are the one program. Built on the
    first call (which the trial times as compilation), or loaded from the package cached on disk
    per model, recipe, shape, hardware and library versions: a second trial or ``autotune.load``
    pays no compile."""

    name = "compile.target=aoti"

    def __init__(self, model, opts, ctx):
        self.length = _max_cache_len(ctx) or ctx.prompt_tokens + ctx.max_new_tokens
        self.batch = ctx.batch_size
        self.opts, self.ctx = dict(opts), ctx
        self.runner = None
        self.eos = model.generation_config.eos_token_id

    def prefill(self, model, input_ids, needed: int):
        import torch

        if input_ids.shape[0] != self.batch or needed > self.length:
            raise autotune.RecipeError(
                f"{self.name} was compiled for batch {self.batch} and {self.length} positions; this call needs batch "
                f"{input_ids.shape[0]} and {needed} (give cache.max_cache_len, or the workload's shape)")
        if self.runner is None:
            self.runner = aoti_program(model, self.opts, self.ctx, self.batch, self.length)
        seq = input_ids.shape[1]
        return self.runner(input_ids=input_ids, cache_position=torch.arange(seq, device=input_ids.device))[:, -1]

    def step(self, model, token, cache_position):
        return self.runner(input_ids=token, cache_position=cache_position)[:, -1]


def aoti_package_path(model, ctx, batch: int, length: int):
    """Where the program for this model, recipe, shape, hardware and versions is kept."""
    import hashlib
    import json
    from pathlib import Path

    from autotune.paths import cache_dir
    from autotune.sources import ModelSource

    where = str(getattr(model.config, "_name_or_path", "") or "")
    identity = ModelSource(where, where).fingerprint if Path(where).is_dir() else model.config.to_json_string()
    raw = json.dumps({"model": identity, "recipe": ctx.recipe, "batch": batch, "length": length,
                      "device": str(model.device), "hardware": ctx.target.hardware_key,
                      "versions": ctx.target.versions}, sort_keys=True, default=str)
    return cache_dir() / "aoti" / f"{hashlib.sha256(raw.encode()).hexdigest()[:24]}.pt2"


def _compile_package(model, opts, batch: int, length: int, path) -> None:
    import os

    import torch
    from transformers.integrations.executorch import TorchExportableModuleWithStaticCache

    was = model.generation_config.cache_implementation
    model.generation_config.cache_implementation = "static"  # what the export wrapper checks
    try:
        module = TorchExportableModuleWithStaticCache(model, batch_size=batch, max_cache_len=length)
    finally:
        model.generation_config.cache_implementation = was
    seq = torch.export.Dim("seq", min=1, max=length)
    example = min(4, length)
    program = torch.export.export(
        module, args=(), strict=True,
        kwargs={"input_ids": torch.zeros(batch, example, dtype=torch.long, device=model.device),
                "cache_position": torch.arange(example, device=model.device)},
        dynamic_shapes={"input_ids": {1: seq}, "cache_position": {0: seq}})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{os.getpid()}-{path.name}")
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp),
                                                 inductor_configs=compile_kwargs(opts)["options"])
        os.replace(tmp, path)  # whole or not at all: another trial may be reading it
    finally:
        tmp.unlink(missing_ok=True)


def aoti_program(model, opts, ctx, batch: int, length: int):
    """The loaded AOTInductor program (compiled first, when no package is cached)."""
    import torch

    path = aoti_package_path(model, ctx, batch, length)
    if not path.exists():
        # traced outside inference mode (the trial runs in it): torchao's weights, and the cache
        # buffers export mutates, cannot be inference tensors there
        with torch.inference_mode(False), torch.no_grad():
            _compile_package(model, opts, batch, length, path)
    return torch._inductor.aoti_load_package(str(path))


class Compile(Optimization):
    name = "compile"
    order = 90  # last: compile what the other plugins built
    description = "torch.compile of the forward pass, a decode step, or the whole generate"

    def options(self):
        return [
            Option("target", ("off", "forward", "decode", "generate", "aoti"), "off",
                   "what to compile (aoti: the model over a static cache, ahead of time, cached on disk)"),
            Option("mode", MODES, "default", "torch.compile mode", active=_on),
            Option("freezing", (False, True), False, "inductor freezing: fold weights as constants", active=_on),
            Option("cpp_wrapper", (False, True), False, "inductor C++ wrapper: less Python launch overhead",
                   active=_wrapped),
        ]

    def unavailable(self, target, model=None):
        import shutil

        out = {}
        if not target.has_cuda:
            out["mode=reduce-overhead"] = "CUDA graphs only: on CPU it compiles the same program as default"
            out["mode=max-autotune"] = "on CPU it is max-autotune-no-cudagraphs (CUDA graphs only on CUDA)"
            if not (shutil.which("gcc") or shutil.which("cc") or shutil.which("g++")):
                for t in ("forward", "decode", "aoti"):
                    out[f"target={t}"] = "inductor on CPU needs a C++ compiler (gcc)"
        return out

    def conflicts(self, recipe, target):
        mine = recipe.get(self.name, {})
        cache = recipe.get("cache", {})
        if mine.get("target") in ("decode", "aoti"):
            if cache.get("implementation") != "static":
                return (f"compile.target={mine['target']} drives its own StaticCache: needs "
                        "cache.implementation=static")
        if target.has_cuda and mine.get("mode") in CUDA_GRAPH_MODES:
            if mine.get("target") == "generate":
                return (f"compile.mode={mine['mode']} captures CUDA graphs, and a whole generate call (its Python "
                        "loop, stopping criteria, a cache growing per token) cannot be one")
            if cache.get("implementation", "dynamic") not in ("static", "offloaded_static"):
                return (f"compile.mode={mine['mode']} captures CUDA graphs, which need fixed addresses: a "
                        f"{cache.get('implementation', 'dynamic')} cache reallocates as it grows (needs "
                        "cache.implementation=static)")
        return None

    def generate_kwargs(self, opts, ctx):
        # we compile what we are told to; transformers' own auto-compile (static cache on GPU) would
        # otherwise compile a second time behind our back
        return {"disable_compile": True}

    def after_load(self, model, opts, ctx):
        import torch

        if opts["target"] == "forward":
            model.forward = cache_ready(model, torch.compile(model.forward, **compile_kwargs(opts)))
        elif opts["target"] == "generate":
            model.generate = torch.compile(model.generate, **compile_kwargs(opts))
        return model

    def wrap_generate(self, generate, model, opts, ctx):
        if opts["target"] == "decode":
            return DecodeLoop(model, opts, ctx)
        if opts["target"] == "aoti":
            return AheadOfTimeLoop(model, opts, ctx)
        return generate

    def transformers_export(self, opts):
        if opts["target"] == "off":
            return {}
        kw = f"mode={opts['mode']!r}"
        step = {
            "forward": f"model.forward = torch.compile(model.forward, {kw})",
            "generate": f"model.generate = torch.compile(model.generate, {kw})",
            "decode": f"compile a decode-one-token step with torch.compile(..., {kw}) and drive it over a "
                      "StaticCache (see the transformers guide 'LLM inference optimization'), or use autotune.load()",
            "aoti": "export the model over a StaticCache (transformers.integrations.executorch."
                    "TorchExportableModuleWithStaticCache) with torch.export, the query length dynamic; compile it "
                    f"with torch._inductor.aoti_compile_and_package (inductor options of {kw}) and drive it one token "
                    "at a time; or use autotune.load(), which caches the package on disk",
        }[opts["target"]]
        extra = [k for k in ("freezing", "cpp_wrapper") if opts.get(k)]
        steps = [step] + [f"set torch._inductor.config.{k} = True before compiling" for k in extra]
        return {"steps": steps}


@autotune.hookimpl
def register_optimizations(register):
    register(Compile())


@autotune.hookimpl
def register_seeds(register, target):
    """The Transformers guide's static-cache recipe as the guide writes it: bf16 weights, a static
    cache, the forward pass compiled — with CUDA graphs where there are any. (The guide's fullgraph=True
    only turns a graph break into an error; it runs the same program, so it is no option here.)"""
    mode = "reduce-overhead" if target.has_cuda else "default"
    register("transformers guide", {"dtype": {"dtype": "bfloat16"}, "cache": {"implementation": "static"},
                                    "compile": {"target": "forward", "mode": mode}}, rank=10)
