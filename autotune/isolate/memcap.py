"""The memory cap: a memory cgroup a trial process joins, so that the kernel's OOM killer — not
Python — stops it at the cap, as it would in production."""
from __future__ import annotations

import os
import time


class MemoryCap:
    """A memory cgroup (v1 memory controller or v2 ``memory.max``) that a trial process joins, so
    the kernel's OOM killer — not Python — stops it at the cap, as it would in production."""

    _count = 0

    def __init__(self, limit_bytes: int):
        self.limit, self.path, self.v1 = limit_bytes, None, False

    def __enter__(self) -> "MemoryCap":
        if not self.limit:
            return self
        from ..errors import UsageError

        MemoryCap._count += 1
        name = f"autotune-trial-{os.getpid()}-{MemoryCap._count}"
        for root, v1 in (("/sys/fs/cgroup/memory", True), ("/sys/fs/cgroup", False)):
            limit_file = "memory.limit_in_bytes" if v1 else "memory.max"
            if not v1 and "memory" not in _read(os.path.join(root, "cgroup.subtree_control")):
                continue
            try:
                os.mkdir(os.path.join(root, name))
                with open(os.path.join(root, name, limit_file), "w") as f:
                    f.write(str(int(self.limit)))
            except OSError:
                _remove(os.path.join(root, name))
                continue
            self.path, self.v1 = os.path.join(root, name), v1
            return self
        raise UsageError("measure.memory_cap_bytes needs a memory cgroup autotune can create (root, or a "
                         "delegated cgroup v2 with the memory controller)")

    def killed(self) -> bool:
        """Whether the kernel's OOM killer acted in this cgroup."""
        if self.path is None:
            return False
        text = _read(os.path.join(self.path, "memory.oom_control" if self.v1 else "memory.events"))
        return any(line.startswith("oom_kill ") and line.split()[1] != "0" for line in text.splitlines())

    def __exit__(self, *exc) -> None:
        if self.path is not None:
            _remove(self.path)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _remove(path: str) -> None:
    for _ in range(50):  # the killed process may take a moment to leave the cgroup
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
