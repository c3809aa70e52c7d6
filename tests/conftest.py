"""Fixtures: a temporary user directory (never the real home), tiny random-weight models saved and
loaded through the real from_pretrained path, and a real SQLite database per test."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # so spawned trial processes can import tests' own plugin modules


def build_tiny_model(out: Path, hidden: int = 64, layers: int = 2) -> Path:
    """A tiny Llama with a real (trained byte-level BPE) tokenizer, saved like any checkpoint."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from autotune.workload import shipped_text

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
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """One cache dir for the session: the real smollm2 is converted once, not per test."""
    return tmp_path_factory.mktemp("autotune-cache")


@pytest.fixture(autouse=True)
def user_dirs(tmp_path, model_cache, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(model_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("AUTOTUNE_DB", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    yield


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'tune.db'}"


#: fast measurement for tests: a few runs, no long CV wait
FAST = {"min_runs": 2, "max_runs": 3, "max_measure_s": 5}


def write_study(folder: Path, model: str, space: dict, **top) -> str:
    """A study definition for a fast test: a short workload, the FAST measurement policy, ``space``
    (``"plugin.option" -> [choices]``) and any top-level keys (trials, sampler, budget...)."""
    import json

    lines = [f"model = {json.dumps(model)}"] + [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    lines += ["[workload]", "prompt_tokens = 8", "new_tokens = 6", "[measure]"]
    lines += [f"{k} = {v}" for k, v in FAST.items()]
    lines += ["[space]"] + [f'"{k}" = {json.dumps(v)}' for k, v in space.items()]
    path = folder / "study.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)
