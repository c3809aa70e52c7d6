"""How far a recipe is from the memory roofline.

Decoding one token reads every weight once plus the KV cache so far, so a decode step can never be
faster than ``bytes per step / memory bandwidth``. MBU (model bandwidth utilisation) is the share of
that limit a recipe reaches: ``bytes per step / TPOT / bandwidth``. A step faster than the roofline
is a measurement bug, not a fast recipe.

The target's read bandwidth is measured once (a large reduction, best of a few) and cached in
autotune's cache dir per hardware key."""
from __future__ import annotations

import json
import os
import time
from functools import lru_cache

from .paths import cache_dir

#: bytes the bandwidth probe reads: far beyond any cache
PROBE_BYTES = 1 << 30
#: MBU above this (with ~one token per forward pass) means the timing cannot be right
IMPOSSIBLE_MBU = 1.2
#: below this many bytes per step the model may live in the CPU's caches, where MBU > 1 is real
CACHE_RESIDENT_BYTES = 256 << 20


@lru_cache(maxsize=None)
def memory_bandwidth(device: str, hardware_key: str) -> float:
    """Bytes per second this target reads from memory (cached on disk per hardware key)."""
    path = _cached(hardware_key)
    try:
        return float(json.loads(path.read_text())["bytes_per_s"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return _store(path, _probe(device))


def probe_again(device: str, hardware_key: str) -> float:
    """The bandwidth probed once more, kept when higher than the cached one: a probe that ran beside a
    busy process (or before a fix) under-reads, and every later decode step would look faster than
    memory allows (a CI run found the HF default "invalid" against a 13.2 GB/s probe of a 22.7 GB/s
    Xeon). Returns the bandwidth now cached."""
    value = max(memory_bandwidth(device, hardware_key), _probe(device))
    _store(_cached(hardware_key), value)
    memory_bandwidth.cache_clear()
    return value


def _cached(hardware_key: str):
    return cache_dir() / "bandwidth" / f"{hardware_key}.json"


def _store(path, value: float) -> float:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"bytes_per_s": value, "probe_bytes": PROBE_BYTES}))
    tmp.replace(path)
    return value


def _probe(device: str) -> float:
    """Best of six reductions over :data:`PROBE_BYTES`, on every core (one thread reads half what two
    do on the 2-core Xeon: 11.3 against 22.7 GB/s)."""
    import torch

    from .target import usable_cores

    if device == "cuda":
        return _probe_cuda()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, usable_cores()))
    try:
        x = torch.ones(PROBE_BYTES // 4, dtype=torch.float32, device=device)
        best = float("inf")
        for _ in range(6):
            t0 = time.perf_counter()
            x.sum()
            best = min(best, time.perf_counter() - t0)
        del x
    finally:
        torch.set_num_threads(threads)
    return PROBE_BYTES / best


#: reductions timed between one pair of CUDA events: one read of 1 GiB takes ~0.25 ms on an H200, where
#: a host-side timer around a synchronize would count the launch and the sync too (the H200 read
#: 3655-4189 GB/s that way, against its 4.8 TB/s)
CUDA_REPEATS = 10


def _probe_cuda() -> float:
    """Best of six timings of :data:`CUDA_REPEATS` reductions over :data:`PROBE_BYTES`, by CUDA events."""
    import torch

    x = torch.ones(PROBE_BYTES // 4, dtype=torch.float32, device="cuda")
    x.sum()  # the kernel loaded, the allocator warm
    best = float("inf")
    for _ in range(6):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(CUDA_REPEATS):
            x.sum()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1000 / CUDA_REPEATS)
    del x
    torch.cuda.empty_cache()  # the search's process keeps no gigabyte reserved for its trials' lifetime
    return PROBE_BYTES / best


def bytes_per_step(model, batch_size: int, context_tokens: float) -> int:
    """Bytes one decode step reads: the weights as stored (quantized ones at their size) and the
    K and V of ``context_tokens`` positions for every layer and sequence."""
    from .measure import weights_bytes

    config = model.config.get_text_config()
    layers = getattr(config, "num_hidden_layers", 0)
    heads = getattr(config, "num_attention_heads", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    element = model.get_input_embeddings().weight.element_size()
    kv = 2 * layers * kv_heads * head_dim * element * batch_size * context_tokens
    return int(weights_bytes(model) + kv)


def mbu(step_bytes: int, tpot_s: float, bandwidth: float) -> float:
    return step_bytes / tpot_s / bandwidth


def impossible(mbu_value: float, step_bytes: int, tokens_per_step: float) -> bool:
    """Faster than memory allows: one token per forward pass (no proposals accepted), a model far
    larger than any cache, and MBU well above 1."""
    return tokens_per_step < 1.05 and step_bytes >= CACHE_RESIDENT_BYTES and mbu_value > IMPOSSIBLE_MBU
