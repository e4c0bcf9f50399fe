"""Benchmark results on screen, as CSV (timm's column names first), JSON and a Pareto plot.

A result row is a flat dict. Its first columns are those of timm's `benchmark.py` inference CSV
(`model, infer_samples_per_sec, infer_step_time, infer_batch_size, infer_img_size, param_count,
infer_gmacs`), so fastvits rows can be appended to timm's published tables; the columns after them
say how the figure was obtained. `infer_step_time` is milliseconds per batch (at batch 1 that is the
latency), `param_count` is in millions, `infer_gmacs` is per image.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "CSV_COLUMNS",
    "PEER_TOP1",
    "format_table",
    "official_top1",
    "plot_pareto",
    "print_results",
    "save_results",
    "write_csv",
    "write_json",
]

TIMM_COLUMNS = (
    "model",
    "infer_samples_per_sec",
    "infer_step_time",
    "infer_batch_size",
    "infer_img_size",
    "param_count",
    "infer_gmacs",
)
CSV_COLUMNS = TIMM_COLUMNS + (
    "impl",  # fastvits | official | timm
    "backend",  # eager / compile / onnxruntime, with +cl (channels_last) and +reparam
    "precision",
    "device",
    "threads",
    "infer_mem_mb",  # peak working memory of one batch above what is resident before it
    "page_faults",  # minor page faults per batch: memory taken fresh from the system (allocator-dependent)
    "roof_frac",  # achieved GFLOP/s (fastvits' GMACs) / GEMM roof
    "speedup",  # median per-round ratio of speedup_vs's time to this row's time
    "speedup_vs",
    "max_abs_diff",  # largest |output - reference output| on the same input
    "diff_vs",
    "top1",  # official ImageNet top-1 of the weights this architecture ships with
    "rounds_kept",
    "rounds_run",
    "noisy",  # True when no round was quiet and every round was used
    "other_load",  # median cores used by other processes during the kept samples
    "step_time_min",
    "step_time_max",
)

# Published ImageNet-1K top-1 of timm peers used in the Pareto plot (the figures listed in
# shared/research/perf_baseline.md); fastvits models carry theirs in each family's IMAGENET_TOP1 table.
PEER_TOP1: dict[str, float] = {
    "deit_small_patch16_224": 79.9,
    "efficientvit_b2": 82.2,
    "efficientformerv2_s2": 82.2,
    "repvit_m1_5": 82.4,
    "tiny_vit_11m_224": 81.5,
    "tiny_vit_21m_224": 83.3,
    "convnext_tiny": 82.1,
    "gcvit_xtiny": 82.0,
    "resnet50": 80.4,
    "regnety_040": 82.3,
    "fastvit_sa12": 80.8,
    "caformer_s18": 83.7,
    "pvt_v2_b2": 82.1,
    "swin_tiny_patch4_window7_224": 81.4,
}


def official_top1(name: str) -> float | None:
    """The official ImageNet top-1 of a model name (fastvits, official alias or a known timm peer), or None.

    fastvits' any-resolution names share the weights, and so the top-1, of their fixed-resolution namesakes.
    """
    from ..models.fastervit import IMAGENET_TOP1 as FASTERVIT_TOP1
    from ..models.litv2 import IMAGENET_TOP1 as LITV2_TOP1
    from ..registry import resolve_name

    arch = resolve_name(name).split(".")[0]
    top1 = {**FASTERVIT_TOP1, **LITV2_TOP1}
    if arch.endswith("_any_res"):
        base = arch.removesuffix("_any_res")
        arch = base if base in top1 else f"{base}_224"
    if arch in top1:
        return top1[arch]
    return PEER_TOP1.get(arch)


# ------------------------------------------------------------------------------------------------ screen


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return str(value) if spec == "s" else format(value, spec)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table of the rows, one line each, in run order."""
    cols = [
        ("model", "model", 24, "s"),
        ("impl", "impl", 8, "s"),
        ("backend", "backend", 18, "s"),
        ("precision", "prec", 5, "s"),
        ("infer_batch_size", "bs", 4, "d"),
        ("infer_img_size", "size", 8, "s"),
        ("infer_samples_per_sec", "img/s", 8, ".2f"),
        ("infer_step_time", "ms/step", 9, ".1f"),
        ("infer_mem_mb", "mem MB", 8, ".0f"),
        ("page_faults", "faults", 7, ".0f"),
        ("infer_gmacs", "GMACs", 6, ".2f"),
        ("param_count", "params M", 8, ".2f"),
        ("roof_frac", "roof", 5, ".0%"),
        ("speedup", "speedup", 7, ".2f"),
        ("max_abs_diff", "max diff", 8, ".1e"),
        ("rounds_kept", "quiet", 6, "s"),
    ]
    lines = [" ".join(f"{title:<{w}}" if i < 5 else f"{title:>{w}}" for i, (_, title, w, _) in enumerate(cols))]
    for row in rows:
        cells = []
        for i, (key, _, w, spec) in enumerate(cols):
            value = row.get(key)
            if key == "rounds_kept":
                text = f"{value}/{row.get('rounds_run')}" + ("!" if row.get("noisy") else "")
            else:
                text = _fmt(value, spec)
            cells.append(f"{text:<{w}}" if i < 5 else f"{text:>{w}}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def print_table(rows: Sequence[dict[str, Any]], file: TextIO = sys.stdout) -> None:
    print(format_table(rows), file=file)


# ------------------------------------------------------------------------------------------------- files


def _csv_value(key: str, value: Any) -> Any:
    if value is None:
        return ""
    rounding = {"infer_samples_per_sec": 2, "infer_step_time": 3, "param_count": 2, "infer_gmacs": 3}
    if isinstance(value, float):
        return round(value, rounding.get(key, 4)) if key != "max_abs_diff" else f"{value:.3e}"
    return value


def write_csv(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """One line per row, CSV_COLUMNS in order (timm's columns first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(k, row.get(k)) for k in CSV_COLUMNS})
    return path


def write_json(path: str | Path, **content: Any) -> Path:
    """Everything of a run (machine, command, settings, rows with their per-round samples, comparisons)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1, default=str) + "\n")
    return path


