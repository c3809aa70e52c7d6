"""torch.compile, in the three flavours of the Transformers guide "LLM inference optimization":

- ``forward``: compile the model's forward pass and let ``generate`` drive it;
- ``decode``: compile a decode-one-token step and drive it from autotune's own loop over the static
  caches (:class:`autotune.engines.DecodeLoop`) — the whole model, or (``scope=layers``) one decoder
  layer whose program every layer shares;
- ``generate``: compile the whole ``generate`` call;

and beyond it, ``aoti``: the same loop over programs compiled ahead of time by AOTInductor, cached on
disk (:class:`autotune.engines.AheadOfTimeLoop`) — with the compile mode and inductor's CPU options
(freezing, cpp_wrapper). The loops are core engines; this plugin only chooses among them.
"""
from __future__ import annotations

import autotune
from autotune import Option, Optimization

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: the modes that capture CUDA graphs (on CUDA)
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def _on(o):
    return o.get("target", "off") != "off"


def _not_aoti(o):
    """cpp_wrapper: AOTInductor's wrapper is C++ whatever is chosen. freezing: AOTInductor programs
    share the model's weights (a frozen program would fold its own copy of them into every rung)."""
    return _on(o) and o.get("target") != "aoti"


def _cuda_home():
    """The CUDA toolkit torch's C++ builds would use (None: none found)."""
    from torch.utils import cpp_extension

    return cpp_extension.CUDA_HOME


def _rocm() -> bool:
    import torch

    return torch.version.hip is not None


def compile_kwargs(opts) -> dict:
    """torch.compile arguments: ``mode`` and ``options`` are exclusive, so fold the mode into options."""
    import torch._inductor

    options = dict(torch._inductor.list_mode_options(opts["mode"]))
    if opts.get("freezing"):
        options["freezing"] = True
    if opts.get("cpp_wrapper"):
        options["cpp_wrapper"] = True
    return {"options": options}


