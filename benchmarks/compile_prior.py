"""Refresh the first calls autotune ships for a fresh machine (``autotune/data/compile_prior.json``, read
by :func:`autotune.compile_cost.shipped_prior`) from a README job's database: the rows of the named
compile targets are replaced by that database's first calls of them (the others stay as measured before).
Run it after a change that moves a target's compile time, on a fresh README job's database:

    python benchmarks/compile_prior.py /tmp/rd-data/autotune.db --target aoti --date 2026-12-02
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

PRIOR = Path(__file__).resolve().parent.parent / "autotune" / "data" / "compile_prior.json"


def main() -> None:
    from autotune.store import Store, queries

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("db", help="the README job's database (a SQLite file or a URL)")
    ap.add_argument("--target", action="append", required=True, help="a compile.target whose rows to replace")
    ap.add_argument("--date", required=True, help="when the README job ran (for the file's note)")
    args = ap.parse_args()
    url = args.db if "://" in args.db else f"sqlite:///{Path(args.db).resolve()}"
    doc = json.loads(PRIOR.read_text())
    fresh = [{"recipe": p.recipe, "seconds": round(p.seconds, 1), "censored": p.censored,
              "weights_bytes": p.weights_bytes}
             for p in reversed(queries.compile_history(Store(url)))
             if p.recipe.get("compile", {}).get("target") in args.target]
    if not fresh:
        raise SystemExit(f"no first calls of compile.target {', '.join(args.target)} in {args.db}")
    kept = [r for r in doc["rows"] if r["recipe"].get("compile", {}).get("target") not in args.target]
    doc["rows"] = kept + fresh
    for target in args.target:  # the rows of these targets are from a later README job than the note's date
        doc.setdefault("remeasured", {})[target] = args.date
    PRIOR.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"{PRIOR}: {len(kept)} rows kept, {len(fresh)} of {', '.join(args.target)}: "
          + ", ".join(f"{r['seconds']:.0f} s" + (" (cap)" if r["censored"] else "") for r in fresh))


if __name__ == "__main__":
    main()
