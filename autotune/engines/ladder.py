"""The static KV caches a recipe serves its envelope with: a ladder of sizes.

A static cache is allocated once and never grows, which is what compilation (fixed shapes) and CUDA
graphs (fixed addresses) need — but every decode step attends over its whole length, so one cache
sized for the envelope's ``max_context`` makes every short call pay for the longest (measured on a
2-core EPYC: 3.10x the HF default with a cache sized to the call, 1.14x with one of 2048). A ladder
holds several sizes, from ``max_context`` down by a growth factor to :data:`MIN_RUNG`, and serves
each call from the smallest rung that holds it. Each rung's cache is allocated the first time it is
asked for — outside any compiled region, so transformers marks its buffers' addresses static — and
rewound, not reallocated, between calls."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import RecipeError

#: the smallest rung (positions): below it attention costs nothing worth a program of its own
MIN_RUNG = 128
#: positions a rung keeps beyond the calls it serves: room for the proposals prompt lookup verifies past
#: the last token
SLACK = 16
#: ladder choices: how much each rung is larger than the one below (None: one rung of max_context)
GROWTH = {"x2": 2, "x4": 4, "one": None}


def capacities(max_context: int, growth: int | None) -> list[int]:
    """The rungs' capacities (prompt + new tokens each serves), ascending: ``max_context``, then divided
    by ``growth`` while at least :data:`MIN_RUNG`."""
    out = [max_context]
    while growth and out[-1] // growth >= MIN_RUNG:
        out.append(out[-1] // growth)
    return sorted(out)


@dataclass(frozen=True)
class Envelope:
    """What one call may need: at most ``max_context`` positions (prompt + new tokens) and
    ``max_batch`` sequences."""

    max_context: int
    max_batch: int

    def check(self, batch: int, needed: int, who: str) -> None:
        """A :class:`RecipeError` naming the envelope for a call outside it."""
        if batch > self.max_batch or needed > self.max_context:
            raise RecipeError(f"{who} serves calls of at most {self.max_context} positions and {self.max_batch} "
                              f"sequences (its envelope: workload max_context / max_batch); this call needs {needed} "
                              f"positions and {batch} sequences")


class CacheLadder:
    """Static caches for one model: one per (rung, batch size), made on first use."""

    def __init__(self, model, envelope: Envelope, growth: int | None = 2, offloading: bool = False):
        self.model, self.envelope, self.offloading = model, envelope, offloading
        self.capacities = capacities(envelope.max_context, growth)
        self._caches: dict[tuple[int, int], object] = {}

    def rung(self, needed: int) -> int:
        """The capacity of the smallest rung that holds ``needed`` positions."""
        return next(c for c in self.capacities if needed <= c)

    def cache_for(self, batch: int, needed: int, who: str = "this recipe"):
        """The rewound StaticCache of the smallest rung holding ``needed`` positions, for ``batch`` rows."""
        self.envelope.check(batch, needed, who)
        return self.cache(batch, self.rung(needed))

    def cache(self, batch: int, capacity: int):
        key = (capacity, batch)
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = self._allocate(batch, capacity)
        else:
            rewind(cache)
        return cache

    def _allocate(self, batch: int, capacity: int):
        """Outside inference mode (calls run inside it): an ahead-of-time program exports the cache's
        buffers, and export cannot update inference tensors."""
        import torch
        from transformers import StaticCache

        config = self.model.config.get_text_config(decoder=True)
        heads, head_dim = kv_shape(config)
        with torch.inference_mode(False):
            cache = StaticCache(config=config, max_cache_len=capacity + SLACK, offloading=self.offloading)
            cache.early_initialization(batch_size=batch, num_heads=heads, head_dim=head_dim, dtype=self.model.dtype,
                                       device=self.model.device)
        return cache


def rewind(cache) -> None:
    """Make a used static cache empty again: a plain static layer only moves its write position back
    (what it held past the position is masked by causality); other layers reset themselves."""
    from transformers.cache_utils import StaticLayer

    for layer in cache.layers:
        if type(layer) is StaticLayer and layer.is_initialized:
            layer.cumulative_length.zero_()
        else:
            layer.reset()


def kv_shape(config) -> tuple[int, int]:
    """(key/value heads, head dim) of a decoder config."""
    heads = getattr(config, "num_attention_heads", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return kv_heads, getattr(config, "head_dim", None) or config.hidden_size // heads


def cache_kwarg(model) -> str:
    """The name a model's forward takes its cache by (transformers 5.24 renamed ``past_key_values`` to
    ``cache``)."""
    import inspect

    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def serve_from(ladder: CacheLadder, generate, who: str = "cache.implementation=static"):
    """``generate`` (transformers' own, through any wrappers) handed the ladder's cache for each call:
    the smallest rung that holds it, rewound. ``.warm_up(model)`` runs each rung once (a compiled
    forward compiles for each cache size it meets) at the batch sizes the envelope serves."""

    def static_generate(model, input_ids, attention_mask, max_new_tokens, streamer=None, **kwargs):
        batch, needed = input_ids.shape[0], input_ids.shape[1] + max_new_tokens
        ladder.envelope.check(batch, needed, who)
        # beams and several return sequences widen the rows generate runs (the cache must match them)
        rows = batch * max(kwargs.get("num_beams") or 1, kwargs.get("num_return_sequences") or 1)
        cache = ladder.cache(rows, ladder.rung(needed))
        return generate(model, input_ids, attention_mask, max_new_tokens, streamer,
                        **{cache_kwarg(model): cache}, **kwargs)

    def warm_up(model) -> None:
        import torch

        for batch in sorted({1, ladder.envelope.max_batch}):
            ids = torch.ones(batch, 4, dtype=torch.long, device=model.device)
            for capacity in ladder.capacities:
                generate(model, ids, torch.ones_like(ids), 2, None, min_new_tokens=2,
                         **{cache_kwarg(model): ladder.cache(batch, capacity)})

    static_generate.warm_up = warm_up
    static_generate.ladder = ladder
    return static_generate
