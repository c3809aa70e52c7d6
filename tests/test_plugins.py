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
from autotune.apply import finish, load_model, load_tokenizer
from autotune.cli import cli
from autotune.optimization import ApplyContext, Optimization
from autotune.registry import get_model_aliases, get_optimizations, pm
from autotune.recipe import resolve
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
    """Declares well-formed options and rules, and applies cleanly with its defaults."""
    opt = get_optimizations()[name]
    assert isinstance(opt, Optimization) and opt.name == name and opt.description
    options = opt.options()
    assert options, f"{name} declares no options"
    for o in options:
        assert o.default in o.choices, f"{name}.{o.name} default not among its choices"
        assert o.distribution.choices == tuple(o.choices)
        assert len(set(map(repr, o.choices))) == len(o.choices)
    target = current_target("cpu")
    by_name = {o.name: o for o in options}
    for key, reason in opt.unavailable(target).items():
        option, _, choice = key.partition("=")
        assert option in by_name, f"{name}: unavailable names unknown option {key}"
        assert choice in {str(c) for c in by_name[option].choices}
        assert reason.strip()
    optimizations = get_optimizations()
    recipe = resolve({}, optimizations)
    assert opt.conflicts(recipe, target) is None, "the defaults must be allowed together"
    ctx = ApplyContext(target, "cpu", 4, 8, 1, recipe)
    model = load_model(tiny_model, {name: opt}, recipe, ctx)
    applied = finish(model, load_tokenizer(tiny_model), {name: opt}, recipe, ctx)
    import torch

    out = applied.generate_ids(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]]), max_new_tokens=4, min_new_tokens=4)
    assert out.shape == (1, 12)
    assert isinstance(opt.transformers_export(recipe[name]), dict)


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
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert BUILTINS <= set(rows)
    att = rows["attention"]
    assert "flash_attention_2" in att["options"]["implementation"]
    import torch

    if not torch.cuda.is_available():
        reason = att["unavailable"]["implementation=flash_attention_2"]
        assert "no CUDA device" in reason
        assert "cache" in rows and "implementation=offloaded" in rows["cache"]["unavailable"]
    assert rows["compile"]["options"]["target"] == ["off", "forward", "decode", "generate"]


def test_plugins_text_lists_reasons():
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0
    assert "unavailable: implementation=flash_attention_2" in result.output
