"""Plain-text and JSON renderings of plugins, measurements and recipes for the terminal."""
from __future__ import annotations

from .budget import format_value
from .recipe import describe

FIGURES = ("status", "tpot_ms_p50", "tpot_ms_p95", "ttft_ms_p50", "ttft_ms_p95", "e2e_ms_p50", "e2e_ms_p95",
           "tokens_per_s", "peak_memory_bytes", "cv", "runs", "load_s", "compile_s", "quality",
           "perplexity", "perplexity_ratio", "greedy_match", "quality_valid", "error")


def plugins_table(rows: list[dict], target) -> str:
    lines = [f"target: {target.describe()}", ""]
    for row in rows:
        lines.append(f"{row['name']}  (order {row['order']}): {row['description']}")
        for option, choices in row["options"].items():
            shown = []
            for c in choices:
                mark = "*" if c == row["defaults"][option] else ""
                shown.append(f"{c}{mark}" + (" (unavailable)" if f"{option}={c}" in row["unavailable"] else ""))
            lines.append(f"  {option}: {', '.join(shown)}")
        for key, reason in row["unavailable"].items():
            lines.append(f"  unavailable: {key}: {reason}")
        lines.append("")
    lines.append("* = default")
    return "\n".join(lines)


def figures(evaluation) -> dict:
    d = {"status": evaluation.status, "error": evaluation.error}
    d.update({k: evaluation.result.get(k) for k in FIGURES if k in evaluation.result})
    return d


def ratio(candidate, baseline, key: str, higher_is_better: bool = True):
    a, b = candidate.get(key), baseline.get(key)
    if not a or not b:
        return None
    return a / b if higher_is_better else b / a


def bench_payload(candidate, baseline, target, workload, source) -> dict:
    return {
        "model": source.name, "config_only": source.config_only, "target": target.to_dict(),
        "workload": workload.to_dict(), "recipe": candidate.recipe,
        **figures(candidate),
        "baseline": figures(baseline),
        "ratio": {"tokens_per_s": ratio(candidate, baseline, "tokens_per_s"),
                  "tpot_speedup": ratio(candidate, baseline, "tpot_ms_p50", higher_is_better=False),
                  "ttft_speedup": ratio(candidate, baseline, "ttft_ms_p50", higher_is_better=False),
                  "memory": ratio(candidate, baseline, "peak_memory_bytes")},
    }


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def fmt(v, digits=1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def bench_text(p: dict, optimizations) -> str:
    b = p["baseline"]
    rows = [("", "baseline (HF default)", "recipe"),
            ("status", b["status"], p["status"]),
            ("tokens/s", fmt(b.get("tokens_per_s")), fmt(p.get("tokens_per_s"))),
            ("TPOT p50 / p95 ms", f"{fmt(b.get('tpot_ms_p50'), 2)} / {fmt(b.get('tpot_ms_p95'), 2)}",
             f"{fmt(p.get('tpot_ms_p50'), 2)} / {fmt(p.get('tpot_ms_p95'), 2)}"),
            ("TTFT p50 / p95 ms", f"{fmt(b.get('ttft_ms_p50'))} / {fmt(b.get('ttft_ms_p95'))}",
             f"{fmt(p.get('ttft_ms_p50'))} / {fmt(p.get('ttft_ms_p95'))}"),
            ("e2e p50 ms", fmt(b.get("e2e_ms_p50")), fmt(p.get("e2e_ms_p50"))),
            ("CV / runs", f"{fmt(b.get('cv'), 3)} / {fmt(b.get('runs'))}", f"{fmt(p.get('cv'), 3)} / {fmt(p.get('runs'))}"),
            ("peak memory", fmt_bytes(b.get("peak_memory_bytes")), fmt_bytes(p.get("peak_memory_bytes"))),
            ("load / compile s", f"{fmt(b.get('load_s'))} / {fmt(b.get('compile_s'))}",
             f"{fmt(p.get('load_s'))} / {fmt(p.get('compile_s'))}"),
            ("quality (top-1 agreement)", fmt(b.get("quality"), 3), fmt(p.get("quality"), 3)),
            ("perplexity", fmt(b.get("perplexity"), 2), fmt(p.get("perplexity"), 2))]
    width = [max(len(str(r[i])) for r in rows) for i in range(3)]
    lines = [f"recipe: {describe(p['recipe'], optimizations)}"]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, width)) for r in rows]
    r = p["ratio"]
    if r["tokens_per_s"]:
        lines.append(f"ratio: {r['tokens_per_s']:.2f}x tokens/s, TPOT {r['tpot_speedup']:.2f}x faster, "
                     f"memory {r['memory']:.2f}x of baseline")
    for who, d in (("baseline", b), ("recipe", p)):
        if d.get("error"):
            lines.append(f"{who} {d['status']}: {d['error']}")
    if p.get("config_only"):
        lines.append("note: config-only model (random weights): speed is valid, quality figures are not")
    return "\n".join(lines)


