"""Decoding that skips work: something cheap proposes the next tokens and the model checks all of
them in one forward pass. Prompt lookup proposes by matching the last n-gram against the prompt;
assisted (speculative) decoding lets a small draft model the user names (``--draft MODEL``, with the
same tokenizer) propose them.

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


def _assisted(o):
    return o.get("method") == "assisted"


class Decoding(Optimization):
    name = "decoding"
    order = 60  # after the cache, before compile: it only sets generate kwargs
    description = ("how tokens are proposed: plain greedy, prompt lookup (n-gram drafts from the prompt), or "
                   "assisted by a draft model (--draft)")

    def options(self):
        return [
            Option("method", ("greedy", "prompt-lookup", "assisted"), "greedy",
                   "prompt-lookup: n-gram drafts from the prompt (prompt_lookup_num_tokens); assisted: a draft "
                   "model's proposals (assistant_model, needs --draft)"),
            Option("num_tokens", (3, 5, 10), 10, "tokens proposed per lookup", active=_lookup),
            Option("max_ngram", (1, 2, 3), 2, "longest n-gram matched against the prompt", active=_lookup),
            Option("draft", (None,), None, "the draft model (--draft MODEL): a smaller model with the same "
                   "tokenizer", active=_assisted, given=True),
            Option("draft_tokens", (3, 5, 10, 20), 20, "tokens the draft proposes per round (the first round's, "
                   "with the heuristic schedule)", active=_assisted),
            Option("schedule", ("heuristic", "constant"), "heuristic",
                   "heuristic: two more draft tokens after a round accepted whole, one fewer after a miss",
                   active=_assisted),
            Option("confidence", (0.4, 0.0), 0.4, "the draft stops proposing below this probability (0.0: never; "
                   "transformers adapts the threshold when scikit-learn is installed)", active=_assisted),
        ]

    def unavailable(self, target, model=None):
        if model is None:  # without the study's model and draft nothing can be said
            return {}
        if model.rows > 1:  # transformers verifies proposals for one sequence at a time
            why = (f"runs one sequence at a time (transformers' assisted decoding): the workload's calls have up to "
                   f"{model.rows} rows")
            return {"method=prompt-lookup": why, "method=assisted": why}
        if model.draft is None:
            return {"method=assisted": "no draft model given: --draft MODEL (a smaller model with the same tokenizer)"}
        mine, theirs = model.config.get("vocab_size"), model.draft.config.get("vocab_size")
        if mine and theirs and mine != theirs:
            return {"method=assisted": f"the draft's vocabulary ({theirs} tokens) is not the model's ({mine}): "
                    "assisted decoding needs the same tokenizer"}
        return {}

    def conflicts(self, recipe, target):
        opts = recipe.get(self.name, {})
        method = opts.get("method", "greedy")
        if method == "greedy":
            return None
        if method == "assisted" and not opts.get("draft"):
            return "decoding.method=assisted needs a draft model: give --draft MODEL (or decoding.draft)"
        target = recipe.get("compile", {}).get("target")
        if target in ("decode", "aoti"):
            return f"compile.target={target} runs its own one-token loop: it cannot verify several proposed tokens"
        return None

    def generate_kwargs(self, opts, ctx):
        if opts["method"] == "greedy":
            return {}
        rows = max(ctx.batch_size, ctx.max_batch)
        if rows != 1:
            raise RecipeError(f"decoding.method={opts['method']} runs one sequence at a time (transformers' assisted "
                              f"decoding): the workload's calls have up to {rows} rows (batch size {ctx.batch_size}, "
                              f"max_batch {ctx.max_batch})")
        if opts["method"] == "assisted":
            return {}  # the draft is passed by wrap_generate, once it is loaded
        return {"prompt_lookup_num_tokens": opts["num_tokens"], "max_matching_ngram_size": opts["max_ngram"]}

    def wrap_generate(self, generate, model, opts, ctx):
        if opts["method"] != "assisted":
            return generate
        draft = load_draft(opts, model, ctx)

        def assisted_generate(model, input_ids, attention_mask, max_new_tokens, streamer=None, **kwargs):
            return generate(model, input_ids, attention_mask, max_new_tokens, streamer, assistant_model=draft, **kwargs)

        assisted_generate.draft = draft
        return assisted_generate

    def transformers_export(self, opts):
        if opts["method"] == "greedy":
            return {}
        if opts["method"] == "assisted":
            return {"steps": [f"load the draft {opts['draft']!r} (AutoModelForCausalLM, the model's dtype) and set its "
                              f"generation_config: num_assistant_tokens={opts['draft_tokens']}, "
                              f"num_assistant_tokens_schedule={opts['schedule']!r}, "
                              f"assistant_confidence_threshold={opts['confidence']}; "
                              "pass it to generate as assistant_model"]}
        return {"generation_config": {"prompt_lookup_num_tokens": opts["num_tokens"],
                                      "max_matching_ngram_size": opts["max_ngram"]}}


def load_draft(opts, model, ctx):
    """The draft model, in the served model's dtype on its device, its proposal knobs set where
    transformers' AssistedCandidateGenerator reads them (the draft's generation_config)."""
    from transformers import AutoModelForCausalLM

    from autotune.apply import hub_kernels
    from autotune.errors import ModelError
    from autotune.sources import resolve_model

    source = resolve_model(opts["draft"], tokenizer=False)
    try:
        draft = AutoModelForCausalLM.from_pretrained(source.path, dtype=model.dtype, device_map=ctx.device,
                                                     **hub_kernels())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the draft model {opts['draft']!r}: {str(exc).splitlines()[0]}") from None
    draft.eval()
    gc = draft.generation_config
    gc.num_assistant_tokens = opts["draft_tokens"]
    gc.num_assistant_tokens_schedule = opts["schedule"]
    gc.assistant_confidence_threshold = opts["confidence"]
    return draft


@autotune.hookimpl
def register_optimizations(register):
    register(Decoding())
