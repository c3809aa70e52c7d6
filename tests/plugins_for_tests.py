"""A plugin that misbehaves on purpose, to check that a trial's failure is classified and never
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
        return [Option("behaviour", ("none", "abort", "hang", "raise", "oom", "slow"), "none")]

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
        return model


@autotune.hookimpl
def register_optimizations(register):
    register(Chaos())
