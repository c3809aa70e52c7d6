"""One trial, inside its own process: load, apply, warm up with the measured shapes, measure.

Runs in a spawned child (see :mod:`autotune.isolate`); takes and returns plain data only."""
from __future__ import annotations

import time

from . import measure
from .workload import Workload, shipped_text


def run_trial(spec: dict) -> dict:
    """Measure one recipe. ``spec``: model path, resolved recipe, workload, device, repeat policy."""
    import torch

    from .apply import Applied, finish, load_model, load_tokenizer
    from .optimization import ApplyContext
    from .plugins import get_optimizations, register_module
    from .target import current_target

    for module in spec.get("plugin_modules", []):
        register_module(module)
    optimizations = get_optimizations()
    recipe = spec["recipe"]
    workload = Workload.from_dict(spec["workload"])
    device = spec["device"]
    target = current_target(device)
    ctx = ApplyContext(target, device, workload.new_tokens, workload.prompt_tokens, workload.batch_size, recipe)

    t0 = time.perf_counter()
    model = load_model(spec["model_path"], optimizations, recipe, ctx)
    tokenizer = load_tokenizer(spec["model_path"])
    load_s = time.perf_counter() - t0
    result: dict = {"load_s": load_s}

    # quality is taken on the model as loaded: after-load stages (compile) keep numerics by contract
    probe = Applied(model, tokenizer, optimizations, recipe, ctx)
    result.update(measure.reference_pass(probe, shipped_text("reference.txt")) if spec.get("quality", True)
                  else {"top1": [], "perplexity": None})

    applied = finish(model, tokenizer, optimizations, recipe, ctx)
    input_ids = workload.input_ids(tokenizer, model.config.get_text_config().vocab_size)
    sync = torch.cuda.synchronize if device == "cuda" else None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def one_run():
        streamer = measure.TimingStreamer(sync)
        out = applied.generate_ids(input_ids, max_new_tokens=workload.new_tokens, streamer=streamer,
                                   min_new_tokens=workload.new_tokens)
        if sync:
            sync()
        e2e = time.perf_counter() - streamer.start
        return out, streamer, e2e

    # warm up with exactly the measured shapes: the first call pays compilation
    _, _, first_s = one_run()
    _, _, second_s = one_run()
    runs = []
    deadline = time.perf_counter() + spec.get("max_measure_s", 60)
    while len(runs) < spec.get("max_runs", 20):
        runs.append(one_run())
        e2es = [r[2] for r in runs]
        if len(runs) >= spec.get("min_runs", 3) and (measure.cv(e2es) <= spec.get("target_cv", 0.05)
                                                      or time.perf_counter() > deadline):
            break
    out, _, _ = runs[-1]
    n_new = out.shape[1] - input_ids.shape[1]
    if n_new != workload.new_tokens:
        raise RuntimeError(f"generated {n_new} tokens, the workload asks for exactly {workload.new_tokens}")
    e2e = measure.Stats.of([r[2] for r in runs])
    ttft = measure.Stats.of([r[1].ttft for r in runs])
    tpot = measure.Stats.of([t for r in runs for t in r[1].tpots])
    result.update({
        "status": "ok",
        "runs": len(runs),
        "cv": measure.cv([r[2] for r in runs]),
        "ttft_ms_p50": ttft.p50 * 1e3, "ttft_ms_p95": ttft.p95 * 1e3,
        "tpot_ms_p50": tpot.p50 * 1e3, "tpot_ms_p95": tpot.p95 * 1e3,
        "e2e_ms_p50": e2e.p50 * 1e3, "e2e_ms_p95": e2e.p95 * 1e3,
        "tokens_per_s": workload.batch_size * workload.new_tokens / e2e.p50,
        "first_call_s": first_s,
        "compile_s": max(0.0, first_s + second_s - 2 * e2e.p50),
        "output_ids": out[0, input_ids.shape[1]:].tolist(),
        **measure.peak_memory(device),
    })
    return result