def space_summary(space) -> str:
    from .space import count

    n_options = sum(len(o) for o in space.values())
    return f"{count(space):,} distinct recipes over {n_options} options"


class Progress:
    """A progress bar on stderr: trials done, the candidate being measured, best so far."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.enabled, self.bar, self.best = total, enabled, None, None

    def __enter__(self):
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="trial", dynamic_ncols=True, leave=True)
        return self

    def set_status(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(f"measuring {text[:60]}")

    def trial_done(self, record, search) -> None:
        if self.bar is None:
            return
        key, direction = search.spec.objectives[0]
        if record.status == "ok" and record.feasible:
            value = record.result[key]
            if self.best is None or (value < self.best if direction == "minimize" else value > self.best):
                self.best = value
        if record.status != "invalid":
            self.bar.update(1)
        best = "-" if self.best is None else format_value(key, self.best)
        self.bar.set_postfix_str(f"last: {record.status}{' (reused)' if record.reused else ''}, best {best}")

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def measurement_row(r) -> dict:
    return {"id": r.id, "model": r.model.name, "status": r.status, "recipe": r.recipe.recipe, "study": r.study,
            "target": r.target.name, "tokens_per_s": r.tokens_per_s, "tpot_ms_p50": r.tpot_ms_p50,
            "ttft_ms_p50": r.ttft_ms_p50, "peak_memory_bytes": r.peak_memory_bytes, "quality": r.quality,
            "error": r.error, "stale": r.stale, "workload": r.workload.spec and {
                k: v for k, v in r.workload.spec.items() if k != "prompts"}}


def recipes_text(rows, target) -> str:
    from .plugins import get_optimizations

    if not rows:
        return f"no recipes yet for {target.describe()}: run `autotune search MODEL`"
    optimizations = get_optimizations()
    lines = [f"{'id':>5}  {'model':<22} {'tok/s':>7} {'TPOT ms':>8} {'memory':>10} {'quality':>7}  recipe"]
    for r in rows:
        mark = " (stale)" if r.stale else ""
        tail = describe(r.recipe.recipe, optimizations) if r.status == "ok" else f"{r.status}: {r.error}"
        lines.append(f"{r.id:>5}  {r.model.name[:22]:<22} {fmt(r.tokens_per_s):>7} {fmt(r.tpot_ms_p50, 2):>8} "
                     f"{fmt_bytes(r.peak_memory_bytes):>10} {fmt(r.quality, 3):>7}  {tail}{mark}")
    return "\n".join(lines)


def show_text(r) -> str:
    import json as _json

    f, b = r.figures or {}, getattr(r, "baseline_figures", None) or {}
    lines = [f"recipe {r.id}: {r.model.name}  [{r.status}]", f"study: {r.study}",
             f"target: {r.target.name} ({r.target.device}); versions: " +
             ", ".join(f"{k} {v}" for k, v in r.target.fingerprint.get("versions", {}).items()),
             f"workload: " + ", ".join(f"{k}={v}" for k, v in r.workload.spec.items() if k != "prompts"),
             "recipe:", _json.dumps(r.recipe.recipe, indent=2)]
    if r.error:
        lines.append(f"error: {r.error}")
    for key, label, higher in (("tokens_per_s", "tokens/s", True), ("tpot_ms_p50", "TPOT p50 ms", False),
                               ("ttft_ms_p50", "TTFT p50 ms", False), ("peak_memory_bytes", "peak memory", False),
                               ("quality", "quality", True), ("perplexity", "perplexity", False)):
        val, base = f.get(key), b.get(key)
        shown = fmt_bytes(val) if key == "peak_memory_bytes" else fmt(val, 2)
        based = fmt_bytes(base) if key == "peak_memory_bytes" else fmt(base, 2)
        ratio_text = ""
        if val and base and key not in ("quality", "perplexity"):
            ratio_text = f"  ({(val / base if higher else base / val):.2f}x vs baseline)"
        lines.append(f"  {label:<12} {shown:>12}   baseline {based:>12}{ratio_text}")
    return "\n".join(lines)


def search_payload(result, search) -> dict:
    base = result.baseline.result if result.baseline else {}

    def one(rec):
        return {"measurement_id": rec.measurement_id, "recipe": rec.recipe, "status": rec.status,
                "error": rec.error, "reused": rec.reused, "feasible": rec.feasible,
                **{k: rec.result.get(k) for k in FIGURES if k in rec.result and k not in ("status", "error")},
                "speedup_tokens_per_s": (rec.result.get("tokens_per_s") / base["tokens_per_s"]
                                         if rec.result.get("tokens_per_s") and base.get("tokens_per_s") else None)}

    return {"study": result.study_name, "budget": search.spec.budget.text, "interrupted": result.interrupted,
            "best": [one(r) for r in result.best], "baseline": one(result.baseline) if result.baseline else None,
            "trials": [one(r) for r in result.records]}


def search_text(result, search) -> str:
    base = result.baseline.result if result.baseline else {}
    counts: dict[str, int] = {}
    for r in result.records:
        counts[r.status] = counts.get(r.status, 0) + 1
    lines = [f"study {result.study_name}: {len(result.records)} trials (" +
             ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")"]
    if result.interrupted:
        lines.append("interrupted: run the same command again to resume")
    for i, r in enumerate(result.best):
        speed = r.result.get("tokens_per_s")
        ratio_text = f" = {speed / base['tokens_per_s']:.2f}x the HF default" if speed and base.get("tokens_per_s") else ""
        lines.append(f"{'best' if i == 0 else 'front'}: recipe {r.measurement_id}: {describe(r.recipe, search.optimizations)}")
        lines.append(f"  {fmt(speed)} tok/s{ratio_text}; TPOT p50 {fmt(r.result.get('tpot_ms_p50'), 2)} ms; "
                     f"TTFT p50 {fmt(r.result.get('ttft_ms_p50'))} ms; memory {fmt_bytes(r.result.get('peak_memory_bytes'))}; "
                     f"quality {fmt(r.result.get('quality'), 3)}")
    lines.append(f"export: autotune export {result.best[0].measurement_id} -o recipe.json")
    return "\n".join(lines)


def jobs_text(rows: list[dict]) -> str:
    if not rows:
        return "no jobs: queue one with `autotune submit MODEL --budget ...`"
    lines = [f"{'id':>4}  {'state':<9} {'model':<24} {'trials':>7}  {'best TPOT':>9}  hardware / workers"]
    for r in rows:
        workers = ", ".join(f"{w['host']}:{w['pid']} since {w['since']}" for w in r["workers"]) or "-"
        best = f"{r['best_tpot_ms_p50']:.2f} ms" if r["best_tpot_ms_p50"] else "-"
        lines.append(f"{r['id']:>4}  {r['state']:<9} {r['model'][:24]:<24} {r['trials_done']:>3}/{r['trials_planned']:<3}"
                     f"  {best:>9}  {r['hardware']} / {workers}")
        if r["message"] and r["state"] in ("failed", "cancelled"):
            lines.append(f"      {r['message']}")
    return "\n".join(lines)
