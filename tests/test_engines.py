"""The generate engines serve the envelope as ``model.generate`` would: sampling from the same
distribution with the same draws, left-padded batches row by row as each row alone, every shape of
the envelope without a compile once warmed up, and nothing outside the envelope."""
from __future__ import annotations

import pytest
import torch

from autotune.apply import apply_recipe
from autotune.errors import RecipeError
from autotune.measure import compile_count
from autotune.optimization import ApplyContext
from autotune.recipe import resolve
from autotune.registry import get_optimizations
from autotune.target import current_target

pytestmark = pytest.mark.filterwarnings("ignore")

#: the paths that drive a static cache: transformers' generate over the ladder, the compiled decode
#: loop (the whole model compiled, or one decoder layer shared by all), the ahead-of-time loop
PATHS = {"static": {"cache": {"implementation": "static"}},
         "decode": {"cache": {"implementation": "static"}, "compile": {"target": "decode"}},
         "layers": {"cache": {"implementation": "static"}, "compile": {"target": "decode", "scope": "layers"}},
         "layers+prefill": {"cache": {"implementation": "static"},
                            "compile": {"target": "decode", "scope": "layers", "prefill": "compiled"}},
         "aoti": {"cache": {"implementation": "static"}, "compile": {"target": "aoti"}}}
ENVELOPE = {"max_context": 300, "max_batch": 2}


@pytest.fixture(scope="module")
def plain(tiny_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval()


@pytest.fixture(scope="module", params=list(PATHS))
def served(request, tiny_model):
    """The tiny fp32 model with a path applied, envelope 300 positions x 2 rows, warmed up."""
    opts = get_optimizations()
    recipe = resolve(PATHS[request.param], opts)
    ctx = ApplyContext(current_target("cpu"), "cpu", 8, 8, 1, recipe, **ENVELOPE)
    applied = apply_recipe(tiny_model, opts, recipe, ctx)
    applied.warm_up()
    return request.param, applied


def ids(length: int, seed: int):
    return torch.randint(5, 300, (1, length), generator=torch.Generator().manual_seed(seed))


def test_sampling_draws_what_generate_draws(served, plain):
    """Same logits (fp32), same seed: the same sampled tokens as model.generate; another seed, others."""
    name, applied = served
    prompt = ids(12, 0)
    kwargs = {"do_sample": True, "temperature": 1.0, "top_p": 0.95, "top_k": 50, "repetition_penalty": 1.1}
    outputs = []
    for seed in (1, 2, 3, 4):
        torch.manual_seed(seed)
        with torch.inference_mode():
            want = plain.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, pad_token_id=0,
                                  **kwargs)
        torch.manual_seed(seed)
        got = applied.generate_ids(prompt, max_new_tokens=10, **kwargs)
        assert torch.equal(got, want), (name, seed, got[0, 12:].tolist(), want[0, 12:].tolist())
        outputs.append(tuple(got[0, 12:].tolist()))
    assert len(set(outputs)) > 1, f"{name}: 4 seeds, one output: it does not sample"


def test_a_left_padded_batch_gives_each_row_its_own_tokens(served):
    name, applied = served
    a, b = ids(12, 1), ids(7, 2)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 5, dtype=torch.long), b], 1)])
    mask = torch.cat([torch.ones(1, 12), torch.cat([torch.zeros(1, 5), torch.ones(1, 7)], 1)]).long()
    together = applied.generate_ids(batch, mask, max_new_tokens=8, min_new_tokens=8)
    alone_a = applied.generate_ids(a, max_new_tokens=8, min_new_tokens=8)
    alone_b = applied.generate_ids(b, max_new_tokens=8, min_new_tokens=8)
    assert together[0, 12:].tolist() == alone_a[0, 12:].tolist(), name
    assert together[1, 12:].tolist() == alone_b[0, 7:].tolist(), name


def test_eos_stops_a_call_and_pads_the_finished_rows(served, plain):
    """Without a minimum length a row ends at EOS as generate ends it (the rest padded)."""
    name, applied = served
    prompt = ids(10, 3)
    with torch.inference_mode():
        first = plain.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=1, do_sample=False,
                               pad_token_id=0)[0, -1].item()
        want = plain.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                              eos_token_id=first, pad_token_id=0)
    got = applied.generate_ids(prompt, max_new_tokens=6, eos_token_id=first)
    assert torch.equal(got, want), (name, got.tolist(), want.tolist())
    assert got.shape[1] == 11  # stopped at the first token, which was EOS


