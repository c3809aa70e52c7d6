"""Decoding that skips work: prompt-lookup decoding proposes the next tokens by matching the last
n-gram against the prompt, and the model checks all of them in one forward pass.

Greedy output is unchanged — the model still picks every token; a proposal is kept only where it
equals the model's own argmax — so a recipe that changes the greedy text is a bug, and the search
reports it as a ``greedy_match`` below 1.0. What it buys depends on the text: on input-grounded
work (summaries, code edits) the answer repeats the input and several tokens are accepted per
forward pass; on free chat few are. That is why workloads have kinds (``--workload summarize``)."""
from __future__ import annotations

import autotune
from autotune import Option, Optimization
from autotune.errors import RecipeError


def _lookup(o):
    return o.get("method") == "prompt-lookup"


class Decoding(Optimization):
    name = "decoding"
    order = 60  # after the cache, before compile: it only sets generate kwargs
    description = "how tokens are proposed: plain greedy, or prompt lookup (n-gram drafts from the prompt)"

    def options(self):
        return [
            Option("method", ("greedy", "prompt-lookup"), "greedy",
                   "prompt-lookup: transformers' prompt_lookup_num_tokens (assisted decoding, no draft model)"),
            Option("num_tokens", (3, 5, 10), 10, "tokens proposed per lookup", active=_lookup),
            Option("max_ngram", (1, 2, 3), 2, "longest n-gram matched against the prompt", active=_lookup),
        ]

    def conflicts(self, recipe, target):
        if recipe.get(self.name, {}).get("method", "greedy") == "greedy":
            return None
        if recipe.get("compile", {}).get("target") == "decode":
            return "compile.target=decode runs its own one-token loop: it cannot verify several proposed tokens"
        cache = recipe.get("cache", {})
        if cache.get("implementation") in ("static", "offloaded_static") and cache.get("max_cache_len") == "auto":
            return ("a static cache sized to the call (max_cache_len=auto) has no room for the proposed tokens "
                    "verified past the last one: give cache.max_cache_len")
        return None

    def generate_kwargs(self, opts, ctx):
        if opts["method"] == "greedy":
            return {}
        if ctx.batch_size != 1:
            raise RecipeError("decoding.method=prompt-lookup runs one sequence at a time (transformers' assisted "
                              f"decoding): the workload has batch size {ctx.batch_size}")
        return {"prompt_lookup_num_tokens": opts["num_tokens"], "max_matching_ngram_size": opts["max_ngram"]}

    def transformers_export(self, opts):
        if opts["method"] == "greedy":
            return {}
        return {"generation_config": {"prompt_lookup_num_tokens": opts["num_tokens"],
                                      "max_matching_ngram_size": opts["max_ngram"]}}


@autotune.hookimpl
def register_optimizations(register):
    register(Decoding())
