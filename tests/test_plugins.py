"""The registry, the plugin contract every registered plugin passes, and `autotune plugins`."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

import autotune
from autotune import hookspecs
from autotune.apply import load_model
from autotune.cli import cli
from autotune.optimization import ApplyContext, Optimization, Option
from autotune.registry import get_model_aliases, get_optimizations, pm
from autotune.target import current_target

BUILTINS = {"quantization", "dtype", "attention", "cache", "compile"}


def test_builtins_come_through_the_entry_point_group():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="autotune")}
    assert BUILTINS | {"smollm2"} <= names
    assert BUILTINS <= set(get_optimizations())


def test_apply_order_is_explicit():
    order = list(get_optimizations())
    assert order.index("quantization") < order.index("compile")
    assert order.index("dtype") < order.index("compile")
    assert order[-1] == "compile"


def test_env_var_restricts_plugins():
    code = "from autotune.registry import get_optimizations; print(sorted(get_optimizations()))"
    env = {**os.environ, "AUTOTUNE_PLUGINS": "cache,dtype"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "['cache', 'dtype']"


@pytest.mark.parametrize("name", sorted(get_optimizations()))
def test_plugin_contract(name, tiny_model):
    """The contract every plugin ships with (autotune.testing): declaration, application, and every
    available choice of every option changes what runs."""
    from autotune.testing import check_plugin

    check_plugin(get_optimizations()[name], tiny_model, current_target("cpu"), get_optimizations())


def test_contract_catches_a_choice_that_changes_nothing(tiny_model):
    class Idle(Optimization):
        name, description = "idle", "a knob wired to nothing"

        def options(self):
            return [Option("level", ("low", "high"), "low")]

    from autotune.testing import check_choices_change_what_runs

    with pytest.raises(AssertionError, match="idle.level=high runs the same program"):
        check_choices_change_what_runs(Idle(), tiny_model)


def test_dtype_equal_to_the_checkpoint_is_auto(tiny_model):
    """The tiny checkpoint is float32: float32 is auto there, and the search space says so."""
    from autotune.sources import resolve_model
    from autotune.space import build_space

    space = build_space(get_optimizations(), current_target("cpu"), model=resolve_model(tiny_model).info())
    choices = next(o.choices for o in space["dtype"] if o.name == "dtype")
    assert "float32" not in choices and "auto" in choices and "bfloat16" in choices


def test_sdpa_math_runs_another_kernel_than_auto(tiny_model):
    """What the runtime flags mean on this CPU: the profiler sees a different attention kernel."""
    import contextlib

    import torch
    from torch.profiler import ProfilerActivity, profile

    from autotune.plugins.attention import Attention

    model = load_model(tiny_model, {}, {}, ApplyContext(current_target("cpu"), "cpu", 4, 8, 1, {}))
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])

    def kernels(ctx):
        with torch.inference_mode(), ctx, profile(activities=[ProfilerActivity.CPU]) as prof:
            model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)
        return {e.name for e in prof.events() if e.name.startswith("aten::_scaled_dot_product")}

    att, ctx = Attention(), ApplyContext(current_target("cpu"), "cpu", 3, 8, 1, {})
    auto = kernels(contextlib.nullcontext())
    math = kernels(att.runtime_context({"implementation": "sdpa", "sdpa_backend": "math"}, ctx))
    assert auto and math and auto != math
    if not torch.cuda.is_available():  # why sdpa_backend=flash is left out on CPU
        assert auto == kernels(att.runtime_context({"implementation": "sdpa", "sdpa_backend": "flash"}, ctx))


def test_native_gqa_hands_sdpa_the_grouped_heads(tiny_model):
    """In a compiled program over a static cache (always masked) transformers copies each key/value
    head once per query head it serves (repeat_kv) before SDPA; attention.gqa=native hands SDPA the
    grouped heads (enable_gqa). Seen in the ahead-of-time loop's exported step."""
    from autotune.apply import apply_recipe
    from autotune.engines import aoti
    from autotune.recipe import resolve

    opts, heads = get_optimizations(), {}
    for gqa in ("auto", "native"):
        recipe = resolve({"cache": {"implementation": "static"}, "compile": {"target": "aoti"},
                          "attention": {"gqa": gqa}}, opts)
        ctx = ApplyContext(current_target("cpu"), "cpu", 4, 8, 1, recipe, max_context=64)
        applied = apply_recipe(tiny_model, opts, recipe, ctx)
        loop = applied.generate_fn
        cache = loop.ladder.cache(loop.cache_rows(), loop.ladder.capacities[-1])
        with applied.running():
            program = aoti.export_program(aoti._module(applied.model, cache), 1, cache.layers[0].max_cache_len,
                                          32, applied.model.device)
        heads[gqa] = {n.args[1].meta["val"].shape[1] for n in program.graph.nodes
                      if "scaled_dot_product" in str(n.target)}
    config = applied.model.config
    assert heads == {"auto": {config.num_attention_heads}, "native": {config.num_key_value_heads}}, heads
    assert "TRANSFORMERS_SDPA_FORCE_GQA" not in os.environ  # the switch is the call's, not the process's


def test_every_hookspec_is_exercised():
    """Each hook spec is called here and answered by the built-ins (meta-test over hookspecs)."""
    specs = [n for n in dir(hookspecs) if n.startswith("register_")]
    assert specs == ["register_models", "register_optimizations", "register_seeds"]
    for spec in specs:
        found = []
        getattr(pm.hook, spec)(register=lambda *a, **k: found.append(a), target=current_target("cpu"))
        assert found, f"no plugin answers {spec}"
        assert getattr(hookspecs, spec).__doc__
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    for spec in specs:
        assert spec in readme, f"{spec} is not documented in README.md"
    assert "smollm2-135m" in get_model_aliases()


