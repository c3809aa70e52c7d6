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
    keyed by the torch version, so a graph compiled by one trial costs seconds in the next — unless
    the user points TORCHINDUCTOR_CACHE_DIR elsewhere. Torch writes its own default (a folder in
    /tmp) into that variable the first time anything asks for the cache dir, so a value equal to
    torch's default is not the user's choice and is replaced."""
    from importlib.metadata import version

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or current == _torch_default_cache_dir():
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache_dir(version("torch")))


def compile_cache_dir(torch_version: str) -> Path:
    return cache_dir() / "inductor" / torch_version


def _torch_default_cache_dir() -> str | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # another torch: then only an unset variable is ours to set
        return None
    return os.path.abspath(default_cache_dir())



def output_file(path: str, folder: bool = False) -> Path:
    """A file (or, with ``folder``, a folder) the user asked autotune to write (``-o``): its parent
    folder is created when missing, as ``mkdir -p`` would, and a place that cannot be written is a
    one-line :class:`~autotune.errors.UsageError` — before anything is computed or written."""
    from .errors import UsageError

    out = Path(path).expanduser()
    if out.is_dir() and not folder:
        raise UsageError(f"cannot write {path}: it is a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: cannot create its folder {out.parent} "
                         f"({exc.strerror or exc})") from None
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"cannot write {path}: its folder {out.parent} is not writable")
    return out
