"""Stored recipes out of the database: export (JSON and a transformers directory), autotune.load
(by file, id or model name, per workload kind, on other hardware), show, verify, and bad recipe files."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings

import pytest
from click.testing import CliRunner
from conftest import SPACE, cli_search as search, write_study

import autotune
from autotune.cli import cli
from autotune.errors import AutotuneError, RecipeError
from autotune.store import Store
from autotune.store import tables as m

pytestmark = pytest.mark.filterwarnings("ignore")


def test_export_load_generates_the_measured_tokens(searched, tmp_path, db_url):
    best = searched["best"][0]
    out = tmp_path / "recipe.json"
    result = CliRunner().invoke(cli, ["export", str(best["measurement_id"]), "-o", str(out), "--db", db_url])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["format"] == "autotune-recipe" and doc["recipe"] == best["recipe"]
    code = f"""
import json, autotune
from autotune.workload import Workload
doc = json.load(open({str(out)!r}))
r = autotune.load({str(out)!r})
w = Workload.from_dict(doc["workload"])
ids = w.input_ids(r.tokenizer, r.model.config.vocab_size)
out = r.generate_ids(ids, max_new_tokens=w.new_tokens, min_new_tokens=w.new_tokens)
print(json.dumps(out[0, ids.shape[1]:].tolist()))
print(json.dumps(r.generate("The capital of France is", max_new_tokens=4)))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[-2]) == doc["figures"]["output_ids"]  # same tokens as measured
    assert isinstance(json.loads(lines[-1]), str)


def test_export_creates_a_missing_folder(searched, tmp_path, db_url):
    """``-o`` into a folder that does not exist yet creates it (as ``mkdir -p``), for both formats."""
    best = str(searched["best"][0]["measurement_id"])
    for args, made in ((["-o", str(tmp_path / "new" / "deeper" / "recipe.json")], "new/deeper/recipe.json"),
                       (["-o", str(tmp_path / "new2" / "hf"), "--format", "transformers"], "new2/hf/config.json")):
        result = CliRunner().invoke(cli, ["export", best, *args, "--db", db_url])
        assert result.exit_code == 0, result.output
        assert (tmp_path / made).is_file()


def test_export_best_and_transformers_format(searched, tmp_path, tiny_model, db_url):
    out = tmp_path / "hf"
    result = CliRunner().invoke(cli, ["export", "--best", tiny_model, "-o", str(out), "--format", "transformers",
                                      "--db", db_url])
    assert result.exit_code == 0, result.output
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(out)
    recipe = json.loads((out / "autotune-recipe.json").read_text())["recipe"]
    gen = GenerationConfig.from_pretrained(out)
    if recipe["cache"]["implementation"] != "dynamic":
        assert gen.cache_implementation == recipe["cache"]["implementation"]
    assert gen.disable_compile is True  # measured without transformers' auto-compile, served the same way
    if recipe["quantization"]["method"] != "none":
        assert getattr(model.config, "quantization_config", None) is not None
    assert "autotune.load" in (out / "README.md").read_text()


def test_recipes_show_verify(searched, db_url):
    r = CliRunner().invoke(cli, ["recipes", "--db", db_url, "--json"])
    assert r.exit_code == 0
    rows = json.loads(r.output)
    speeds = [x["tokens_per_s"] for x in rows]
    assert speeds == sorted(speeds, reverse=True)
    best_id = searched["best"][0]["measurement_id"]
    r = CliRunner().invoke(cli, ["show", str(best_id), "--db", db_url])
    assert r.exit_code == 0 and "vs baseline" in r.output
    r = CliRunner().invoke(cli, ["verify", str(best_id), "--db", db_url])
    assert r.exit_code == 0, r.output
    assert re.search(rf"recipe {best_id}: stored [0-9.]+ tok/s, now [0-9.]+ tok/s: ratio [0-9.]+x", r.output)
    r = CliRunner().invoke(cli, ["show", "99999", "--db", db_url])
    assert r.exit_code == 1 and "no measurement with id 99999" in r.output
    r = CliRunner().invoke(cli, ["export", "99999", "-o", "x.json", "--db", db_url])
    assert r.exit_code == 1 and "Traceback" not in r.output


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d["recipe"].update({"warp": {"drive": 1}}), "unknown plugin 'warp'"),
    (lambda d: d["recipe"]["cache"].update({"size": 3}), "unknown option cache.size"),
    (lambda d: d["recipe"]["cache"].update({"implementation": 7}), "not one of"),
    (lambda d: d.pop("format"), "not an autotune recipe"),
    (lambda d: d.update({"workload": {"new_tokens": -1}}), "positive integer"),
])
def test_bad_recipe_files(searched, tmp_path, db_url, mutate, match):
    out = tmp_path / "r.json"
    CliRunner().invoke(cli, ["export", str(searched["best"][0]["measurement_id"]), "-o", str(out), "--db", db_url])
    doc = json.loads(out.read_text())
    mutate(doc)
    out.write_text(json.dumps(doc))
    with pytest.raises(RecipeError, match=match):
        autotune.load(str(out))


