"""Serve what a user serves: an exported recipe, loaded the way production code loads it, answering
the calls the serving-envelope issue listed — a long prompt, a long answer, a padded batch, sampling
with several seeds — each timed beside the HF default (eager, dynamic cache) in this one process.

    python benchmarks/serve_check.py recipe.json [--out benchmarks/last-serve.json]

A call outside the recipe's envelope (its max_context, max_batch) must be refused in one line naming
it; every other call must answer. The CPU is named next to every figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import autotune
from autotune.errors import RecipeError
from autotune.target import current_target

PROMPT = ("The lighthouse keeper kept a log of every ship that passed the point. " * 40)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("--out", default="benchmarks/last-serve.json")
    args = ap.parse_args()
    target = current_target()
    tuned = autotune.load(args.recipe)
    _, warm_s = timed(tuned.warm_up)
    tok = tuned.tokenizer
    from transformers import AutoModelForCausalLM

    from autotune.sources import resolve_model

    hf = AutoModelForCausalLM.from_pretrained(resolve_model(tuned.document["model"]).path, dtype="auto").eval()
    long_ids = tok(PROMPT, return_tensors="pt")["input_ids"][:, :250]

    def chat(text: str) -> str:
        return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)

    short = chat("What is the capital of France?")
    envelope = tuned.workload
    print(f"# {target.describe()}; recipe {args.recipe}: {envelope.describe()}; warm-up {warm_s:.1f} s", flush=True)

    calls = {
        "250-token prompt, 32 new": dict(ids=long_ids, new=32),
        "short prompt, 200 new": dict(ids=tok(short, return_tensors="pt")["input_ids"], new=200),
        "padded batch of 2": dict(texts=[short, chat("Tell me, in a few words, about the sea at night.")], new=32),
    }
    rows = []
    for name, call in calls.items():
        row = {"call": name}
        try:
            if "texts" in call:
                tok.padding_side = "left"
                tok.pad_token = tok.pad_token or tok.eos_token
                enc = tok(call["texts"], return_tensors="pt", padding=True)
                ids, mask = enc["input_ids"], enc["attention_mask"]
            else:
                ids, mask = call["ids"], torch.ones_like(call["ids"])
            # every call generates exactly its new tokens (EOS may not end it early), as the benchmark times it
            out, secs = timed(lambda: tuned.generate_ids(ids, mask, max_new_tokens=call["new"],
                                                         min_new_tokens=call["new"]))
            with torch.inference_mode():
                ref, ref_secs = timed(lambda: hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=call["new"],
                                                          min_new_tokens=call["new"], do_sample=False))
            new = out.shape[1] - ids.shape[1]
            row.update(status="ok", new_tokens=int(new), seconds=round(secs, 3), hf_seconds=round(ref_secs, 3),
                       speedup=round((ref_secs / (ref.shape[1] - ids.shape[1])) / (secs / max(new, 1)), 2),
                       same_first_16=bool(torch.equal(out[:, ids.shape[1]:ids.shape[1] + 16],
                                                      ref[:, ids.shape[1]:ids.shape[1] + 16])))
        except RecipeError as exc:
            row.update(status="refused", error=str(exc))
        rows.append(row)
        print(json.dumps(row), flush=True)

    samples = set()
    for seed in range(4):
        torch.manual_seed(seed)
        samples.add(tuned.generate(chat("Write one sentence about the sea."), max_new_tokens=24, do_sample=True,
                                   temperature=1.0, top_p=0.95))
    rows.append({"call": "do_sample=True, temperature=1.0, top_p=0.95, 4 seeds", "status": "ok",
                 "distinct_outputs": len(samples)})
    print(json.dumps(rows[-1]), flush=True)
    answer = tuned.generate(short, max_new_tokens=12, do_sample=False)
    rows.append({"call": "chat: What is the capital of France?", "status": "ok", "answer": answer.strip()})
    print(json.dumps(rows[-1]), flush=True)
    with open(args.out, "w") as f:
        json.dump({"target": target.describe(), "recipe": tuned.document["recipe"],
                   "workload": tuned.document["workload"], "warm_up_s": warm_s, "calls": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
