"""Model arguments: a built-in alias, a local checkpoint directory, or a hub id.

``config_only`` builds a model of the right shape with random weights from ``config.json`` alone,
saves it once in the cache dir, and loads it through the same ``from_pretrained`` path: its speed
is real, its quality is not."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError
from .logs import no_progress_bars
from .paths import cache_dir

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
#: the option a draft model (``--draft``) fills: the decoding plugin's, given by the study, never sampled
DRAFT_OPTION = "decoding.draft"


@dataclass(frozen=True)
class ModelSource:
    name: str  # what the user called it
    path: str  # what from_pretrained gets
    config_only: bool = False

    def to_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "config_only": self.config_only}

    def info(self, draft: "ModelSource | None" = None):
        """What plugins may know of the model before loading it (its config.json), and of the
        ``draft`` assisted decoding may use with it."""
        from .optimization import ModelInfo

        folder = Path(self.path)
        if not folder.is_dir():
            folder = _hub_snapshot(self.path) or folder
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            config = {}
        return ModelInfo(config if isinstance(config, dict) else {}, draft=draft.info() if draft else None)

    def info_for(self, recipe):
        """:meth:`info` with the draft a recipe names (its :data:`DRAFT_OPTION`), as a study gives it."""
        plugin, option = DRAFT_OPTION.split(".")
        draft = (recipe.get(plugin) or {}).get(option)
        return self.info(draft=resolve_model(draft, tokenizer=False) if draft else None)

    @property
    def fingerprint(self) -> str:
        """The model's identity beyond its name: the config's text and every weight file's name,
        size and modification time (a hub id: its cached snapshot, which names the revision). A
        changed checkpoint under the same name is a different model: nothing measured on the old
        one is reused."""
        folder = Path(self.path)
        if not folder.is_dir():
            folder = _hub_snapshot(self.path) or folder
        h = hashlib.sha256(str(folder).encode())
        if folder.is_dir():
            config = folder / "config.json"
            if config.exists():
                h.update(config.read_bytes())
            for f in sorted(folder.iterdir()):
                if f.suffix in WEIGHT_SUFFIXES:
                    st = f.stat()
                    h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot of a hub model (its folder name is the revision), without the network."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, or not a hub id: the name alone identifies it
        return None


def resolve_model(arg: str, config_only: bool = False, tokenizer: bool = True) -> ModelSource:
    """Turn a model argument into something ``from_pretrained`` can load, without loading weights.
    ``tokenizer=False``: a model that needs none of its own (a draft shares the served model's)."""
    from .registry import get_model_aliases

    aliases = get_model_aliases()
    if arg in aliases:
        path = aliases[arg].resolve()
    elif Path(arg).expanduser().is_file() and Path(arg).suffix.lower() == ".gguf":
        from .gguf import float_checkpoint

        path = str(float_checkpoint(Path(arg)))
    elif Path(arg).expanduser().exists():
        path = str(Path(arg).expanduser().resolve())
        if not Path(path).is_dir():
            raise ModelError(f"model {arg!r} is a file, not a checkpoint directory (or a .gguf file)")
        if not (Path(path) / "config.json").exists():
            raise ModelError(f"model directory {arg!r} has no config.json")
        _check_config(Path(path) / "config.json")
        if tokenizer and not config_only and not any((Path(path) / name).exists() for name in TOKENIZER_FILES):
            raise ModelError(f"model directory {arg!r} has no tokenizer: quality cannot be scored without one "
                             "(add it, or measure speed only with --config-only)")
    elif HUB_ID.match(arg):
        if _hub_snapshot(arg) is None:  # nothing is downloaded at run time
            raise ModelError(f"model {arg!r} is not in the local Hugging Face cache and autotune downloads "
                             f"nothing: fetch it first (huggingface-cli download {arg}) or give a local directory")
        path = arg
    else:
        known = ", ".join(aliases) or "none"
        raise ModelError(f"model {arg!r} is not a directory, a .gguf file, a hub id (org/name) or a built-in "
                         f"name ({known})")
    _load_config(arg, path)
    if config_only:
        path = _config_only_checkpoint(path)
    return ModelSource(arg, path, config_only)


def _load_config(arg: str, path: str):
    """The config as transformers reads it, checked here in the parent, before anything is measured
    or stored: wrong types fail now, not in every trial. Remote code is never run: a config that
    needs it is refused (``trust_remote_code`` is never taken from a config or a recipe)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # transformers raises OSError / ValueError / validation errors alike
        first = (str(exc).strip().splitlines() or [type(exc).__name__])
        detail = " ".join(line.strip() for line in first[:2])[:300]
        raise ModelError(f"model {arg!r}: its config does not load: {detail}") from None


def _check_config(config_file: Path) -> None:
    try:
        data = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{config_file} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise ModelError(f"{config_file} has no model_type: not a transformers config")


def _init_device(config) -> str:
    """Where a config-only model's random weights are drawn: a visible GPU they fit on (a 7B shape's
    took ~4 minutes on an H200 host's CPU), else the CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    if not torch.cuda.is_available():
        return "cpu"
    with torch.device("meta"):
        shell = AutoModelForCausalLM.from_config(config)
    need = sum(p.numel() * p.element_size() for p in shell.parameters())
    free, _ = torch.cuda.mem_get_info()
    return "cuda" if need < 0.8 * free else "cpu"


def _config_only_checkpoint(path: str) -> str:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError variants
        raise ModelError(f"cannot read a config for {path!r}: {exc}") from None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    digest = hashlib.sha256(config.to_json_string(use_diff=False).encode()).hexdigest()[:16]
    out = cache_dir() / "config-only" / digest
    if not (out / "config.json").exists():
        with torch.device(_init_device(config)):  # random weights: a GPU draws 16 GB of them in a blink
            model = AutoModelForCausalLM.from_config(config)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with no_progress_bars():
            model.save_pretrained(tmp)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        for name in TOKENIZER_FILES:
            if (Path(path) / name).exists():
                shutil.copy(Path(path) / name, tmp / name)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return str(out)
