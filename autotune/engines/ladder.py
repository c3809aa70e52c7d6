"""The static KV cache a recipe serves its envelope with, read through a ladder of windows.

A static cache is allocated once and never grows, which is what compilation (fixed shapes) and CUDA
graphs (fixed addresses) need — but attention over the whole of a cache sized for the envelope's
``max_context`` makes every short call pay for the longest (measured on a 2-core EPYC: 3.10x the HF
default with a cache sized to the call, 1.14x with one of 2048). So a recipe holds one cache of
``max_context`` positions per batch width, and each call's attention reads only a window of its
first slots: the smallest rung of a ladder of sizes (``max_context`` down by a growth factor to
:data:`MIN_RUNG`) that holds the call. The window's length is a tensor's shape (a layer's ``span``),
so a compiled or ahead-of-time program takes it as a dynamic size: **one program serves every
rung**, where a cache per rung needed a program per rung (five for a 2048 envelope, each compile
paid again). The cache is allocated the first time it is asked for — outside any compiled region, so
transformers marks its buffers' addresses static — and rewound, not reallocated, between calls."""
from __future__ import annotations

import contextlib
import functools
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
    """One static cache per batch width, each call's attention windowed to the smallest rung that holds
    it (see the module)."""

    def __init__(self, model, envelope: Envelope, growth: int | None = 2, offloading: bool = False):
        self.model, self.envelope, self.offloading = model, envelope, offloading
        self.capacities = capacities(envelope.max_context, growth)
        # each cache's length: one slot beyond the largest window, so that no window is the whole cache
        # (a compiled slice of all of a tensor and one of a part are two programs)
        self.slots = envelope.max_context + SLACK + 1
        self._caches: dict[int, object] = {}
        self._spans: dict[int, object] = {}

    def rung(self, needed: int) -> int:
        """The capacity of the smallest rung that holds ``needed`` positions."""
        return next(c for c in self.capacities if needed <= c)

    def window(self, capacity: int) -> int:
        """The slots a call served by the ``capacity`` rung reads: the rung and its slack, or the whole
        cache where its layers cannot be windowed."""
        return capacity + SLACK if self.windowable else self.slots

    def cache_for(self, batch: int, needed: int, who: str = "this recipe"):
        """The rewound cache for ``batch`` rows, windowed to the smallest rung holding ``needed``."""
        self.envelope.check(batch, needed, who)
        return self.cache(batch, self.rung(needed))

    def cache(self, batch: int, capacity: int):
        """The rewound cache for ``batch`` rows, its attention windowed to the ``capacity`` rung."""
        cache = self._caches.get(batch)
        if cache is None:
            cache = self._caches[batch] = self._allocate(batch)
        else:
            rewind(cache)
        self.set_window(cache, self.window(capacity))
        return cache

    def set_window(self, cache, slots: int) -> None:
        """Every windowed layer of ``cache`` reads its first ``slots`` slots from now on."""
        span = self._spans.get(slots)
        if span is None:
            import torch

            span = self._spans[slots] = torch.empty(slots, 0, device=self.model.device)
            torch._dynamo.maybe_mark_dynamic(span, 0)  # one program for every window
        _point(cache, span)

    @contextlib.contextmanager
    def prompt_window(self, cache, prompt: int, slots: int):
        """Within: a windowed ``cache`` (:func:`windowed`) reads exactly its first ``prompt`` slots, then
        again ``slots``.
        An eager prompt pass over a fresh cache, without padding, then has as many keys as queries, and
        transformers runs causal attention with no mask at all: half the work of a masked pass over the
        rung's window (1984 tokens: 670 ms of a 1.3 s prompt pass went to the masked attention)."""
        import torch

        _point(cache, torch.empty(prompt, 0, device=self.model.device))
        try:
            yield
        finally:
            self.set_window(cache, slots)

    @functools.cached_property
    def windowable(self) -> bool:
        """Whether this model's caches are windowed (:func:`windowed`; a cache not yet allocated tells)."""
        return windowed(self._unallocated())

    def _unallocated(self):
        """A static cache of this model's layers, windowed where they are plain static ones; its tensors
        are allocated on first use."""
        from transformers import StaticCache
        from transformers.cache_utils import StaticLayer

        config = self.model.config.get_text_config(decoder=True)
        cache = StaticCache(config=config, max_cache_len=self.slots, offloading=self.offloading)
        for layer in cache.layers:
            if type(layer) is StaticLayer:
                layer.__class__ = window_layer()
        return cache

    def _allocate(self, batch: int):
        """Outside inference mode (calls run inside it): an ahead-of-time program exports the cache's
        buffers, and export cannot update inference tensors."""
        import torch

        heads, head_dim = kv_shape(self.model.config.get_text_config(decoder=True))
        with torch.inference_mode(False):
            cache = self._unallocated()
            cache.early_initialization(batch_size=batch, num_heads=heads, head_dim=head_dim, dtype=self.model.dtype,
                                       device=self.model.device)
        return cache