def print_results(results: Any, file: TextIO = sys.stdout) -> None:
    """A run (`suite.BenchResults`) on screen: machine line, table, comparisons, notes."""
    m = results.machine
    roof = m.get("roof_gflops")
    roofs = ", ".join(f"{p} {r:.1f}" for p, r in (m.get("roofs") or {}).items() if r)
    print(
        f"\n{m['cpu']} ({m['cpu_count']} cores; {' '.join(m.get('isa', []))}), {m['torch_threads']} threads, "
        f"torch {m['torch']}, {m.get('gpu', 'cpu')}, {m.get('allocator', 'allocator unknown')}"
        + (f", GEMM roof {roofs} G(FL)OP/s" if roofs else ""),
        file=file,
    )
    print(format_table(results.rows), file=file)
    for c in results.comparisons:
        where = f"{c['model']} {c['infer_img_size']} bs {c['infer_batch_size']}"
        if c["kind"] == "precision vs fp32":
            print(f"{where}: best {c['precision']}, {c['best']} vs best fp32 {c['best_fp32']}: {c['speedup']:.2f}x",
                  file=file)
            continue
        eager = f"; eager vs eager {c['eager_speedup']:.2f}x" if c.get("eager_speedup") else ""
        print(
            f"{where} {c['precision']}: best of each, {c['best_fastvits']} vs {c['best_official']}: "
            f"{c['best_speedup']:.2f}x{eager}",
            file=file,
        )
    if any(r["noisy"] for r in results.rows):
        print("! no quiet round for these rows: the machine was busy, figures are unreliable", file=file)
    if len(results.rows) > 1 or roof:
        print(
            "speedup: median of per-round time ratios against speedup_vs (official same backend, else the "
            "first backend); roof: achieved GFLOP/s (fastvits GMACs) / GEMM roof; quiet: rounds kept / run",
            file=file,
        )
    for note in results.notes:
        print(f"note: {note}", file=file)


def save_results(results: Any, out: str | Path, name: str = "bench", command: list[str] | None = None) -> list[Path]:
    """NAME.csv, NAME.json and (when a row has a top-1) NAME_pareto.png in `out`."""
    out = Path(out)
    paths = [
        write_csv(results.rows, out / f"{name}.csv"),
        write_json(out / f"{name}.json", command=command or sys.argv, **results.to_dict()),
    ]
    png = plot_pareto(results.rows, out / f"{name}_pareto.png")
    if png:
        paths.append(png)
    return paths


# ------------------------------------------------------------------------------------------------- plots


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both throughput (x) and accuracy (y), by x."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best_y = [], -math.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Throughput against official ImageNet top-1, at the largest batch size in `rows`.

    One point per model, implementation and image size: its fastest backend. Models without a
    known top-1 are left out; returns None when none has one.
    """
    rows = [r for r in rows if r.get("top1") is not None and r.get("infer_samples_per_sec")]
    if not rows:
        return None
    bs = max(r["infer_batch_size"] for r in rows)
    best: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["model"], r["impl"], r["infer_img_size"])
        if r["infer_batch_size"] == bs and (
            key not in best or r["infer_samples_per_sec"] > best[key]["infer_samples_per_sec"]
        ):
            best[key] = r
    rows = list(best.values())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"fastvits": "tab:red", "official": "tab:blue", "timm": "tab:gray"}
    points = [(r["infer_samples_per_sec"], r["top1"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for impl in dict.fromkeys(r["impl"] for r in rows):
        sel = [i for i, r in enumerate(rows) if r["impl"] == impl]
        ax.scatter(
            [points[i][0] for i in sel], [points[i][1] for i in sel], label=impl, color=colors.get(impl), zorder=3
        )
    for (x, y), r in zip(points, rows):
        label = r["model"] if r["backend"] == "eager" else f"{r['model']} ({r['backend']})"
        below = r["impl"] == "official"  # the same top-1 as fastvits' point: label it underneath
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, -10 if below else 4), fontsize=7)
    front = pareto_front(points)
    ax.step(
        [points[i][0] for i in front],
        [points[i][1] for i in front],
        where="post",
        color="black",
        lw=0.8,
        alpha=0.5,
        label="Pareto front",
        zorder=2,
    )
    first = rows[0]
    ax.set_xlabel(f"throughput (img/s), batch {bs}, {first.get('precision')}, {first.get('device')}")
    ax.set_ylabel("ImageNet-1K top-1 (%)")
    ax.set_title(title or "throughput vs official top-1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
