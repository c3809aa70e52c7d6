"""Recipes, rules, the search space."""
from __future__ import annotations

import pytest

from autotune.errors import PluginError, RecipeError
from autotune.registry import get_optimizations
from autotune.recipe import impossible, parse_sets, recipe_key, resolve
from autotune.space import build_space, count, enumerate_recipes
from autotune.target import current_target

OPTS = get_optimizations()


def test_sets_parse_and_coerce():
    partial = parse_sets(["cache.implementation=static", "cache.ladder=x4", "compile.freezing=true"], OPTS)
    assert partial == {"cache": {"implementation": "static", "ladder": "x4"}, "compile": {"freezing": True}}


@pytest.mark.parametrize("bad,match", [
    ("cache.implementation", "malformed"),
    ("cacheimplementation=static", "malformed"),
    ("nosuch.option=1", "unknown plugin 'nosuch'"),
    ("cache.nosuch=1", "unknown option cache.nosuch"),
])
def test_bad_sets(bad, match):
    with pytest.raises(PluginError, match=match):
        parse_sets([bad], OPTS)


def test_impossible_value_and_types():
    with pytest.raises(PluginError, match="not one of"):
        resolve({"cache": {"implementation": "huge"}}, OPTS)
    with pytest.raises(PluginError, match="not one of"):
        resolve({"compile": {"freezing": 1}}, OPTS)  # 1 is not True
    with pytest.raises(RecipeError):
        resolve({"cache": "static"}, OPTS)


def test_defaults_filled_and_inactive_options_dropped():
    r = resolve({"compile": {"mode": "max-autotune"}}, OPTS)
    assert r["compile"] == {"target": "off"}  # mode means nothing while compile is off
    assert r == resolve({}, OPTS)
    assert recipe_key(r) == recipe_key(resolve({}, OPTS))
    assert "ladder" not in r["cache"]


def test_cross_plugin_rules():
    cpu = current_target("cpu")
    bad = resolve({"compile": {"target": "decode"}}, OPTS)
    assert "needs cache.implementation=static" in impossible(bad, OPTS, cpu)
    good = resolve({"compile": {"target": "decode"}, "cache": {"implementation": "static"}}, OPTS)
    assert impossible(good, OPTS, cpu) is None
    assert "flash" in impossible(resolve({"attention": {"implementation": "flash_attention_2"}}, OPTS), OPTS, cpu)


def test_space_leaves_out_unavailable_choices():
    space = build_space(OPTS, current_target("cpu"))
    att = {o.name: o for o in space["attention"]}
    import torch

    if not torch.cuda.is_available():
        assert "flash_attention_2" not in att["implementation"].choices
        assert "efficient" not in att["sdpa_backend"].choices
    narrowed = build_space(OPTS, current_target("cpu"), {"compile.target": ["off"], "quantization.method": ["none"],
                                                         "cache.implementation": ["dynamic", "static"]})
    recipes = list(enumerate_recipes(narrowed, OPTS))
    assert len(recipes) == count(narrowed)
    assert len({recipe_key(r) for r in recipes}) == len(recipes)
    with pytest.raises(PluginError, match="unknown option"):
        build_space(OPTS, current_target("cpu"), {"cache.nope": [1]})
