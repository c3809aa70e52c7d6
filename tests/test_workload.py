"""The workload: its kinds and prompts, its serving envelope (max_context, max_batch, sampling),
the shapes a trial times over it, and the inputs of each."""
from __future__ import annotations

import pytest

from autotune.errors import UsageError
from autotune.optimization import ModelInfo
from autotune.workload import DEFAULT_MAX_CONTEXT, KINDS, Workload, parse_sampling

SMOLLM2 = ModelInfo({"max_position_embeddings": 8192})
TINY = ModelInfo({"max_position_embeddings": 512})


def test_workload_kinds():
    chat, summary = Workload(), Workload(kind="summarize")
    assert chat.prompt_tokens == KINDS["chat"] and summary.prompt_tokens == KINDS["summarize"]
    assert chat.key != summary.key and Workload.from_dict(summary.to_dict()) == summary
    assert "Summary:" in summary.prompts[0] and len(summary.prompts) >= 3
    assert Workload.from_dict({"kind": "code-edit", "prompt_tokens": 40}).prompt_tokens == 40
    with pytest.raises(Exception, match="unknown workload kind"):
        Workload(kind="poetry")


def test_document_kinds_keep_the_end_of_the_prompt(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    w = Workload(kind="summarize", prompt_tokens=40)
    ids = w.input_ids(tok, tok.vocab_size)
    assert ids.shape == (1, 40)
    assert tok.decode(ids[0]).endswith(w.prompts[0][-20:])  # the instruction and the answer's start




def test_the_envelope_defaults_to_2048_positions_capped_by_the_model():
    chat = Workload().for_model(SMOLLM2)
    assert chat.max_context == DEFAULT_MAX_CONTEXT and chat.max_batch == chat.batch_size == 1
    assert Workload().for_model(TINY).max_context == 512
    assert Workload(max_context=1024, batch_size=2).for_model(SMOLLM2).max_batch == 2
    with pytest.raises(UsageError, match="more than 'm' has positions"):
        Workload(max_context=4096).for_model(TINY, "'m'")
    with pytest.raises(UsageError, match="max_position_embeddings"):
        Workload(prompt_tokens=600).for_model(TINY)
    with pytest.raises(UsageError, match="shorter than its typical call"):
        Workload(max_context=50)
    with pytest.raises(UsageError, match="smaller than its batch_size"):
        Workload(batch_size=4, max_batch=2)


def test_a_trial_times_the_typical_call_a_long_one_and_one_near_max_context():
    assert Workload().for_model(SMOLLM2).shapes() == [(32, 64), (512, 64), (1984, 64)]
    assert Workload(kind="summarize").for_model(SMOLLM2).shapes() == [(256, 64), (1024, 64), (1984, 64)]
    assert Workload(prompt_tokens=8, new_tokens=6, max_context=64).shapes() == [(8, 6), (16, 6), (58, 6)]
    assert Workload(prompt_tokens=8, new_tokens=6).shapes() == [(8, 6)]  # stored before envelopes: one shape
    assert Workload(prompt_tokens=40, new_tokens=8, max_context=48).shapes() == [(40, 8)]


def test_the_envelope_is_part_of_the_key_and_round_trips():
    base = Workload().for_model(SMOLLM2)
    others = [Workload(max_context=1024).for_model(SMOLLM2), Workload(max_batch=4).for_model(SMOLLM2),
              Workload(sampling="temperature=0.7").for_model(SMOLLM2)]
    assert len({base.key, *(w.key for w in others)}) == 4
    for w in (base, *others):
        assert Workload.from_dict(w.to_dict()) == w


def test_sampling_settings():
    assert parse_sampling("temperature=0.7, top_p=0.9") == {"temperature": 0.7, "top_p": 0.9}
    assert parse_sampling("greedy") == {} and parse_sampling(None) == {}
    assert parse_sampling({"top_k": 40}) == {"top_k": 40}
    w = Workload(sampling="temperature=0.7,top_p=0.9")
    assert w.generate_kwargs() == {"do_sample": True, "temperature": 0.7, "top_p": 0.9}
    assert Workload().generate_kwargs() == {}
    for bad, match in (("temperature", "name=value"), ("beams=4", "unknown: beams"), ("top_p=1.5", "top_p must be"),
                       ("top_k=2.5", "top_k must be"), ("temperature=hot", "temperature must be")):
        with pytest.raises(UsageError, match=match):
            parse_sampling(bad)


def test_long_calls_fill_in_front_with_the_shipped_documents(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    w = Workload(prompt_tokens=8, new_tokens=6, max_context=512)
    short, long = (w.input_ids(tok, tok.vocab_size, prompt_tokens=p) for p, _ in w.shapes()[:2])
    assert short.shape == (1, 8) and long.shape == (1, w.shapes()[1][0])
    assert long[0, -8:].tolist() == short[0].tolist()  # the same prompt ends both
    assert w.input_ids(tok, tok.vocab_size, batch=3).shape == (3, 8)
