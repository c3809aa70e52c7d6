"""The plugin contract, shipped so that a plugin's author runs the same checks as the built-ins
(as optuna ships its storage tests)::

    from autotune.testing import build_tiny_model, check_plugin

    def test_my_plugin(tmp_path):
        check_plugin(MyOptimization(), build_tiny_model(tmp_path / "tiny"))

:func:`check_plugin` checks that the optimization declares well-formed options and rules, applies
with its defaults and generates exactly the asked tokens through a generate path that honours
``logits_processor``, and that **every available choice of every option changes what runs**: the
weights as loaded, the modules, the attention implementation, what is handed to ``torch.compile``,
the generate path and its kwargs, or the backends enabled at run time. A choice that changes none of
these wastes the user's trials.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from .apply import finish, hf_generate, load_model, load_tokenizer
from .optimization import ApplyContext, Optimization
from .recipe import resolve


def build_tiny_model(out: Path, hidden: int = 64, layers: int = 2) -> Path:
    """A tiny random-weight Llama with a real (trained byte-level BPE) tokenizer, saved like any
    checkpoint, so tests load it through the real ``from_pretrained`` path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from .workload import shipped_text

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([shipped_text("reference.txt"), shipped_text("prompts.txt")], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=fast.vocab_size,
                         max_position_embeddings=512, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id, bos_token_id=fast.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    fast.save_pretrained(out)
    return Path(out)


def _target(target):
    if target is not None:
        return target
    from .target import current_target

    return current_target("cpu")


def check_declaration(opt: Optimization, optimizations: dict | None = None, target=None) -> None:
    """Options are well formed; ``unavailable`` names real choices with reasons; the defaults are
    allowed together with every other plugin's defaults."""
    target = _target(target)
    assert isinstance(opt, Optimization) and opt.name and opt.description, "name and description are required"
    options = opt.options()
    assert options, f"{opt.name} declares no options"
    by_name = {}
    for o in options:
        assert o.name not in by_name, f"{opt.name}.{o.name} declared twice"
        by_name[o.name] = o
        assert o.default in o.choices, f"{opt.name}.{o.name}: default not among its choices"
        assert o.distribution.choices == tuple(o.choices)
        assert len(set(map(repr, o.choices))) == len(o.choices), f"{opt.name}.{o.name}: duplicate choices"
    for key, reason in opt.unavailable(target).items():
        option, _, choice = key.partition("=")
        assert option in by_name, f"{opt.name}: unavailable names unknown option {key}"
        assert choice in {str(c) for c in by_name[option].choices}, f"{opt.name}: unavailable names {key}"
        assert reason.strip(), f"{opt.name}: {key} is unavailable without a reason"
    recipe = resolve({}, optimizations or {opt.name: opt})
    assert opt.conflicts(recipe, target) is None, "the defaults must be allowed together"


def check_applies(opt: Optimization, model_dir, target=None, choices: dict | None = None) -> None:
    """The plugin applies (defaults, or ``choices``) to a real checkpoint and its generate path makes
    exactly the asked tokens and honours ``logits_processor`` (quality is scored through it)."""
    import torch

    from .measure import forcing_processor
    from .trial import _processors

    target = _target(target)
    recipe = resolve({opt.name: choices or {}}, {opt.name: opt})
    ctx = ApplyContext(target, "cpu", 4, 8, 1, recipe)
    model = load_model(str(model_dir), {opt.name: opt}, recipe, ctx)
    applied = finish(model, load_tokenizer(str(model_dir)), {opt.name: opt}, recipe, ctx)
    prompt = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    out = applied.generate_ids(prompt, max_new_tokens=4, min_new_tokens=4)
    assert out.shape == (1, 12), f"{opt.name}: generated {out.shape[1] - 8} tokens, asked for exactly 4"
    forced = torch.tensor([[11, 12, 13, 14]])
    out = applied.generate_ids(prompt, max_new_tokens=4, min_new_tokens=4,
                               logits_processor=_processors(forcing_processor(forced)))
    assert torch.equal(out[:, 8:], forced), f"{opt.name}: its generate path ignores logits_processor"
    assert isinstance(opt.transformers_export(recipe[opt.name]), dict)


#: the envelope the contract applies plugins for (the tiny model's 512 positions): wide enough that
#: choices sized by it (a cache ladder's rungs) differ
ENVELOPE = 512


@contextlib.contextmanager
def _recording_compile():
    """Record what is handed to ``torch.compile`` (the function's name and the options, which carry
    inductor's config: mode, freezing, cpp_wrapper ...), compiling nothing."""
    import torch

    calls: list = []
    real = torch.compile

    def record(fn=None, **kwargs):
        calls.append((getattr(fn, "__name__", type(fn).__name__), repr(sorted(kwargs.items()))))
        return fn

    torch.compile = record
    try:
        yield calls
    finally:
        torch.compile = real


def _runtime_state() -> tuple:
    """What a runtime context can change: the SDPA backends enabled, the intra-op threads, transformers'
    switch for handing SDPA grouped key/value heads."""
    import os

    import torch

    b = torch.backends.cuda
    return (b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled(), b.cudnn_sdp_enabled(),
            torch.get_num_threads(), os.environ.get("TRANSFORMERS_SDPA_FORCE_GQA"))


def _weight_kind(p) -> tuple:
    """A weight's storage: its class and dtype, and for a quantized weight how it is quantized
    (bitsandbytes' quant state; a torchao tensor's inner tensors' shapes, which its group size sets)."""
    state = getattr(p, "quant_state", None)
    quant = (state.quant_type, bool(state.nested), str(state.dtype)) if state is not None else None
    data = getattr(p, "data", p)
    if hasattr(data, "__tensor_flatten__") and type(data).__name__ not in ("Tensor", "Parameter"):
        names, _ = data.__tensor_flatten__()
        quant = tuple((n, tuple(getattr(data, n).shape)) for n in names)
    return type(p).__name__, str(p.dtype), repr(quant)


def program_of(opt: Optimization, choices: dict, model_dir, target=None) -> dict[str, Any]:
    """What a plugin's choices make run: the observable result of every stage it controls."""
    target = _target(target)
    recipe = resolve({opt.name: choices}, {opt.name: opt})
    mine = recipe[opt.name]
    ctx = ApplyContext(target, "cpu", 4, 8, 1, recipe, max_context=ENVELOPE)
    with _recording_compile() as compiled:
        model = load_model(str(model_dir), {opt.name: opt}, recipe, ctx)
        model = opt.after_load(model, mine, ctx) or model
        generate = opt.wrap_generate(hf_generate, model, mine, ctx)
    with opt.runtime_context(mine, ctx):
        runtime = _runtime_state()
    return {
        "weights": sorted({_weight_kind(p) for p in model.parameters()}),
        "compute": sorted({str(m.compute_dtype) for m in model.modules() if getattr(m, "compute_dtype", None)}),
        "modules": sorted({type(m).__name__ for m in model.modules()}),
        "attention": getattr(model.config, "_attn_implementation", None),
        "compiled": compiled,
        "generate": "model.generate" if generate is hf_generate else type(generate).__name__,
        "generate_kwargs": repr(sorted(opt.generate_kwargs(mine, ctx).items())),
        "assistant": _assistant_state(generate),
        "runtime": runtime,
        "cache_ladder": getattr(ctx.ladder, "capacities", None),
    }


def _assistant_state(generate) -> dict | None:
    """The draft model a generate callable passes as ``assistant_model`` (``generate.draft``), and
    the proposal knobs transformers reads from its generation config."""
    draft = getattr(generate, "draft", None)
    if draft is None:
        return None
    gc = draft.generation_config
    return {"draft": draft.config.name_or_path, "layers": draft.config.num_hidden_layers,
            "tokens": gc.num_assistant_tokens, "schedule": gc.num_assistant_tokens_schedule,
            "confidence": gc.assistant_confidence_threshold}


def check_choices_change_what_runs(opt: Optimization, model_dir, target=None, given: dict | None = None) -> list[str]:
    """Every available choice of every option, set alone on top of the defaults (with the choices
    that make it active), runs something the default does not — on this checkpoint, so a choice
    that duplicates another for it (a dtype equal to the checkpoint's) must be marked unavailable.
    ``given``: values of the plugin's given options (``{"draft": path}``), as a study gives them.
    Returns the choices it checked."""
    import json

    from .optimization import ModelInfo, unavailable_for

    target = _target(target)
    given = dict(given or {})
    draft = given.get("draft") and ModelInfo(json.loads((Path(given["draft"]) / "config.json").read_text()))
    model = ModelInfo(json.loads((Path(model_dir) / "config.json").read_text()), draft=draft or None)
    unavailable = unavailable_for(opt, target, model)
    checked = []
    for option in opt.options():
        if option.given:
            continue  # the study's value, not a choice
        needed = _activating(opt, option, unavailable)
        if needed is None:
            continue  # no available choice makes it active here
        needed = {**needed, **given}  # given options are skipped above: none is this option
        base = program_of(opt, needed, model_dir, target)
        for choice in option.choices:
            if choice == option.default or f"{option.name}={choice}" in unavailable:
                continue
            got = program_of(opt, {**needed, option.name: choice}, model_dir, target)
            assert got != base, (f"{opt.name}.{option.name}={choice} runs the same program as "
                                 f"{option.name}={option.default}: it wastes the user's trials")
            checked.append(f"{option.name}={choice}")
    return checked


def _activating(opt: Optimization, option, unavailable: dict) -> dict | None:
    """Available choices of the plugin's other options that make ``option`` active (``{}`` when it
    always is), or None when no available choice does."""
    import itertools

    if option.active is None:
        return {}
    others = [o for o in opt.options() if o.name != option.name]
    available = [[c for c in o.choices if f"{o.name}={c}" not in unavailable] or [o.default] for o in others]
    for combo in itertools.product(*available):
        chosen = {o.name: c for o, c in zip(others, combo)}
        if option.is_active(chosen):
            changed = {k: v for k, v in chosen.items() if v != next(o.default for o in others if o.name == k)}
            return changed
    return None


def check_plugin(opt: Optimization, model_dir, target=None, optimizations: dict | None = None) -> None:
    """The whole contract: declaration, application, and choices that change what runs."""
    check_declaration(opt, optimizations, target)
    check_applies(opt, model_dir, target)
    check_choices_change_what_runs(opt, model_dir, target)