def test_every_shape_of_the_envelope_is_served_without_a_compile(served):
    """After the warm-up, calls of every length up to max_context and every batch up to max_batch,
    greedy and sampled, compile nothing (no dynamo graph, no ahead-of-time program)."""
    name, applied = served
    before = compile_count()
    for length, new, batch in ((4, 2, 1), (100, 30, 1), (150, 20, 2), (280, 20, 1), (200, 100, 2)):
        prompt = torch.cat([ids(length, 5)] * batch)
        out = applied.generate_ids(prompt, max_new_tokens=new, min_new_tokens=new)
        assert out.shape == (batch, length + new)
        applied.generate_ids(prompt, max_new_tokens=new, do_sample=True, temperature=0.7)
    assert compile_count() == before, f"{name}: compiled in steady state"


def test_an_eager_prompt_pass_runs_only_the_calls_rows_unmasked(served):
    """A one-row call under max_batch 2: the decode loops' eager prompt pass embeds one row, not the
    padding copy a step needs (at a 2,000-token prompt the copy doubled the prompt's time), over a
    window as long as the prompt (no mask); a compiled prompt pass, one program for every call, runs
    both rows over the rung's window."""
    name, applied = served
    if name == "static":
        pytest.skip("transformers' generate runs the call's rows")
    embed = applied.model.get_input_embeddings()
    layer = applied.model.model.layers[0]
    seen, masks = [], []
    hooks = [embed.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape))),
             layer.register_forward_pre_hook(lambda module, args, kwargs: masks.append(
                 (args[0].shape[1], kwargs.get("attention_mask") is None)), with_kwargs=True)]
    try:
        applied.generate_ids(ids(40, 9), max_new_tokens=3, min_new_tokens=3)
    finally:
        for hook in hooks:
            hook.remove()
    prompt_rows = {rows for rows, length in seen if length == 40}
    assert prompt_rows == ({2} if name == "layers+prefill" else {1}), (name, seen)
    # no padding: the eager pass reads a window of the prompt alone, so attention runs causal, unmasked
    assert [unmasked for length, unmasked in masks if length == 40] == [name != "layers+prefill"], (name, masks)


def test_the_ahead_of_time_loop_steps_only_the_calls_rows(served):
    """Under max_batch 2 the program takes the rows as a dynamic size: a one-row call's steps run one
    row (a padding copy was a second row's attention and matmuls in every step), a two-row call's two,
    and both through the one package."""
    name, applied = served
    if name != "aoti":
        pytest.skip("the compiled decode loops pad every step to max_batch (one shape, no recompile)")
    loop, widths = applied.generate_fn, []
    step = loop.step
    loop.step = lambda model, token, rows: (widths.append(tuple(token.shape)), step(model, token, rows))[1]
    try:
        applied.generate_ids(ids(20, 4), max_new_tokens=3, min_new_tokens=3)
        applied.generate_ids(torch.cat([ids(20, 4), ids(20, 5)]), max_new_tokens=3, min_new_tokens=3)
    finally:
        del loop.step
    assert widths == [(1, 1), (1, 1), (2, 1), (2, 1)], widths
    assert list(loop.programs) == ["any"]


def test_the_ahead_of_time_step_writes_the_cache_in_place(served):
    """The program writes each token's keys and values into the cache buffers themselves. Through the
    view ``keys[:rows]`` (the rows a dynamic size) the write was functionalized into a copy of those
    rows' whole cache and a write-back, twice per layer and step: a fifth of a SmolLM2 step at a
    2,048-position cache."""
    from autotune.engines import aoti

    name, applied = served
    if name != "aoti":
        pytest.skip("only the ahead-of-time loop exports its step")
    loop, model = applied.generate_fn, applied.model
    cache = loop.ladder.cache(loop.cache_rows(), loop.ladder.capacities[-1])
    slots = cache.layers[0].max_cache_len
    try:
        program = aoti.export_program(aoti._module(model, cache), 2, slots, 64, model.device, any_rows=True)
    finally:
        loop.ladder.set_window(cache, 64)
    writes = [n for n in program.graph.nodes if n.op == "call_function" and "index_copy" in str(n.target)]
    assert len(writes) == 2 * model.config.num_hidden_layers
    assert all(n.args[0].op == "placeholder" for n in writes), [str(n.args[0].target) for n in writes]


