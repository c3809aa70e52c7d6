"""Where autotune keeps things: platformdirs' user dirs, overridable for tests and CI."""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cache_dir() -> Path:
    """Converted checkpoints and config-only models (``AUTOTUNE_CACHE_DIR`` overrides)."""
    return Path(os.environ.get("AUTOTUNE_CACHE_DIR") or platformdirs.user_cache_dir("autotune"))


def data_dir() -> Path:
    """The default tuning database lives here (``AUTOTUNE_DATA_DIR`` overrides)."""
    return Path(os.environ.get("AUTOTUNE_DATA_DIR") or platformdirs.user_data_dir("autotune"))


def use_persistent_compile_cache() -> None:
    """One inductor / AOTAutograd cache for every trial on this machine, in autotune's cache dir and
    keyed by the torch version, so a graph compiled by one trial costs seconds in the next (unless
    the user points TORCHINDUCTOR_CACHE_DIR elsewhere)."""
    from importlib.metadata import version

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor" / version("torch")))