def test_misspelled_hook_is_caught():
    class Bad:
        @autotune.hookimpl
        def register_optimisations(self, register):  # British spelling: no such hook
            pass

    plugin = Bad()
    pm.register(plugin, name="bad")
    try:
        with pytest.raises(Exception, match="unknown hook"):
            pm.check_pending()
    finally:
        pm.unregister(name="bad")


def test_plugins_json_is_truthful_about_this_machine():
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert BUILTINS <= set(rows)
    att = rows["attention"]
    assert "flash_attention_2" in att["options"]["implementation"]
    import torch

    if not torch.cuda.is_available():
        reason = att["unavailable"]["implementation=flash_attention_2"]
        assert "no CUDA device" in reason
        assert "cache" in rows and "implementation=offloaded" in rows["cache"]["unavailable"]
    assert rows["compile"]["options"]["target"] == ["off", "forward", "decode", "generate", "aoti"]


def test_plugins_text_lists_reasons():
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0
    assert "unavailable: implementation=flash_attention_2" in result.output


def _without(modules: tuple, *argv: str) -> subprocess.CompletedProcess:
    """Run the CLI as if the optional packages were not installed (``sys.modules[name] = None`` makes
    both ``import`` and ``importlib.util.find_spec`` see them missing)."""
    code = (f"import sys\nfor m in {modules!r}: sys.modules[m] = None\n"
            f"from autotune.cli import main\nsys.argv = ['autotune', *{list(argv)!r}]\nmain()")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_without_extras_plugins_names_the_extra_to_install():
    out = _without(("bitsandbytes", "torchao", "psycopg", "plotly", "matplotlib"), "plugins", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    reasons = rows["quantization"]["unavailable"]
    for method in ("bnb-int8", "bnb-4bit", "torchao-int8-weight"):
        assert "pip install 'autotune[quant]'" in reasons[f"method={method}"]


def test_without_the_postgres_extra_the_error_names_it():
    out = _without(("psycopg", "psycopg2"), "recipes", "--db", "postgresql+psycopg://u@127.0.0.1:1/x")
    assert out.returncode == 1 and "autotune[postgres]" in out.stderr and "Traceback" not in out.stderr
    # the report's extra: tests/test_report.py::test_report_without_the_report_extra_names_it


@pytest.mark.parametrize("max_batch", [1, 2])
def test_one_sequence_decoding_is_no_choice_for_a_workload_of_several_rows(tiny_model, tmp_path, max_batch):
    """Prompt lookup verifies one sequence's proposals: with calls of two rows it is not in the search's
    space (it was a trial that failed at load, every search), and the reason says so."""
    from autotune.budget import parse_budget, parse_objectives
    from autotune.sources import resolve_model
    from autotune.spec import SearchSpec
    from autotune.store import Store
    from autotune.tuner import Search
    from autotune.workload import Workload

    spec = SearchSpec(resolve_model(tiny_model), Workload(prompt_tokens=8, new_tokens=6, max_batch=max_batch),
                      current_target("cpu"), parse_budget(""), parse_objectives("tpot", False))
    search = Search(spec, Store(f"sqlite:///{tmp_path / 'tune.db'}"), get_optimizations())
    methods = next(o.choices for o in search.space["decoding"] if o.name == "method")
    assert ("prompt-lookup" in methods) == (max_batch == 1)
    if max_batch > 1:
        assert "up to 2 rows" in get_optimizations()["decoding"].unavailable(current_target("cpu"),
                                                                            search.model_info)["method=prompt-lookup"]


def test_an_ahead_of_time_program_is_not_autotuned_on_cpu():
    """max-autotune's CPU GEMM templates pack each weight into a constant of the program's own; an
    AOTInductor program here is handed the model's weights, so its load failed ("the package asks for a
    constant the model does not have: constant573"). Ruled out on CPU, not on CUDA (no packing there)."""
    from dataclasses import replace

    from autotune.recipe import impossible, resolve

    opts = get_optimizations()
    cpu = current_target("cpu")
    recipe = resolve({"cache": {"implementation": "static"},
                      "compile": {"target": "aoti", "mode": "max-autotune-no-cudagraphs"}}, opts)
    assert "packs weights" in impossible(recipe, opts, cpu, None)
    assert impossible(resolve({"cache": {"implementation": "static"}, "compile": {"target": "aoti"}}, opts),
                      opts, cpu, None) is None
    assert impossible(recipe, opts, replace(cpu, device="cuda", name="NVIDIA H100"), None) is None


def test_int8_weight_only_in_float16_is_ruled_out_on_cpu():
    """torchao's int8 weight-only matmul overflowed in float16 on both CPUs (NaN at every step: a
    failed trial each time TPE proposed it). Ruled out on the CPU, where bfloat16 is the choice, not
    on CUDA."""
    from dataclasses import replace

    from autotune.recipe import impossible, resolve

    pytest.importorskip("torchao")
    opts = get_optimizations()
    cpu = current_target("cpu")
    int8 = {"quantization": {"method": "torchao-int8-weight"}}
    assert "overflows in float16" in impossible(resolve({**int8, "dtype": {"dtype": "float16"}}, opts), opts, cpu, None)
    assert impossible(resolve({**int8, "dtype": {"dtype": "bfloat16"}}, opts), opts, cpu, None) is None
    assert impossible(resolve({**int8, "dtype": {"dtype": "float16"}}, opts), opts,
                      replace(cpu, device="cuda", name="NVIDIA H100"), None) is None
