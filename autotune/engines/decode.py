"""The compiled decode loop (the Transformers guide's, grown to serve an envelope): a prefill that
keeps only the last position's logits (eager, or compiled once for every prompt length), then one
compiled step per token over the static cache, its attention windowed to the smallest rung of the
ladder that holds the call (one program for every rung: the window's length is a dynamic size). The
step is compiled whole, or one decoder layer is, shared by every layer (:mod:`.regions`).

Rows are padded up to the envelope's ``max_batch`` (copies of the first row, so a step's shapes never
change and nothing recompiles in steady state; an eager prompt pass runs the real rows only, and so do
the ahead-of-time loop's steps, whose program takes the rows as a dynamic size); a
left-padded batch runs with its attention mask over the cache's slots and per-row positions, as
``generate`` runs it; tokens are chosen and calls stopped by a
:class:`~autotune.engines.plan.GenerationPlan` (greedy or sampled, EOS, stop strings, streamers),
exactly as ``generate`` would."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import RecipeError
from .ladder import CacheLadder, cache_kwarg, warm_tokens
from .plan import GenerationPlan
from .regions import CompiledLayers


def prompt_pass(model, input_ids, position_ids, attention_mask, cache, cache_kw: str):
    """The prompt's pass for every row: fills the cache, returns the last position's logits."""
    out = model(input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                logits_to_keep=1, **{cache_kw: cache})
    return out.logits[:, -1]


def decode_step(model, token, position_ids, attention_mask, cache, cache_kw: str):
    """One token's pass for every row: the next-token logits, ``[batch, vocab]``."""
    logits = model(token, position_ids=position_ids, attention_mask=attention_mask, use_cache=True,
                   return_dict=False, **{cache_kw: cache})[0]
    return logits[:, -1]


@dataclass
class Rows:
    """A call's rows as an engine runs them: ``batch`` rows (the caller's, then copies of its first),
    the mask over the slots the call's window reads (0 on left padding, 1 elsewhere: causality hides
    the slots not yet written), and positions that skip the padding."""

    input_ids: Any  # [batch, prompt]
    mask: Any  # [batch, cache slots]
    positions: Any  # [batch, prompt]
    next_positions: Any  # [batch, 1]: the next token's
    slot: Any  # [1]: the cache slot the next token is written to
    cache: Any
    capacity: int
    real: int  # rows the caller asked for

    @classmethod
    def of(cls, input_ids, attention_mask, batch: int, cache, capacity: int, slots: int) -> "Rows":
        """``slots``: the length of the call's window over ``cache``."""
        import torch

        real, prompt = input_ids.shape
        device = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra = batch - real
        ids = torch.cat([input_ids, input_ids[:1].expand(extra, -1)]) if extra else input_ids
        given = torch.cat([attention_mask, attention_mask[:1].expand(extra, -1)]) if extra else attention_mask
        mask = torch.ones(batch, slots, dtype=torch.long, device=device)
        torch._dynamo.maybe_mark_dynamic(mask, 1)  # the window's length: one program for every rung
        mask[:, :prompt] = given.to(device=device, dtype=torch.long)
        positions = (mask[:, :prompt].cumsum(-1) - 1).masked_fill(mask[:, :prompt] == 0, 1)
        return cls(ids, mask, positions, positions[:, -1:] + 1, torch.tensor([prompt], device=device), cache,
                   capacity, real)

    def advance(self) -> None:
        self.next_positions += 1
        self.slot += 1

    def widen(self, token):
        """A token per real row, ``[real]`` → ``[batch, 1]`` for the step."""
        import torch

        extra = self.input_ids.shape[0] - self.real
        full = torch.cat([token, token[:1].expand(extra)]) if extra else token
        return full[:, None]