def test_a_call_outside_the_envelope_is_refused_naming_it(served):
    name, applied = served
    with pytest.raises(RecipeError, match="at most 300 positions and 2 sequences"):
        applied.generate_ids(ids(290, 6), max_new_tokens=20)
    with pytest.raises(RecipeError, match="at most 300 positions and 2 sequences"):
        applied.generate_ids(torch.cat([ids(10, 7)] * 3), max_new_tokens=4)


def test_what_a_loop_cannot_honour_is_refused(served):
    name, applied = served
    if name == "static":
        pytest.skip("transformers' own generate honours beams")
    with pytest.raises(RecipeError, match="beam_search"):
        applied.generate_ids(ids(8, 8), max_new_tokens=4, num_beams=2)
    with pytest.raises(RecipeError, match="num_return_sequences"):
        applied.generate_ids(ids(8, 8), max_new_tokens=4, do_sample=True, num_return_sequences=2)


def test_a_ladder_serves_each_call_from_the_smallest_rung():
    from autotune.engines.ladder import capacities

    assert capacities(2048, 2) == [128, 256, 512, 1024, 2048]
    assert capacities(2048, 4) == [128, 512, 2048]
    assert capacities(2048, None) == [2048]
    assert capacities(300, 2) == [150, 300] and capacities(100, 2) == [100]


def test_aoti_programs_share_the_models_weights(tiny_model, tmp_path, monkeypatch):
    """One program serves every rung (the window dynamic), handed the model's own weight tensors
    (user-managed constants): programs do not multiply the weights; and once compiled, the export's
    traced graph is not kept alive (torch keeps its proxies in a module-level map)."""
    from torch.fx.experimental import proxy_tensor

    from autotune.engines.aoti import AheadOfTimeLoop, constants_of

    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path))  # compiled here, not found
    opts = get_optimizations()
    recipe = resolve(PATHS["aoti"], opts)
    ctx = ApplyContext(current_target("cpu"), "cpu", 8, 8, 1, recipe, max_context=300)
    applied = apply_recipe(tiny_model, opts, recipe, ctx)
    applied.warm_up()
    loop = applied.generate_fn
    assert isinstance(loop, AheadOfTimeLoop) and loop.ladder.capacities == [150, 300]
    assert list(loop.programs) == ["any"]  # one for both rungs and every batch width
    assert list((tmp_path / "aoti").glob("*.pt2")) and not proxy_tensor._FAKE_TENSOR_ID_TO_PROXY_MAP_FOR_EXPORT
    weight = applied.model.model.layers[0].mlp.down_proj.weight
    for runner in loop.programs.values():
        cache = loop.ladder.cache(loop.cache_rows(), 150)
        from autotune.engines.aoti import _module

        given = constants_of(_module(applied.model, cache), runner.get_constant_fqns())
        shared = [t for t in given.values() if t.data_ptr() == weight.data_ptr()]
        assert shared, "the program does not use the model's own down_proj weight"


def test_an_int4_package_loads_with_the_constants_inductor_made(tiny_model, tmp_path, monkeypatch):
    """torch's CPU int4 matmul takes its group size as a tensor that inductor's lowering adds to the
    program: not a model tensor, so it is kept beside the package and handed over at load (before,
    an int4 + AOTI trial compiled for minutes and failed to load, "asks for a constant the model does
    not have"). Loaded again from the cache, it serves the same tokens."""
    from autotune.engines import aoti
    from autotune.optimization import unavailable_for

    opts = get_optimizations()
    why = unavailable_for(opts["quantization"], current_target("cpu"), None).get("method=torchao-int4-weight")
    if why:
        pytest.skip(why)
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path))
    recipe = resolve({"quantization": {"method": "torchao-int4-weight", "group_size": 32},
                      "dtype": {"dtype": "bfloat16"}, **PATHS["aoti"]}, opts)
    ctx = ApplyContext(current_target("cpu"), "cpu", 8, 8, 1, recipe, max_context=300)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    tokens = []
    for _ in range(2):  # compiled, then loaded from the cache
        applied = apply_recipe(tiny_model, opts, recipe, ctx)
        applied.warm_up()
        tokens.append(applied.generate_ids(ids, max_new_tokens=6, min_new_tokens=6)[0, -6:].tolist())
    packages = list((tmp_path / "aoti").glob("*.pt2"))
    assert len(packages) == 1 and aoti.constants_path(packages[0]).exists()
    made = torch.load(aoti.constants_path(packages[0]))
    assert made and all(t.item() == 32 for t in made.values())  # the group size
    assert tokens[0] == tokens[1]


