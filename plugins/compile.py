"""torch.compile, in the three flavours of the Transformers guide "LLM inference optimization":

- ``forward``: compile the model's forward pass and let ``generate`` drive it;
- ``decode``: compile a decode-one-token step and drive it from our own loop over a StaticCache;
- ``generate``: compile the whole ``generate`` call.

with the compile mode and inductor's CPU options (freezing, cpp_wrapper).
"""
from __future__ import annotations

import autotune
from autotune import Option, Optimization

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _on(o):
    return o.get("target", "off") != "off"


def compile_kwargs(opts) -> dict:
    """torch.compile arguments: ``mode`` and ``options`` are exclusive, so fold the mode into options."""
    import torch._inductor

    options = dict(torch._inductor.list_mode_options(opts["mode"]))
    if opts.get("freezing"):
        options["freezing"] = True
    if opts.get("cpp_wrapper"):
        options["cpp_wrapper"] = True
    return {"options": options}


def _decode_one_token(model, cur_token, cache_position, past_key_values):
    """One decode step over the static cache: the next-token logits, ``[batch, vocab]``."""
    logits = model(cur_token, cache_position=cache_position, past_key_values=past_key_values,
                   return_dict=False, use_cache=True)[0]
    return logits[:, -1]


class DecodeLoop:
    """The guide's compiled decode loop: eager prefill, then one compiled step per new token over a
    StaticCache that is allocated once and reset between calls."""

    def __init__(self, model, opts, ctx):
        import torch

        self.step = torch.compile(_decode_one_token, **compile_kwargs(opts))
        max_len = ctx.recipe.get("cache", {}).get("max_cache_len", "auto")
        self.max_cache_len = None if max_len == "auto" else max_len
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

    def __call__(self, model, input_ids, attention_mask, max_new_tokens, streamer=None, logits_processor=None,
                 **kwargs):
        """Greedy decoding like ``model.generate``: honours ``min_new_tokens`` (exact length) and
        ``logits_processor`` (applied to each step's logits before the argmax, as generate does)."""
        import torch

        if attention_mask is not None and not bool(attention_mask.all()):
            raise autotune.RecipeError("compile.target=decode does not support padded batches")
        batch, seq = input_ids.shape
        cache = self._cache_for(model, batch, seq + max_new_tokens)
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
        cache_position = torch.arange(seq, device=input_ids.device)
        logits = model(input_ids, cache_position=cache_position, past_key_values=cache,
                       return_dict=False, use_cache=True)[0]
        token = pick(logits[:, -1])
        tokens = [token]
        if streamer is not None:
            streamer.put(token[:, 0])
        cache_position = torch.tensor([seq], device=input_ids.device)
        done = torch.isin(token[:, 0], eos)
        for _ in range(1, max_new_tokens):
            if not exact and bool(done.all()):
                break
            token = pick(self.step(model, token.clone(), cache_position, cache).clone())
            tokens.append(token)
            if streamer is not None:
                streamer.put(token[:, 0])
            done |= torch.isin(token[:, 0], eos)
            cache_position += 1
        if streamer is not None:
            streamer.end()
        return torch.cat([input_ids, *tokens], dim=1)


class Compile(Optimization):
    name = "compile"
    order = 90  # last: compile what the other plugins built
    description = "torch.compile of the forward pass, a decode step, or the whole generate"

    def options(self):
        return [
            Option("target", ("off", "forward", "decode", "generate"), "off", "what to compile"),
            Option("mode", MODES, "default", "torch.compile mode", active=_on),
            Option("freezing", (False, True), False, "inductor freezing: fold weights as constants", active=_on),
            Option("cpp_wrapper", (False, True), False, "inductor C++ wrapper: less Python launch overhead",
                   active=_on),
        ]

    def unavailable(self, target, model=None):
        import shutil

        out = {}
        if not target.has_cuda:
            out["mode=reduce-overhead"] = "CUDA graphs only: on CPU it compiles the same program as default"
            out["mode=max-autotune"] = "on CPU it is max-autotune-no-cudagraphs (CUDA graphs only on CUDA)"
            if not (shutil.which("gcc") or shutil.which("cc") or shutil.which("g++")):
                for t in ("forward", "decode"):
                    out[f"target={t}"] = "inductor on CPU needs a C++ compiler (gcc)"
        return out

    def conflicts(self, recipe, target):
        mine = recipe.get(self.name, {})
        cache = recipe.get("cache", {})
        if mine.get("target") == "decode":
            if cache.get("implementation") != "static":
                return "compile.target=decode drives its own StaticCache: needs cache.implementation=static"
        return None

    def generate_kwargs(self, opts, ctx):
        # we compile what we are told to; transformers' own auto-compile (static cache on GPU) would
        # otherwise compile a second time behind our back
        return {"disable_compile": True}

    def after_load(self, model, opts, ctx):
        import torch

        if opts["target"] == "forward":
            model.forward = torch.compile(model.forward, **compile_kwargs(opts))
        elif opts["target"] == "generate":
            model.generate = torch.compile(model.generate, **compile_kwargs(opts))
        return model

    def wrap_generate(self, generate, model, opts, ctx):
        if opts["target"] == "decode":
            return DecodeLoop(model, opts, ctx)
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
