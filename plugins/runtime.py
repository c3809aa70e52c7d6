"""CPU threads for every forward and generate call (``torch.set_num_threads``).

On a CPU target the intra-op thread count decides how the matmuls of each decode step are split:
more threads are not always faster for a small model (synchronisation per op costs more than it
saves), and a production host often shares its cores with other work. ``auto`` keeps torch's
default (one thread per core); a count equal to that default, or above this machine's cores, is
marked unavailable so no trial is spent on it."""
from __future__ import annotations

import contextlib

import autotune
from autotune import Option, Optimization
from autotune.target import usable_cores

COUNTS = (1, 2, 4, 8, 16, 32, 64, 128)


def _default_threads() -> int:
    import torch

    return torch.get_num_threads()


class Runtime(Optimization):
    name = "runtime"
    order = 1  # outermost: every other plugin's runtime context runs inside it
    description = "intra-op CPU threads (torch.set_num_threads) for every call"

    def options(self):
        return [Option("threads", ("auto", *COUNTS), "auto",
                       "intra-op threads; auto = torch's default (one per core)")]

    def unavailable(self, target, model=None):
        out = {}
        if target.has_cuda:
            for n in COUNTS:  # the GPU does the work; threads only feed it
                out[f"threads={n}"] = "on CUDA the CPU threads only launch kernels: no choice to make"
            return out
        cores, default = usable_cores(), _default_threads()
        for n in COUNTS:
            if n > cores:
                out[f"threads={n}"] = f"this machine has {cores} cores"
            elif n == default:
                out[f"threads={n}"] = f"torch's default here is {default} threads: the same as auto"
        return out

    def runtime_context(self, opts, ctx):
        threads = opts["threads"]
        if threads == "auto":
            return contextlib.nullcontext()
        return _threads(threads)

    def transformers_export(self, opts):
        if opts["threads"] == "auto":
            return {}
        return {"steps": [f"call torch.set_num_threads({opts['threads']}) before loading the model"]}


@contextlib.contextmanager
def _threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@autotune.hookimpl
def register_optimizations(register):
    register(Runtime())