@pytest.mark.parametrize("path", ["decode", "layers", "aoti"])
def test_one_program_serves_every_rung(tiny_model, path):
    """A ladder of three rungs costs one compile, not three: the window each call reads is a dynamic
    size of one program (dynamo's graph for the step, or one ahead-of-time package). Compiled by layer,
    every decoder layer runs that one program too."""
    opts = get_optimizations()
    recipe = resolve(PATHS[path], opts)
    ctx = ApplyContext(current_target("cpu"), "cpu", 8, 8, 1, recipe, max_context=600, max_batch=1)
    applied = apply_recipe(tiny_model, opts, recipe, ctx)
    assert applied.generate_fn.ladder.capacities == [150, 300, 600]
    from autotune.engines.aoti import AheadOfTimeLoop

    def programs():  # the step's dynamo graphs; ahead-of-time packages (non-strict export traces no dynamo graph)
        return AheadOfTimeLoop.compiled_packages if path == "aoti" else compile_count()

    before, compiles = programs(), compile_count()
    applied.warm_up()
    assert programs() - before == 1
    for length, new in ((10, 5), (200, 50), (500, 90)):  # one call per rung, each as plain greedy decoding
        prompt = ids(length, 11)
        out = applied.generate_ids(prompt, max_new_tokens=new, min_new_tokens=new)
        with torch.inference_mode():
            want = applied.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                          min_new_tokens=new, do_sample=False)
        assert torch.equal(out, want)
    assert programs() - before == 1 and compile_count() == compiles + 1
    if path == "layers":  # every layer of every step ran the compiled region
        layers = len(applied.model.model.layers)
        assert layers > 1 and applied.generate_fn.regions.calls >= layers * (4 + 49 + 89)


def test_layers_built_unlike_are_not_compiled_as_one(tiny_model):
    """What a layer holds besides its weights is baked into the one program unguarded: a model whose
    layers differ (SmolLM3 skips RoPE in some) is refused, naming the layer and what differs."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    opts = get_optimizations()
    recipe = resolve(PATHS["layers"], opts)
    ctx = ApplyContext(current_target("cpu"), "cpu", 8, 8, 1, recipe, max_context=300, max_batch=1)
    model.model.layers[1].self_attn.scaling = 0.5
    with pytest.raises(RecipeError, match="decoder layer 1 is not built like layer 0 .*self_attn.scaling"):
        opts["compile"].wrap_generate(None, model, recipe["compile"], ctx)


def test_a_model_with_sliding_window_layers_is_served_whole_rows(tmp_path):
    """A cache with sliding-window layers cannot be windowed: its prompt pass takes every max_batch row
    (a sliding layer's buffer has them all), and a one-row call gives generate's tokens."""
    from transformers import AutoModelForCausalLM, MistralConfig

    config = MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=300, max_position_embeddings=512, sliding_window=16)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    opts = get_optimizations()
    recipe = resolve(PATHS["decode"], opts)
    applied = apply_recipe(str(tmp_path), opts, recipe,
                           ApplyContext(current_target("cpu"), "cpu", 8, 8, 1, recipe, max_context=100, max_batch=2))
    applied.warm_up()
    prompt = ids(30, 11)
    with torch.inference_mode():
        want = plain.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                              pad_token_id=0)
    assert torch.equal(applied.generate_ids(prompt, max_new_tokens=6, min_new_tokens=6), want)
