"""Plain-text and JSON renderings of plugins, measurements and recipes for the terminal."""
from __future__ import annotations

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