@functools.cache
def window_layer():
    """transformers' plain static layer (full attention), reading only its first ``len(span)`` slots
    when it has a ``span``: keys and values returned to attention, and the mask's length, are the
    window's (slots past it hold nothing this call wrote: the call's rung holds it). A prompt pass over
    fewer rows than the cache holds (the call's real rows, not the copies that pad a step to
    ``max_batch``) writes and reads the first rows only, and so does a program whose rows are a dynamic
    size (the ahead-of-time loop's: one program for every batch width up to ``max_batch``)."""
    import torch
    from transformers.cache_utils import StaticLayer

    class WindowedStaticLayer(StaticLayer):
        span = None

        def update(self, key_states, value_states, *args, **kwargs):
            rows = key_states.shape[0]
            # fewer rows than the cache holds: a prompt pass over the call's real rows, or a program traced
            # for any number of rows (a static comparison there would fix the rows it was traced with)
            if self.is_initialized and (isinstance(rows, torch.SymInt) or rows < self.keys.shape[0]):
                at = torch.arange(key_states.shape[-2], device=self.device) + self.cumulative_length
                self.cumulative_length.add_(key_states.shape[-2])
                if torch.compiler.is_compiling():  # (dynamo sees a traced size as an int)
                    # traced: written into the whole cache, the rows past the call's padded with zeros (no
                    # call reads a slot it did not write). A write through the view ``keys[:rows]`` was
                    # functionalized into a copy of those rows' whole cache, written back, at every step
                    spare = (0, 0, 0, 0, 0, 0, 0, self.keys.shape[0] - rows)
                    self.keys.index_copy_(2, at, torch.nn.functional.pad(key_states, spare))
                    self.values.index_copy_(2, at, torch.nn.functional.pad(value_states, spare))
                else:
                    self.keys[:rows].index_copy_(2, at, key_states)  # views: written through to the cache
                    self.values[:rows].index_copy_(2, at, value_states)
                keys, values = self.keys[:rows], self.values[:rows]
            else:
                keys, values = super().update(key_states, value_states, *args, **kwargs)
            if self.span is None:
                return keys, values
            slots = self.span.shape[0]
            return keys[:, :, :slots], values[:, :, :slots]

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return (self.max_cache_len if self.span is None else self.span.shape[0]), 0

    return WindowedStaticLayer


def _point(cache, span) -> None:
    """Every windowed layer of ``cache`` reads ``len(span)`` slots from now on."""
    for layer in cache.layers:
        if type(layer) is window_layer():
            layer.span = span


def windowed(cache) -> bool:
    """Whether every attention layer of ``cache`` reads a window (a model with sliding-window or other
    layers reads its whole cache)."""
    return all(type(layer) is window_layer() for layer in cache.layers)


def rewind(cache) -> None:
    """Make a used static cache empty again: a plain static layer only moves its write position back
    (what it held past the position is masked by causality); other layers reset themselves."""
    for layer in cache.layers:
        if type(layer) is window_layer() and layer.is_initialized:
            layer.cumulative_length.zero_()
        else:
            layer.reset()


def kv_shape(config) -> tuple[int, int]:
    """(key/value heads, head dim) of a decoder config."""
    heads = getattr(config, "num_attention_heads", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return kv_heads, getattr(config, "head_dim", None) or config.hidden_size // heads


def warm_tokens(device) -> int:
    """New tokens a warm-up call decodes in each rung: 2 (one decode step) compiles every program; on CUDA
    4, since a CUDA-graph tree runs a shape's first call, records its second and replays from the third
    (torch/_inductor/cudagraph_trees.py), and a recording in a timed call would be timed."""
    return 4 if getattr(device, "type", str(device)) == "cuda" else 2


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

        steps = warm_tokens(model.device)
        for batch in sorted({1, ladder.envelope.max_batch}):
            ids = torch.ones(batch, 4, dtype=torch.long, device=model.device)
            for capacity in ladder.capacities:
                generate(model, ids, torch.ones_like(ids), steps, None, min_new_tokens=steps,
                         **{cache_kwarg(model): ladder.cache(batch, capacity)})

    static_generate.warm_up = warm_up
    static_generate.ladder = ladder
    return static_generate
