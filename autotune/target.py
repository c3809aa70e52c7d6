"""The target fingerprint: what hardware and library versions a measurement was taken on."""
from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

LIBRARIES = ("torch", "transformers", "bitsandbytes", "flash-attn", "torchao", "optuna")


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "absent"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class Target:
    device: str  # "cuda" or "cpu"
    name: str  # GPU name or CPU model
    memory_bytes: int  # GPU memory, or system memory for a CPU target
    compute_capability: str | None
    threads: int
    cpu_flags: tuple[str, ...] = ()
    versions: dict = field(default_factory=dict)

    @property
    def has_cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def hardware_key(self) -> str:
        """Identifies the hardware class: recipes transfer between hosts with the same key."""
        raw = f"{self.device}|{self.name}|{self.memory_bytes // 2**30}GiB|{self.compute_capability}|{self.threads}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    @property
    def versions_key(self) -> str:
        raw = json.dumps(self.versions, sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cpu_flags"] = list(self.cpu_flags)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Target":
        d = dict(d)
        d["cpu_flags"] = tuple(d.get("cpu_flags", ()))
        return cls(**d)

    def describe(self) -> str:
        mem = f"{self.memory_bytes / 2**30:.0f} GiB"
        if self.has_cuda:
            return f"{self.name} ({mem}, sm {self.compute_capability})"
        return f"CPU {self.name} ({self.threads} threads, {mem})"


def _cpu_flags() -> tuple[str, ...]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "avx512_fp16",
              "amx_fp16")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return tuple(w for w in wanted if w in have)
    except OSError:
        pass
    return ()


@lru_cache(maxsize=None)
def current_target(device: str | None = None) -> Target:
    """Fingerprint this machine; ``device`` forces "cpu" even where CUDA is present."""
    import psutil
    import torch

    versions = {lib: _version(lib) for lib in LIBRARIES}
    versions["python"] = platform.python_version()
    use_cuda = torch.cuda.is_available() and device != "cpu"
    threads = torch.get_num_threads()
    if use_cuda:
        props = torch.cuda.get_device_properties(0)
        return Target("cuda", props.name, int(props.total_memory), f"{props.major}.{props.minor}",
                      threads, _cpu_flags(), versions)
    if device == "cuda":
        from .errors import UsageError

        raise UsageError("--device cuda asked for, but torch sees no CUDA device here")
    return Target("cpu", _cpu_model(), int(psutil.virtual_memory().total), None,
                  threads or os.cpu_count() or 1, _cpu_flags(), versions)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS says, else every core)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
