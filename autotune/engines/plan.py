"""One generate call as ``model.generate`` would run it, for a loop that drives the model itself.

The call's settings are merged with the model's generation config, and its logits processors
(repetition penalty, minimum length, temperature / top-k / top-p / min-p warpers, the caller's own)
and stopping criteria (length, EOS, stop strings, the caller's own) are built by transformers'
own generate machinery — so an engine honours what ``generate`` honours, in the same order, and
samples with the same draw (``torch.multinomial`` of the softmax, one per step). What a one-token
loop cannot honour (beams, several return sequences, returned scores, another decoding mode) is
refused with one :class:`~autotune.errors.RecipeError` naming it — never served differently."""
from __future__ import annotations

from ..errors import RecipeError

#: generate kwargs that reach the model's forward in ``generate`` and that a loop may take or ignore
#: (the cache is the engine's own; ``disable_compile`` and ``cache_implementation`` concern generate's)
IGNORED = {"use_cache", "disable_compile", "cache_implementation", "max_cache_len", "attention_mask"}


class GenerationPlan:
    """Processors, stopping criteria and special tokens of one call (``input_ids`` as given, with
    its left padding). :meth:`pick` chooses each step's tokens, :meth:`stopped` says which rows are done."""

    def __init__(self, model, input_ids, max_new_tokens: int, kwargs: dict, who: str):
        from transformers import LogitsProcessorList, StoppingCriteriaList
        from transformers.generation.configuration_utils import GenerationMode

        kwargs = dict(kwargs)
        custom_processors = kwargs.pop("logits_processor", None) or LogitsProcessorList()
        custom_criteria = kwargs.pop("stopping_criteria", None) or StoppingCriteriaList()
        tokenizer = kwargs.pop("tokenizer", None)
        kwargs.setdefault("do_sample", False)  # as autotune's HF path: greedy unless asked
        config, model_kwargs = model._prepare_generation_config(None, max_new_tokens=max_new_tokens, **kwargs)
        unknown = sorted(set(model_kwargs) - IGNORED - {"output_attentions", "output_hidden_states"})
        if unknown:
            raise RecipeError(f"{who} cannot honour generate argument(s) {', '.join(unknown)}: use a recipe "
                              "without it, or model.generate")
        mode = config.get_generation_mode()
        if mode not in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE):
            raise RecipeError(f"{who} runs greedy search or sampling, one token per step; this call asks for "
                              f"{mode.value} (num_beams, assistant, penalty_alpha ...)")
        for name, fine in (("num_return_sequences", 1), ("return_dict_in_generate", False),
                           ("output_scores", False), ("output_logits", False)):
            if getattr(config, name, fine) not in (fine, None):
                raise RecipeError(f"{who} cannot honour {name}={getattr(config, name)!r}")
        length = input_ids.shape[1]
        config.max_length = length + max_new_tokens
        model._prepare_special_tokens(config, True, device=input_ids.device, batch_size=input_ids.shape[0])
        self.processors = model._get_logits_processor(generation_config=config, input_ids_seq_length=length,
                                                      encoder_input_ids=input_ids, logits_processor=custom_processors,
                                                      device=input_ids.device, model_kwargs=model_kwargs)
        self.criteria = model._get_stopping_criteria(config, stopping_criteria=custom_criteria, tokenizer=tokenizer)
        self.do_sample = bool(config.do_sample)
        self.pad = config._pad_token_tensor
        # a call of exactly max_new_tokens with nothing else that stops it needs no check per step (a
        # check reads the GPU's answer back: a synchronisation per token)
        self.exact = (config.min_new_tokens == max_new_tokens and not custom_criteria
                      and config.stop_strings is None and config.max_time is None)

    def pick(self, sequence, logits):
        """The next token of every row, ``[batch]``: the processed scores' argmax, or a draw from their
        softmax when sampling — as ``generate`` does."""
        import torch

        scores = self.processors(sequence, logits.float()) if self.processors else logits
        if self.do_sample:
            probs = torch.nn.functional.softmax(scores.float(), dim=-1)
            return torch.multinomial(probs, num_samples=1).squeeze(1), scores
        return torch.argmax(scores, dim=-1), scores

    def stopped(self, sequence, scores):
        """Which rows are done after ``sequence`` (bool, ``[batch]``)."""
        return self.criteria(sequence, scores)
