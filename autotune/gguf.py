"""GGUF files as models: transformers reads a GGUF checkpoint but refuses to save one it loaded, so
the first use dequantizes it once into a plain float checkpoint in the user cache dir (keyed by the
file's path, size and modification time); later uses read that. The built-in ``smollm2-135m`` is one."""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ModelError
from .logs import no_progress_bars
from .paths import cache_dir


def float_checkpoint(gguf: Path) -> Path:
    """The float checkpoint of ``gguf`` (converted on first use) in the user cache, named after the
    file's path, size and modification time: a changed file converts again."""
    gguf = gguf.expanduser().resolve()
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "models" / f"gguf-{gguf.stem}-{key}"
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            _convert(gguf, target)
        except ModelError:
            raise
        except Exception as exc:  # gguf / transformers raise ValueError, KeyError, struct errors alike
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelError(f"cannot read {gguf.name} as a GGUF checkpoint transformers supports: {first}") from None
    return target


@contextlib.contextmanager
def _parsed_once():
    """While converting, each GGUF file is parsed once and each tensor-name map built once: transformers
    parses the file anew for the model's config, its tensors and the tokenizer, and builds gguf's name
    map anew for each of the model's ~400 modules (SmolLM2: 36 s of a fresh machine's first search,
    counted in its --timeout; 14 s with this). Both are read-only once built."""
    import gguf as gguf_py

    reader, name_map = gguf_py.GGUFReader, gguf_py.get_tensor_name_map
    once = functools.lru_cache(maxsize=None)
    gguf_py.GGUFReader, gguf_py.get_tensor_name_map = once(reader), once(name_map)
    try:
        yield
    finally:
        gguf_py.GGUFReader, gguf_py.get_tensor_name_map = reader, name_map


def _convert(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, file = gguf.parent, gguf.name
    with _parsed_once():
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=file, dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=file)
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        with no_progress_bars():
            plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: a concurrent reader sees all or nothing
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():
            raise