def test_not_json_recipe(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(AutotuneError, match="not valid JSON"):
        autotune.load(str(bad))


def test_other_hardware_warns_and_strict_raises(searched, tmp_path, db_url):
    out = tmp_path / "r.json"
    CliRunner().invoke(cli, ["export", str(searched["best"][0]["measurement_id"]), "-o", str(out), "--db", db_url])
    doc = json.loads(out.read_text())
    doc["target"]["name"] = "NVIDIA H100 80GB HBM3"
    doc["target"]["versions"]["torch"] = "1.0"
    out.write_text(json.dumps(doc))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        autotune.load(str(out))
    assert any("measured elsewhere" in str(w.message) for w in caught)
    with pytest.raises(RecipeError, match="torch 1.0 then"):
        autotune.load(str(out), strict=True)


def test_load_by_model_name_uses_the_best_known(searched, tiny_model, db_url):
    """Loading by model name serves the fastest recipe a study chose for it: the shared search's own
    winner while it is the only study, else the fastest of the studies' winners (other tests of this
    module may have run theirs first)."""
    from autotune.store import Store, tables as m

    tuned = autotune.load(tiny_model, db=db_url)
    with Store(db_url).session() as s:
        chosen = s.query(m.Measurement).join(m.Study, m.Study.best_measurement_id == m.Measurement.id).all()
        fastest = max(chosen, key=lambda r: r.tokens_per_s).id
        only_s1 = [r.name for r in s.query(m.Study).all()] == ["s1"]
    assert tuned.document["measurement_id"] == fastest
    if only_s1:
        assert fastest == searched["best"][0]["measurement_id"]


def test_load_by_model_name_answers_per_workload_kind(searched, tiny_model, db_url, tmp_path):
    """The searched recipes are for chat: a code-edit search stores its own, and each kind loads
    its own winner; a kind nobody measured is a clear NotFoundError."""
    from autotune.errors import NotFoundError

    f = write_study(tmp_path, tiny_model, SPACE, trials=2)
    result, payload = search(["--study-file", f, "--workload", "code-edit", "--prompt-tokens", "24",
                              "--study", "edits"], db_url)
    assert result.exit_code == 0, result.output
    chat = autotune.load(tiny_model, db=db_url, workload="chat")
    edits = autotune.load(tiny_model, db=db_url, workload="code-edit")
    assert chat.document["workload"].get("kind", "chat") == "chat"
    assert edits.document["workload"]["kind"] == "code-edit"
    assert edits.document["measurement_id"] == payload["best"][0]["measurement_id"]
    with pytest.raises(NotFoundError, match="summarize workload"):
        autotune.load(tiny_model, db=db_url, workload="summarize")


def test_daemon_reverifies_recipes_from_other_versions(searched, db_url):
    """Runs last in this module: it makes the stored target look like an older torch."""
    from autotune.daemon import reverify
    from autotune.registry import get_optimizations
    from autotune.target import current_target

    store = Store(db_url)
    best_id = searched["best"][0]["measurement_id"]
    with store.session() as s:
        s.get(m.Measurement, best_id).target.versions_key = "older-torch"
    results = dict(reverify(store, current_target("cpu"), get_optimizations()))
    assert best_id in results
    verdict = results[best_id]
    assert verdict.startswith(("stale", "still good")) and "tok/s" in verdict
    with store.session() as s:
        assert s.get(m.Measurement, best_id).stale == verdict.startswith("stale")


def test_the_transformers_readme_names_every_plugins_load_arguments_and_steps(tiny_model, tmp_path):
    """The README of an exported directory said only the last plugin's load arguments and steps, and
    only with a static cache (they were gathered after the loop, under its ``if``): a bf16 recipe on
    a dynamic cache read as a plain load."""
    from autotune.export import write_transformers_dir
    from autotune.recipe import resolve
    from autotune.registry import get_optimizations
    from autotune.target import current_target
    from autotune.workload import Workload

    opts = get_optimizations()
    recipe = resolve({"dtype": {"dtype": "bfloat16"}, "runtime": {"threads": 1}}, opts)
    target = current_target("cpu")
    doc = {"model": tiny_model, "recipe": recipe, "workload": Workload().to_dict()}
    write_transformers_dir(doc, tiny_model, str(tmp_path / "hf"), opts, target)
    readme = (tmp_path / "hf" / "README.md").read_text()
    assert "dtype='bfloat16'" in readme and "attn_implementation='sdpa'" in readme, readme
    assert "torch.set_num_threads(1)" in readme, readme
