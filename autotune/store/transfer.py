"""Moving measurements between tuning databases as JSON lines (``autotune db export`` / ``db import``).

The first line is a header (format, its version, the schema revision that wrote it); every other
line is one measurement with the rows it hangs from: its model, its target (hardware and version
keys, the full fingerprint), its workload and its recipe, so a file is readable on its own.

An import is one transaction and only ever adds rows. A measurement the database already holds is
skipped: the same model, target, workload, recipe and reuse key — exactly what the search matches an
earlier measurement on before reusing it (:func:`autotune.store.queries.previous`) — and the same
status. Of several such lines in one file (a noisy baseline measured again), the newest is the one
imported: the one the search would reuse. Rows keep the file's order, so "newest" means the same
after an import. A file written by a newer schema than this autotune knows is refused."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

from sqlalchemy import select

from ..errors import UsageError
from . import tables as t
from .db import _alembic_config, head_revision

FORMAT = "autotune-results"
FORMAT_VERSION = 1
#: the measurement columns a file carries (ids are the database's own and never travel)
COLUMNS = ("study", "is_baseline", "status", "error", "reuse_key", "trial_limit_s", "figures", "stale")


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {rev.revision for rev in ScriptDirectory.from_config(_alembic_config(None)).walk_revisions()}


def _identity(model: str, config_only: bool, hardware_key: str, versions_key: str, workload_key: str,
              recipe_key_hash: str, reuse_key: str | None, status: str) -> tuple:
    """What makes two measurements the same one (see the module docstring)."""
    return (model, bool(config_only), hardware_key, versions_key, workload_key, recipe_key_hash, reuse_key, status)


# -- export --------------------------------------------------------------------------------------
def _line(m: t.Measurement) -> dict:
    return {"model": {"name": m.model.name, "config_only": m.model.config_only},
            "target": {"hardware_key": m.target.hardware_key, "versions_key": m.target.versions_key,
                       "fingerprint": m.target.fingerprint},
            "workload": {"key": m.workload.key, "definition": m.workload.definition},
            "recipe": {"key": m.recipe.key, "recipe": m.recipe.recipe},
            "measurement": {**{c: getattr(m, c) for c in COLUMNS},
                            "created_at": m.created_at.isoformat() if m.created_at else None}}


def export_file(store, path: str, *, model: str | None = None, since: dt.datetime | None = None,
                written_by: str = "") -> int:
    """Write the measurements (of ``model``, made at or after ``since``) to ``path``, atomically;
    returns how many."""
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "schema": head_revision(),
              "written_by": written_by, "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp")
    count = 0
    try:
        with store.session() as s, open(tmp, "w", encoding="utf-8") as f:
            q = select(t.Measurement).join(t.Model).order_by(t.Measurement.id)
            if model:
                q = q.where(t.Model.name == model)
            if since is not None:
                q = q.where(t.Measurement.created_at >= since)
            f.write(json.dumps(header) + "\n")
            for m in s.scalars(q):
                f.write(json.dumps(_line(m), sort_keys=True) + "\n")
                count += 1
        os.replace(tmp, out)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return count


# -- import --------------------------------------------------------------------------------------
def _want(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise UsageError(f"{where}: {what}")


def _is_str(v, max_len: int) -> bool:
    return isinstance(v, str) and 0 < len(v) <= max_len


def _check_line(d, where: str) -> dict:
    """Every field an imported row needs, with its type; a problem is a one-line UsageError."""
    _want(isinstance(d, dict), where, "not a JSON object")
    for key in ("model", "target", "workload", "recipe", "measurement"):
        _want(isinstance(d.get(key), dict), where, f"\"{key}\" must be an object")
    model, target, workload, recipe, m = (d[k] for k in ("model", "target", "workload", "recipe", "measurement"))
    _want(_is_str(model.get("name"), 500) and isinstance(model.get("config_only"), bool), where,
          "model needs a name and config_only")
    _want(_is_str(target.get("hardware_key"), 32) and _is_str(target.get("versions_key"), 32), where,
          "target needs hardware_key and versions_key")
    fp = target.get("fingerprint")
    _want(isinstance(fp, dict) and _is_str(fp.get("device"), 16) and _is_str(fp.get("name"), 200), where,
          "target.fingerprint needs a device and a name")
    _want(_is_str(workload.get("key"), 32) and isinstance(workload.get("definition"), dict), where,
          "workload needs a key and a definition")
    _want(_is_str(recipe.get("key"), 100_000) and isinstance(recipe.get("recipe"), dict), where,
          "recipe needs a key and the recipe")
    _want(_is_str(m.get("status"), 16), where, "measurement.status must be a status name")
    _want(isinstance(m.get("figures", {}), dict), where, "measurement.figures must be an object")
    for c in t.Measurement.FIGURE_COLUMNS:
        v = (m.get("figures") or {}).get(c)
        _want(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)), where,
              f"measurement.figures.{c} must be a number")
    _want(m.get("reuse_key") is None or _is_str(m.get("reuse_key"), 64), where, "measurement.reuse_key is malformed")
    _want(m.get("study") is None or _is_str(m.get("study"), 300), where, "measurement.study is malformed")
    _want(m.get("trial_limit_s") is None or (isinstance(m["trial_limit_s"], (int, float))
                                             and not isinstance(m["trial_limit_s"], bool)),
          where, "measurement.trial_limit_s must be a number")
    try:
        m["created_at"] = dt.datetime.fromisoformat(m["created_at"]) if m.get("created_at") else None
    except (TypeError, ValueError):
        raise UsageError(f"{where}: measurement.created_at is not a date") from None
    return d


def read_file(path: str) -> list[dict]:
    """The measurement lines of an export file, header and every line checked before anything is
    written."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text") from None
    parsed = []
    for n, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            parsed.append((n, json.loads(text)))
        except (ValueError, RecursionError) as exc:
            raise UsageError(f"{path} line {n}: not valid JSON ({exc})") from None
    if not parsed or not isinstance(parsed[0][1], dict) or parsed[0][1].get("format") != FORMAT:
        raise UsageError(f"{path} is not an autotune results file (made by `autotune db export`)")
    header = parsed[0][1]
    if header.get("format_version") != FORMAT_VERSION or header.get("schema") not in known_revisions():
        raise UsageError(f"{path} was written by a newer autotune (schema {header.get('schema')!r}, format "
                         f"{header.get('format_version')!r}); this one knows schema {head_revision()} and format "
                         f"{FORMAT_VERSION}: upgrade autotune to import it")
    return [_check_line(d, f"{path} line {n}") for n, d in parsed[1:]]


