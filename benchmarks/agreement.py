"""Quality over more text than a trial scores: teacher-forced top-1 agreement and mean KL divergence
against the fp32 reference (the HF default) over thousands of tokens, for named recipes side by side.

    python benchmarks/agreement.py [--text FILE] [--tokens 4096] [--recipe NAME=plugin.option=value ...]

A trial scores 192 forced tokens through the recipe's own decode path (three calls of 64): one token
is 0.5% of top-1 agreement, and the standard error near 0.96 is ~1.4%, as wide as the gaps between
quantizations. This pass runs each recipe's model (its quantization, dtype, attention; not its
compiled decode loop) over ``--tokens`` tokens of a longer text in windows of 512, one forward per
window, and compares every position's next-token distribution with the reference's; llama.cpp on
the shipped Q4_1 file too, where llama-cpp-python is installed (``bash benchmarks/install-llama-cpp.sh``),
fed the same token ids. Default text: the GPL-3 where Debian ships it, else this repository's README.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: recipes measured unless --recipe names others (their weights and numerics: what this pass sees)
RECIPES = {
    "bf16": "dtype.dtype=bfloat16",
    "int8 + int8 head": "quantization.method=torchao-int8-weight quantization.head=int8 dtype.dtype=bfloat16",
    "int4 g32 + int8 head": "quantization.method=torchao-int4-weight quantization.group_size=32 "
                            "quantization.head=int8 dtype.dtype=bfloat16",
}
WINDOW = 512


def default_text() -> Path:
    gpl = Path("/usr/share/common-licenses/GPL-3")
    return gpl if gpl.exists() else Path(__file__).resolve().parent.parent / "README.md"


def llama_cpp_logprobs(windows):
    """llama.cpp's next-token log-probs at every position of each window (the shipped Q4_1 GGUF), or
    None where llama-cpp-python is not installed."""
    import importlib.util

    import torch

    if importlib.util.find_spec("llama_cpp") is None:
        return None
    import numpy as np
    from llama_cpp import Llama
    from vs_llama_cpp import gguf_path

    threads = torch.get_num_threads()
    llm = Llama(model_path=str(gguf_path()), n_ctx=WINDOW + 16, n_threads=threads, n_threads_batch=threads,
                n_batch=WINDOW, logits_all=True, verbose=False)
    out = []
    for w in windows:
        llm.reset()
        llm.eval(w.tolist())
        logits = torch.from_numpy(np.array(llm.scores[:len(w)], dtype=np.float32))
        out.append(logits.log_softmax(-1))
    return out


def main() -> int:
    import torch

    from autotune.apply import apply_recipe
    from autotune.optimization import ApplyContext
    from autotune.registry import get_optimizations
    from autotune.sources import resolve_model
    from autotune.target import current_target
    from speed import named_recipes, parse_recipe

    ap = argparse.ArgumentParser()
    ap.add_argument("--text", type=Path, default=None)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--recipe", action="append", default=[], metavar="NAME=SETS")
    ap.add_argument("--out", default="benchmarks/last-agreement.json")
    args = ap.parse_args()
    text = args.text or default_text()
    optimizations, target = get_optimizations(), current_target("cpu")
    source = resolve_model("smollm2-135m")
    recipes = named_recipes(args.recipe) or RECIPES

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.path)
    ids = tokenizer(text.read_text(), return_tensors="pt").input_ids[0]
    windows = ids[:len(ids) // WINDOW * WINDOW][:args.tokens].view(-1, WINDOW)
    if not len(windows):
        print(f"benchmarks/agreement.py: {text} holds fewer than {WINDOW} tokens")
        return 1
    positions = windows.numel()
    print(f"# {target.describe()}; {text} ({positions} tokens in {len(windows)} windows of {WINDOW})", flush=True)
    reference = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = [reference(w[None]).logits[0].float().log_softmax(-1) for w in windows]
    del reference
    rows = {}

    def score(name, logprobs, recipe=None):
        differ, kld = 0, 0.0
        for mine, r in zip(logprobs, ref):
            differ += (mine.argmax(-1) != r.argmax(-1)).sum().item()
            kld += (r.exp() * (r - mine)).sum(-1).sum().item()
        rows[name] = {"top1": 1 - differ / positions, "differ": differ, "kld": kld / positions, "recipe": recipe}
        print(f"{name:28} top-1 {1 - differ / positions:.4f} ({differ} of {positions} differ)  "
              f"KLD {kld / positions:.4f}", flush=True)

    for name, sets in recipes.items():
        recipe = parse_recipe(sets, optimizations)
        ctx = ApplyContext(target, "cpu", 32, 64, 1, recipe)
        model = apply_recipe(str(source.path), optimizations, recipe, ctx).model
        with torch.no_grad():
            score(name, [model(w[None]).logits[0].float().log_softmax(-1) for w in windows], recipe)
        del model
    llama = llama_cpp_logprobs(windows)
    if llama is not None:
        score("llama.cpp Q4_1", llama)
    Path(args.out).write_text(json.dumps({"target": target.to_dict(), "text": str(text), "positions": positions,
                                          "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