class DecodeLoop:
    """Eager prefill, compiled step (see the module)."""

    name = "compile.target=decode"
    #: the layer-compiled region when ``scope="layers"`` (a subclass that replaces the passes has none)
    regions: CompiledLayers | None = None

    def __init__(self, model, ladder: CacheLadder, compile_options: dict | None = None, compiled_prefill: bool = False,
                 scope: str = "model"):
        """``compiled_prefill``: the prompt's pass compiled too, once for every prompt length (dynamic
        shapes); else it runs eager. ``scope``: ``model`` compiles the whole step (and prompt pass);
        ``layers`` compiles one decoder layer, shared by all of them (:mod:`.regions`), the rest eager."""
        import torch

        self.ladder = ladder
        self.cache_kw = cache_kwarg(model)
        self.eager_prompt = not compiled_prefill
        if scope == "layers":
            self.regions = CompiledLayers(model, compile_options, prompt=compiled_prefill)
            self.compiled, self.prompt_pass = decode_step, prompt_pass
            return
        self.compiled = torch.compile(decode_step, **(compile_options or {}))
        self.prompt_pass = torch.compile(prompt_pass, dynamic=True, **(compile_options or {})) if compiled_prefill \
            else prompt_pass

    # -- the model's two passes (what the ahead-of-time loop replaces) -----------------------------
    def prefill(self, model, rows: Rows):
        """The prompt's pass: fills the cache, returns the last position's logits, ``[rows, vocab]``. An
        eager pass runs the call's real rows only (the padding rows' cache slots keep what they held: a
        step computes each row on its own, and theirs are dropped), without padding over a window of the
        prompt alone (causal attention without a mask); a compiled one runs all ``max_batch`` rows over
        the rung's window (one program for every call), and so does a pass over a cache with layers that
        are not windowed static ones."""
        if not self.eager_prompt or not self.ladder.windowable:  # other layers (sliding) take every row
            return self.prompt_pass(model, rows.input_ids, rows.positions, rows.mask, rows.cache, self.cache_kw)
        n, prompt = rows.real, rows.input_ids.shape[1]
        mask = rows.mask[:n]
        if bool(mask[:, :prompt].all()):  # no padding: a window of the prompt alone (ladder.prompt_window)
            with self.ladder.prompt_window(rows.cache, prompt, mask.shape[1]):
                return self.prompt_pass(model, rows.input_ids[:n], rows.positions[:n], mask[:, :prompt], rows.cache,
                                        self.cache_kw)
        return self.prompt_pass(model, rows.input_ids[:n], rows.positions[:n], mask, rows.cache, self.cache_kw)

    def step(self, model, token, rows: Rows):
        """One new token per row at ``rows.next_positions``: its logits, ``[batch, vocab]`` (cloned: a
        CUDA graph's output is overwritten by its next replay)."""
        return self.compiled(model, token.clone(), rows.next_positions.clone(), rows.mask, rows.cache,
                             self.cache_kw).clone()

    # -- a call ------------------------------------------------------------------------------------
    def __call__(self, model, input_ids, attention_mask, max_new_tokens, streamer=None, **kwargs):
        """``model.generate``'s answer for this call (see :class:`GenerationPlan` for what is honoured)."""
        plan = GenerationPlan(model, input_ids, max_new_tokens, kwargs, self.name)
        needed = input_ids.shape[1] + max_new_tokens
        self.ladder.envelope.check(input_ids.shape[0], needed, self.name)
        return self._generate(model, input_ids, attention_mask, max_new_tokens, streamer, plan,
                              self.ladder.rung(needed))

    def rows_for(self, real: int) -> int:
        """The rows a call's steps run: every ``max_batch`` row, the real ones then copies of the first
        (a compiled step's shapes never change, so nothing recompiles in steady state)."""
        return self.ladder.envelope.max_batch

    def cache_rows(self) -> int:
        """The rows of the cache the calls share."""
        return self.ladder.envelope.max_batch

    def _generate(self, model, input_ids, attention_mask, max_new_tokens, streamer, plan, capacity: int):
        import torch

        cache = self.ladder.cache(self.cache_rows(), capacity)
        batch = self.rows_for(input_ids.shape[0])
        rows = Rows.of(input_ids, attention_mask, batch, cache, capacity, self.ladder.window(capacity))
        sequence, real = input_ids, input_ids.shape[0]
        unfinished = torch.ones(real, dtype=torch.long, device=input_ids.device)
        if streamer is not None:
            streamer.put(input_ids)
        logits = self.prefill(model, rows)[:real]
        for i in range(max_new_tokens):
            token, scores = plan.pick(sequence, logits)
            if not plan.exact and plan.pad is not None:
                token = token * unfinished + plan.pad * (1 - unfinished)
            sequence = torch.cat([sequence, token[:, None]], dim=1)
            if streamer is not None:
                streamer.put(token)
            if not plan.exact:
                unfinished = unfinished & ~plan.stopped(sequence, scores).to(unfinished.dtype)
                if int(unfinished.max()) == 0:
                    break
            if i + 1 < max_new_tokens:  # the next token's logits
                logits = self.step(model, rows.widen(token), rows)[:real]
                rows.advance()
        if streamer is not None:
            streamer.end()
        return sequence

    def warm_up(self, model) -> None:
        """Run every rung once, so that serving any call of the envelope compiles nothing: a short
        prompt and two steps in each rung's cache (four on CUDA: :func:`warm_tokens`)."""
        import torch

        ids = torch.ones(1, 4, dtype=torch.long, device=model.device)
        steps = warm_tokens(model.device)
        regions = self.regions
        before = regions.calls if regions is not None else 0
        for capacity in self.ladder.capacities:
            plan = GenerationPlan(model, ids, steps, {"min_new_tokens": steps}, self.name)
            self._generate(model, ids, None, steps, None, plan, capacity)
        if regions is not None and regions.calls == before:  # a compiled recipe measured eager would lie
            raise RecipeError(f"{self.name} with compile.scope=layers: {type(model).__name__}'s decoder layers never "
                              "ran the compiled region (its cache layers cannot be windowed, or its layers take "
                              "arguments the region does not pass): use compile.scope=model")