def _existing(s) -> set[tuple]:
    q = (select(t.Model.name, t.Model.config_only, t.Target.hardware_key, t.Target.versions_key, t.Workload.key,
                t.Recipe.key_hash, t.Measurement.reuse_key, t.Measurement.status)
         .join(t.Model, t.Measurement.model_id == t.Model.id).join(t.Target, t.Measurement.target_id == t.Target.id)
         .join(t.Workload, t.Measurement.workload_id == t.Workload.id)
         .join(t.Recipe, t.Measurement.recipe_id == t.Recipe.id))
    return {_identity(*row) for row in s.execute(q)}


def _line_identity(d: dict) -> tuple:
    model, target, m = d["model"], d["target"], d["measurement"]
    return _identity(model["name"], model["config_only"], target["hardware_key"], target["versions_key"],
                     d["workload"]["key"], hashlib.sha256(d["recipe"]["key"].encode()).hexdigest(),
                     m.get("reuse_key"), m["status"])


def import_file(store, path: str) -> tuple[int, int]:
    """Add the file's measurements that ``store`` does not hold, in one transaction; returns
    ``(added, skipped)``."""
    rows = read_file(path)
    idents = [_line_identity(d) for d in rows]
    newest = {ident: i for i, ident in enumerate(idents)}  # the last line of each identity wins
    added = skipped = 0
    with store.session() as s:
        seen = _existing(s)
        for i, (d, ident) in enumerate(zip(rows, idents)):
            if ident in seen or newest[ident] != i:
                skipped += 1
                continue
            model, target, workload, recipe, m = (d[k] for k in ("model", "target", "workload", "recipe",
                                                                 "measurement"))
            figures = m.get("figures") or {}
            row = t.Measurement(
                model_id=t.Model.get_or_create(s, model["name"], model["config_only"]).id,
                target_id=t.Target.get_or_create(s, target["fingerprint"], target["hardware_key"],
                                                 target["versions_key"]).id,
                workload_id=t.Workload.get_or_create(s, workload["key"], workload["definition"]).id,
                recipe_id=t.Recipe.get_or_create(s, recipe["key"], recipe["recipe"]).id,
                study=m.get("study"), is_baseline=bool(m.get("is_baseline")), status=m["status"],
                error=m.get("error"), reuse_key=m.get("reuse_key"), trial_limit_s=m.get("trial_limit_s"),
                figures=figures, stale=bool(m.get("stale")),
                **{c: figures.get(c) for c in t.Measurement.FIGURE_COLUMNS},
                **({"created_at": m["created_at"]} if m.get("created_at") else {}))
            s.add(row)
            added += 1
    return added, skipped
