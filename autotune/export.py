"""Recipe files: the plain-data JSON format (no pickle, no code), its validation, and the
``--format transformers`` directory for users of plain transformers."""
from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

from .errors import AutotuneError, NotFoundError, RecipeError
from .figures import Figures
from .states import Status
from .logs import no_progress_bars
from .optimization import ApplyContext, Optimization
from .recipe import resolve
from .workload import Workload

FORMAT = "autotune-recipe"
FORMAT_VERSION = 1


def recipe_document(*, model: str, config_only: bool, recipe: dict, workload: dict, target: dict,
                    figures: dict, baseline: dict | None, measurement_id: int | None, study: str | None) -> dict:
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": model, "config_only": config_only,
        "recipe": recipe, "workload": workload,
        "target": target, "versions": target.get("versions", {}),
        "figures": Figures.from_dict(figures).exported(),
        "baseline": Figures.from_dict(baseline).exported() if baseline else None,
        "measurement_id": measurement_id, "study": study,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def document_of(row) -> dict:
    """The recipe document of a stored measurement (see :func:`autotune.store.queries.get_measurement`)."""
    return recipe_document(model=row.model.name, config_only=row.model.config_only, recipe=row.recipe.recipe,
                           workload=row.workload.definition, target=row.target.fingerprint, figures=row.figures or {},
                           baseline=getattr(row, "baseline_figures", None), measurement_id=row.id, study=row.study)


def stored_document(store, ref: str, target, optimizations, workload_kind: str | None = None) -> dict:
    """A recipe document from a stored measurement id or a model name (the best known for this
    hardware at the default quality floor, for ``workload_kind`` when given)."""
    from .budget import DEFAULT_QUALITY_FLOOR
    from .store import queries

    if ref.isdigit():
        row = queries.get_measurement(store, int(ref))
    else:
        row = queries.best_for_model(store, ref, target.hardware_key, DEFAULT_QUALITY_FLOOR, target.describe(),
                                     workload_kind)
    if row.status != Status.OK:
        raise NotFoundError(f"measurement {row.id} did not run successfully ({row.status}): nothing to load")
    return validate_document(document_of(row), optimizations, where=f"stored recipe {row.id}")


def write_json(doc: dict, path: str) -> None:
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(out)


#: a recipe is a few kilobytes; anything this large is not one (and is not read whole)
MAX_RECIPE_BYTES = 4 * 2**20


def read_recipe_file(path: str, optimizations: Mapping[str, Optimization]) -> dict:
    """Read and validate a recipe JSON file; every problem is a :class:`RecipeError`. Only regular
    files are read (not directories, devices or pipes), and only up to :data:`MAX_RECIPE_BYTES`."""
    import stat

    try:
        st = Path(path).stat()
        if not stat.S_ISREG(st.st_mode):
            raise RecipeError(f"recipe {path} is not a regular file")
        if st.st_size > MAX_RECIPE_BYTES:
            raise RecipeError(f"recipe {path} is {st.st_size:,} bytes: too large to be a recipe")
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"recipe {path} is not UTF-8 text") from None
    except RecursionError:
        raise RecipeError(f"recipe {path} is nested too deeply to be a recipe") from None
    except ValueError as exc:
        raise RecipeError(f"recipe {path} is not valid JSON: {exc}") from None
    return validate_document(doc, optimizations, where=str(path))


def validate_document(doc, optimizations: Mapping[str, Optimization], where: str = "recipe") -> dict:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise RecipeError(f"{where} is not an autotune recipe (missing \"format\": \"{FORMAT}\")")
    if doc.get("format_version") != FORMAT_VERSION:
        raise RecipeError(f"{where} has format_version {doc.get('format_version')!r}; this autotune reads "
                          f"{FORMAT_VERSION}")
    if not isinstance(doc.get("model"), str) or not doc["model"]:
        raise RecipeError(f"{where}: \"model\" must be a non-empty string")
    if not isinstance(doc.get("recipe"), dict):
        raise RecipeError(f"{where}: \"recipe\" must map plugin names to options")
    try:
        doc["recipe"] = resolve(doc["recipe"], optimizations)
        doc["workload"] = Workload.from_dict(doc.get("workload") or {}).to_dict()
    except (AutotuneError, TypeError, ValueError) as exc:
        raise RecipeError(f"{where}: {exc}") from None
    if not isinstance(doc.get("target", {}), dict):
        raise RecipeError(f"{where}: \"target\" must be an object")
    if not isinstance(doc.get("config_only", False), bool):
        raise RecipeError(f"{where}: \"config_only\" must be true or false")
    return doc


def write_transformers_dir(doc: dict, model_path: str, out_dir: str, optimizations: Mapping[str, Optimization],
                           target) -> None:
    """A directory plain ``AutoModelForCausalLM.from_pretrained`` loads: weights as the recipe loads
    them (quantized where it quantizes), ``generation_config.json`` with what generate understands,
    and a README of the steps transformers cannot persist (compile, SDPA backend...)."""
    from .apply import hub_kernels, load_model, load_tokenizer

    recipe, workload = doc["recipe"], Workload.from_dict(doc["workload"])
    ctx = ApplyContext.of(target, workload, recipe)
    model = load_model(model_path, optimizations, recipe, ctx)
    tokenizer = load_tokenizer(model_path)
    load_kwargs, steps = hub_kernels(), []  # loaded as measured: without the Hub's kernels
    for name, opt in optimizations.items():
        exported = opt.transformers_export(recipe[name])
        for key, value in exported.get("generation_config", {}).items():
            setattr(model.generation_config, key, value)
        load_kwargs.update(exported.get("load_kwargs", {}))
        steps += exported.get("steps", [])
    if str(model.generation_config.cache_implementation).endswith("static"):  # one cache for the envelope
        model.generation_config.max_cache_len = ctx.max_context
    out = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent if out.parent.exists() else None))
    try:
        with no_progress_bars():
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(doc, str(tmp / "autotune-recipe.json"))
        (tmp / "README.md").write_text(_readme(doc, load_kwargs, steps))
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(tmp), str(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _readme(doc: dict, load_kwargs: dict, steps: list[str]) -> str:
    kwargs = "".join(f", {k}={v!r}" for k, v in load_kwargs.items())
    lines = [f"# {doc['model']} tuned by autotune", "",
             "Load with plain transformers:", "", "```python",
             "from transformers import AutoModelForCausalLM, AutoTokenizer",
             f"model = AutoModelForCausalLM.from_pretrained(\"<this directory>\"{kwargs})",
             "tokenizer = AutoTokenizer.from_pretrained(\"<this directory>\")", "```", "",
             "`generation_config.json` already carries the cache settings and `disable_compile` (measured "
             "without transformers' auto-compile); quantized weights carry their "
             "`quantization_config` in `config.json`.", ""]
    if steps:
        lines += ["Steps transformers cannot persist:", ""] + [f"- {s}" for s in steps] + [""]
    lines += ["Or apply the whole recipe in one call: `autotune.load(\"autotune-recipe.json\")`.", ""]
    return "\n".join(lines)