class Compile(Optimization):
    name = "compile"
    order = 90  # last: compile what the other plugins built
    version = "3"  # decode and aoti: one program for every rung of the cache ladder (was: one per rung)
    description = "torch.compile of the forward pass, a decode step, or the whole generate"

    def options(self):
        return [
            Option("target", ("off", "forward", "decode", "generate", "aoti"), "off",
                   "what to compile (aoti: the model over a static cache, ahead of time, cached on disk)"),
            Option("mode", MODES, "default", "torch.compile mode", active=_on),
            Option("freezing", (False, True), False, "inductor freezing: fold weights as constants",
                   active=_not_aoti),
            Option("cpp_wrapper", (False, True), False, "inductor C++ wrapper: less Python launch overhead",
                   active=_not_aoti),
            Option("scope", ("model", "layers"), "model", "what one program covers: the whole model, or one "
                   "decoder layer shared by all layers (compiles in a fraction of the time)",
                   active=lambda o: o.get("target") == "decode"),
            Option("prefill", ("eager", "compiled"), "eager", "the decode loop's prompt pass: eager, or compiled "
                   "once for every prompt length (where the prompt's pass dominates: long prompts)",
                   active=lambda o: o.get("target") == "decode"),
        ]

    def unavailable(self, target, model=None):
        import shutil

        out = {}
        if not target.has_cuda:
            out["mode=reduce-overhead"] = "CUDA graphs only: on CPU it compiles the same program as default"
            out["mode=max-autotune"] = "on CPU it is max-autotune-no-cudagraphs (CUDA graphs only on CUDA)"
        if not (shutil.which("gcc") or shutil.which("cc") or shutil.which("g++")):
            why = ("inductor needs a C compiler (gcc): " +
                   ("Triton builds its kernel launcher with one" if target.has_cuda else "its CPU kernels are C++"))
            for t in ("forward", "decode", "generate", "aoti"):
                out[f"target={t}"] = why
        elif target.has_cuda and _cuda_home() is None and not _rocm():
            why = "builds its C++ against the CUDA toolkit, and none is installed (no CUDA_HOME, nvcc or /usr/local/cuda)"
            out["target=aoti"] = f"AOTInductor on CUDA {why}"
            out["cpp_wrapper=True"] = f"inductor's C++ wrapper on CUDA {why}"
        return out

    def conflicts(self, recipe, target):
        mine = recipe.get(self.name, {})
        cache = recipe.get("cache", {})
        if mine.get("target") in ("decode", "aoti"):
            if cache.get("implementation") != "static":
                return (f"compile.target={mine['target']} drives its own StaticCache: needs "
                        "cache.implementation=static")
        if mine.get("target") == "aoti" and not target.has_cuda and "autotune" in mine.get("mode", "default"):
            # measured: the package asked for "constant573", a weight packed for the CPU GEMM template
            return (f"compile.mode={mine['mode']} on CPU packs weights into constants of the program's own, and an "
                    "AOTInductor program here shares the model's weights (its package holds none): the load fails")
        if target.has_cuda and mine.get("mode") in CUDA_GRAPH_MODES:
            if mine.get("target") == "generate":
                return (f"compile.mode={mine['mode']} captures CUDA graphs, and a whole generate call (its Python "
                        "loop, stopping criteria, a cache growing per token) cannot be one")
            if cache.get("implementation", "dynamic") != "static":
                return (f"compile.mode={mine['mode']} captures CUDA graphs, which need fixed addresses: a "
                        f"{cache.get('implementation', 'dynamic')} cache " +
                        ("moves each layer between the CPU and the GPU at every update"
                         if cache.get("implementation") == "offloaded_static" else "reallocates as it grows") +
                        " (needs cache.implementation=static)")
            if mine.get("target") == "decode" and mine.get("scope") == "layers":
                # not measured: one program that 30 layers enter in turn, each with its own weights as static
                # inputs, would re-record its graph per layer (or fall back) rather than replay one
                return (f"compile.mode={mine['mode']} with compile.scope=layers: one CUDA graph shared by every "
                        "layer, each with its own weights at fixed addresses, is re-recorded per layer rather "
                        "than replayed: use compile.scope=model")
        return None

    def after_load(self, model, opts, ctx):
        import torch

        # we compile what we are told to: every generate call on the model, the engines' warm-up too, skips
        # transformers' auto-compile (on a GPU with a static cache it would compile a forward in
        # reduce-overhead behind our back, which no timed call runs)
        model.generation_config.disable_compile = True
        if opts["target"] == "forward":
            model.forward = torch.compile(model.forward, **compile_kwargs(opts))
        elif opts["target"] == "generate":
            model.generate = torch.compile(model.generate, **compile_kwargs(opts))
        return model

    def wrap_generate(self, generate, model, opts, ctx):
        from autotune import engines

        if opts["target"] == "decode":
            return engines.DecodeLoop(model, ctx.ladder, compile_kwargs(opts), opts["prefill"] == "compiled",
                                      opts["scope"])
        if opts["target"] == "aoti":  # a program depends on the recipe, the hardware and the versions too
            identity = {"recipe": ctx.recipe, "hardware": ctx.target.hardware_key, "versions": ctx.target.versions}
            return engines.AheadOfTimeLoop(model, ctx.ladder, compile_kwargs(opts)["options"], identity)
        return generate

    def transformers_export(self, opts):
        # measured without transformers' auto-compile: a plain load of the export serves the same way
        config = {"generation_config": {"disable_compile": True}}
        if opts["target"] == "off":
            return config
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
        return {**config, "steps": steps}


@autotune.hookimpl
def register_optimizations(register):
    register(Compile())


@autotune.hookimpl
def register_seeds(register, target):
    """The Transformers guide's static-cache recipe as the guide writes it: bf16 weights, a static
    cache, the forward pass compiled — with CUDA graphs where there are any. (The guide's fullgraph=True
    only turns a graph break into an error; it runs the same program, so it is no option here.)

    A GPU recipe: on a CPU the whole model's forward compiled ran past the compile cap in every README job
    (at 120 s, and at 164 s on 2026-12-01, Xeon, 2 cores), a seed's time nothing was learnt from; the CPU
    seeds compile the same model as a decode step instead. The sampler may still propose it there."""
    if target.has_cuda:
        register("transformers guide", {"dtype": {"dtype": "bfloat16"}, "cache": {"implementation": "static"},
                                        "compile": {"target": "forward", "mode": "reduce-overhead"}}, rank=10)
