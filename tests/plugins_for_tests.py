"""Plugins that misbehave on purpose, to check that a trial's failure is classified and never
takes the parent down. Importable by module name so the spawned trial process registers it too."""
from __future__ import annotations

import os
import time

import autotune
from autotune import Option, Optimization


class Chaos(Optimization):
    name = "chaos"
    order = 95
    description = "test-only: crash, hang, raise or run out of memory after load"

    def options(self):
        return [Option("behaviour", ("none", "abort", "hang", "raise", "oom", "slow", "hog", "slow-compile",
                                     "busy-compile", "slow-calls", "compiling-calls", "log-calls"), "none")]

    def wrap_generate(self, generate, model, opts, ctx):
        if opts["behaviour"] == "log-calls":
            # each call's rows and new tokens, a line each, to $CHAOS_LOG; with $CHAOS_COMPILE_FIRST the
            # first call compiles a graph (as a compiling engine's first call does)
            def logged(*args, _calls=[], **kwargs):
                if not _calls and os.environ.get("CHAOS_COMPILE_FIRST"):
                    import torch

                    torch.compile(lambda x: x + 1, backend="eager")(torch.ones(2))
                _calls.append(1)
                _model, ids, _mask, new = args[:4]  # the generate path's (model, ids, mask, new tokens, ...)
                with open(os.environ["CHAOS_LOG"], "a") as log:
                    log.write(f"{ids.shape[0]} {new}\n")
                return generate(*args, **kwargs)

            return logged
        if opts["behaviour"] in ("slow-calls", "compiling-calls"):
            # a long timed window: every call after the first is slow; compiling-calls: because each
            # compiles something (a fresh graph each call, as a recompile would)
            compiling = opts["behaviour"] == "compiling-calls"

            def slow(*args, _calls=[], **kwargs):
                if _calls:
                    time.sleep(float(os.environ.get("CHAOS_CALL_S", "0.3")))
                    if compiling:
                        import torch

                        torch.compile(lambda x: x * len(_calls), backend="eager")(torch.ones(len(_calls)))
                _calls.append(1)
                return generate(*args, **kwargs)

            return slow
        if opts["behaviour"] not in ("slow-compile", "busy-compile"):
            return generate
        calls = []
        busy = opts["behaviour"] == "busy-compile"  # burns CPU, as a compiler does: a stopped one waits

        def first_call_compiles_forever(*args, **kwargs):  # like max-autotune benchmarking GEMM templates
            if not calls:
                calls.append(1)
                seconds = float(os.environ.get("CHAOS_SLOW_S", "60"))
                if busy:
                    start = time.thread_time()
                    while time.thread_time() - start < seconds:
                        pass
                else:
                    time.sleep(seconds)
            return generate(*args, **kwargs)

        return first_call_compiles_forever

    def after_load(self, model, opts, ctx):
        b = opts["behaviour"]
        if b == "abort":
            os.abort()
        if b == "hang":
            time.sleep(3600)
        if b == "slow":  # long enough to kill or stop the worker mid-trial
            time.sleep(float(os.environ.get("CHAOS_SLOW_S", "12")))
        if b == "raise":
            raise RuntimeError("chaos plugin raised on purpose")
        if b == "oom":
            raise MemoryError("chaos plugin ran out of memory on purpose")
        if b == "hog":  # really use memory: 3 GiB, every page touched
            hog = bytearray(3 * 2**30)
            hog[::4096] = b"x" * len(hog[::4096])
            model._chaos_hog = hog
        return model


class CorruptDecode(Optimization):
    """Test-only: changes the numerics of decode steps only (one new token through the KV cache),
    the way a broken cache or a miscompiled decode step would. A full-sequence forward pass — what
    quality was scored on before — never sees it."""

    name = "corrupt"
    order = 96
    description = "test-only: add noise to the logits of one-token decode steps"

    def options(self):
        return [Option("decode", ("clean", "noisy", "nan"), "clean")]

    def after_load(self, model, opts, ctx):
        if opts["decode"] == "clean":
            return model
        import torch

        forward = model.forward

        def noisy_decode(*args, **kwargs):
            out = forward(*args, **kwargs)
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None and ids.shape[1] == 1:  # a decode step, not the prefill
                if opts["decode"] == "nan":  # overflowed arithmetic (float16 weights on a CPU)
                    out.logits = torch.full_like(out.logits, float("nan"))
                    return out
                g = torch.Generator().manual_seed(int(ids.sum()))
                noise = torch.randn(out.logits.shape, generator=g) * out.logits.float().std() * 3
                out.logits = out.logits + noise.to(out.logits.dtype)
            return out

        model.forward = noisy_decode
        return model


@autotune.hookimpl
def register_optimizations(register):
    register(Chaos())
    register(CorruptDecode())
