"""A draft model for assisted decoding where no smaller sibling can be downloaded: the embedded
SmolLM2-135M cut to its first N decoder layers (its own embeddings, final norm and LM head, its
tokenizer). An early-exit draft of a model not trained for early exit proposes poorly; what it
proposes well is what the benchmark measures.

    python benchmarks/make_draft.py --layers 8     # prints the checkpoint directory
    python benchmarks/speed.py --workload summarize --only bf16 \
        --recipe "bf16+assisted=dtype.dtype=bfloat16 decoding.method=assisted decoding.draft=$(python benchmarks/make_draft.py)"
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from autotune.paths import cache_dir
from autotune.sources import TOKENIZER_FILES, resolve_model


def truncated_draft(model: str, layers: int) -> Path:
    """``model`` with only its first ``layers`` decoder layers, saved once in the cache dir."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    source = resolve_model(model)
    out = cache_dir() / "drafts" / f"{Path(source.path).name}-first{layers}"
    if (out / "config.json").exists():
        return out
    config = AutoConfig.from_pretrained(source.path)
    if not 1 <= layers < config.num_hidden_layers:
        raise SystemExit(f"--layers must be 1..{config.num_hidden_layers - 1}")
    full = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    draft = AutoModelForCausalLM.from_config(config)
    missing, unexpected = draft.load_state_dict(full.state_dict(), strict=False)
    assert not missing, missing  # every draft weight comes from the model; the later layers are left out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    draft.save_pretrained(tmp)
    for name in TOKENIZER_FILES:
        if (Path(source.path) / name).exists():
            shutil.copy(Path(source.path) / name, tmp / name)
    tmp.replace(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layers", type=int, default=8)
    args = ap.parse_args()
    print(truncated_draft(args.model, args.layers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
