"""Generate engines: what drives a model token by token for a recipe — core code the plugins choose
among, not plugin code.

- :mod:`.ladder`: the static KV caches a recipe serves its envelope with (a ladder of sizes, each
  call served by the smallest that holds it), and the envelope itself;
- :mod:`.plan`: one call as ``model.generate`` would run it (its processors, sampling, stopping);
- :mod:`.decode`: the compiled decode loop (eager prefill, compiled step per token);
- :mod:`.aoti`: the same loop over AOTInductor programs cached on disk, sharing the model's weights.

Every engine serves its whole envelope: ``warm_up(model)`` runs each program once, after which no
call of the envelope compiles anything."""
from __future__ import annotations

from .aoti import AheadOfTimeLoop
from .decode import DecodeLoop
from .ladder import GROWTH, CacheLadder, Envelope, serve_from
from .plan import GenerationPlan

__all__ = ["AheadOfTimeLoop", "CacheLadder", "DecodeLoop", "Envelope", "GROWTH", "GenerationPlan", "serve_from"]
