"""fastvits against the official FasterViT, side by side in one process, same weights, same input.

For each model and batch size, every backend of both implementations is timed round-robin
(fastvits eager, official eager, fastvits onnxruntime, ...), each output is checked against
fastvits eager, and the speedups are medians of per-round ratios. The summary checks issue 4's
targets: plain eager at least 1.5x the official eager at batch 1 and 1.15x at batch 32; fastvits'
best backend at least 1.05x the official best; every figure also as a fraction of the GEMM roof.

Needs the official package next to fastvits (`pip install fastervit`, non-commercial licence).

    python benchmarks/bench_cpu_vs_official.py --threads 2 --out results/cpu_vs_official
    python benchmarks/bench_cpu_vs_official.py --models fastervit_0_224 --backends eager onnxruntime   # shorter
    python benchmarks/bench_cpu_vs_official.py --device cuda --precision bf16 --batch-sizes 1 256 \\
        --backends eager compile+reparam                                                                # GPU
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastvits.bench.backends import OfficialUnavailable, parse_backends
from fastvits.bench.cli import parse_size
from fastvits.bench.report import print_results, save_results
from fastvits.bench.suite import BenchSettings, bench_models

DEFAULT_BACKENDS = ["eager", "eager+reparam", "compile+reparam", "onnxruntime"]
EAGER_TARGET = {1: 1.5, 32: 1.15}  # issue 4, CPU, fp32
BEST_TARGET = 1.05


def _cell(row: dict | None, with_backend: bool = False) -> str:
    """`img/s (roof %)`, optionally prefixed by the backend."""
    if row is None:
        return "-"
    roof = f" ({100 * row['roof_frac']:.0f}%)" if row.get("roof_frac") else ""
    return (f"{row['backend']} " if with_backend else "") + f"{row['infer_samples_per_sec']:.1f}{roof}"


def _verdict(value: float | None, target: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" + (f" ({'pass' if value >= target else 'FAIL'}, >= {target})" if target else "")


def summary_markdown(results) -> str:
    """The result table of docs/benchmarks.md: one line per model and batch size."""
    rows = {(r["model"], r["infer_batch_size"], r["impl"], r["backend"]): r for r in results.rows}
    header = (
        "| model | bs | official eager img/s (roof) | fastvits eager img/s (roof) | eager speedup "
        "| official best | fastvits best | best speedup | max abs diff |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---|---|---:|---:|"]
    for c in results.comparisons:
        model, bs = c["model"], c["infer_batch_size"]
        best_off = rows[(model, bs, "official", c["best_official"].split(" ", 1)[1])]
        best_ours = rows[(model, bs, "fastvits", c["best_fastvits"].split(" ", 1)[1])]
        diff = max((r["max_abs_diff"] or 0.0) for k, r in rows.items() if k[:2] == (model, bs))
        official_eager, ours_eager = (
            rows.get((model, bs, "official", "eager")),
            rows.get((model, bs, "fastvits", "eager")),
        )
        noisy = " (noisy)" if any(r["noisy"] for k, r in rows.items() if k[:2] == (model, bs)) else ""
        lines.append(
            f"| {model}{noisy} | {bs} | {_cell(official_eager)} | {_cell(ours_eager)} "
            f"| {_verdict(c.get('eager_speedup'), EAGER_TARGET.get(bs))} "
            f"| {_cell(best_off, True)} | {_cell(best_ours, True)} | {_verdict(c['best_speedup'], BEST_TARGET)} "
            f"| {diff:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--models", nargs="+", default=["fastervit_0_224", "fastervit_1_224", "fastervit_2_224"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--img-size", type=parse_size, help="default: the models' own (224)")
    p.add_argument("--backends", nargs="+", default=DEFAULT_BACKENDS)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--max-load", type=float, default=0.2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--onnx-exporter", default="auto", choices=("auto", "fastvits", "torchscript"))
    p.add_argument("--model-kwargs", type=json.loads, default={}, help="JSON model kwargs (smoke tests)")
    p.add_argument("--roof", type=float, help="GEMM roof GFLOP/s (default: measured at the start)")
    p.add_argument("--out", type=Path, default=Path("results/cpu_vs_official"))
    args = p.parse_args(argv)

    settings = BenchSettings(
        models=args.models,
        batch_sizes=args.batch_sizes,
        img_sizes=[args.img_size] if args.img_size else None,
        precision=args.precision,
        backends=parse_backends(args.backends),
        compare_official=True,
        device=args.device,
        threads=args.threads,
        rounds=args.rounds,
        warmup=args.warmup,
        max_load=args.max_load,
        roof=args.roof,
        model_kwargs=args.model_kwargs,
        onnx_exporter=args.onnx_exporter,
    )
    try:
        results = bench_models(settings)
    except OfficialUnavailable as e:
        print(f"bench_cpu_vs_official: {e}", file=sys.stderr)
        return 2
    print_results(results)
    md = summary_markdown(results)
    print("\n" + md)
    for path in save_results(results, args.out, "cpu_vs_official"):
        print(f"wrote {path}")
    (args.out / "summary.md").write_text(md + "\n")
    print(f"wrote {args.out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
