"""Resolution sweep: time and memory per image of FasterViT-0 against timm's Swin-T and DeiT-S.

One fastvits `fastervit_0_any_res` instance serves every size (the model is dynamic); the timm
models (and the official FasterViT with --compare-official) are built for each size, as they
must be. At each size all models run round-robin on the same input. The fitted exponent is the
slope of log(time per image) against log(pixels) over the square sizes (least squares), overall
and from 448 px up; issue 4's target for FasterViT is at most 1.15.

    python benchmarks/bench_resolution_sweep.py --threads 2 --out results/resolution_sweep
    python benchmarks/bench_resolution_sweep.py --sizes 224 448 --rounds 1      # quick look
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from fastvits.bench.backends import (
    BackendSpec,
    OfficialUnavailable,
    build_model,
    build_official,
    copy_weights_to_official,
    prepare_runner,
)
from fastvits.bench.cli import parse_size
from fastvits.bench.measure import machine_info
from fastvits.bench.report import write_csv, write_json
from fastvits.bench.suite import BenchSettings, Entry, gmacs_and_params, measure_group, size_text

DEFAULT_SIZES = ["224", "320", "448", "512", "640", "768", "896", "1024", "576x960"]
DEFAULT_MODELS = ["fastervit_0_any_res", "swin_tiny_patch4_window7_224", "deit_small_patch16_224"]
EXPONENT_TARGET = 1.15


def fit_exponent(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) against log(x)."""
    if len(points) < 2:
        return None
    lx = [math.log(x) for x, _ in points]
    ly = [math.log(y) for _, y in points]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / den if den else None


def exponents(rows: list[dict]) -> list[dict]:
    """Per model and implementation: time and MAC exponents over all square sizes and from 448 px up."""
    out = []
    for key in dict.fromkeys((r["model"], r["impl"]) for r in rows):
        sel = [r for r in rows if (r["model"], r["impl"]) == key and isinstance(r["infer_img_size"], int)]
        sel.sort(key=lambda r: r["infer_img_size"])
        pts = [(r["infer_img_size"] ** 2, r["infer_step_time"] / r["infer_batch_size"]) for r in sel]
        macs = [(r["infer_img_size"] ** 2, r["infer_gmacs"]) for r in sel if r["infer_gmacs"]]
        big = [p for p, r in zip(pts, sel) if r["infer_img_size"] >= 448]
        span = f"{sel[0]['infer_img_size']}-{sel[-1]['infer_img_size']}" if sel else "-"
        out.append(
            {
                "model": key[0],
                "impl": key[1],
                "span": span,
                "time_exponent": fit_exponent(pts),
                "time_exponent_448_up": fit_exponent(big),
                "macs_exponent": fit_exponent(macs),
            }
        )
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for key in dict.fromkeys((r["model"], r["impl"]) for r in rows):
        sel = sorted((r for r in rows if (r["model"], r["impl"]) == key), key=lambda r: r["infer_gmacs"] or 0)
        sq = [r for r in sel if isinstance(r["infer_img_size"], int)]
        px = [r["infer_img_size"] ** 2 / 1e6 for r in sq]
        (line,) = ax.plot(
            px, [r["infer_step_time"] / r["infer_batch_size"] for r in sq], marker="o", label=f"{key[0]} ({key[1]})"
        )
        for r in sel:
            if not isinstance(r["infer_img_size"], int):
                h, w = (int(v) for v in r["infer_img_size"].split("x"))
                ax.scatter(
                    [h * w / 1e6],
                    [r["infer_step_time"] / r["infer_batch_size"]],
                    marker="x",
                    s=60,
                    color=line.get_color(),
                    zorder=3,
                )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("megapixels per image (x: non-square sizes such as 576x960)")
    ax.set_ylabel("ms per image")
    ax.set_title("time per image against input size (log-log)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES)
    p.add_argument(
        "--models", nargs="+", default=DEFAULT_MODELS, help="the first is the fastvits model; the others are timm peers"
    )
    p.add_argument("--compare-official", action="store_true", help="add the official faster_vit_0_any_res")
    p.add_argument("--backend", default="eager", help="backend spec for every model (eager, eager+reparam, ...)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--max-load", type=float, default=0.2)
    p.add_argument(
        "--model-kwargs", type=json.loads, default={}, help="JSON kwargs for the fastvits model (smoke tests)"
    )
    p.add_argument("--out", type=Path, default=Path("results/resolution_sweep"))
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = BackendSpec.parse(args.backend)
    settings = BenchSettings(
        device=args.device, threads=args.threads, rounds=args.rounds, warmup=args.warmup, max_load=args.max_load, roof=0
    )
    sizes = [parse_size(s) for s in args.sizes]
    ours_name, peers = args.models[0], args.models[1:]
    _, ours = build_model(ours_name, model_kwargs=args.model_kwargs)
    rows, notes = [], []
    gen = torch.Generator().manual_seed(0)
    for size in sizes:
        models = [(ours_name, "fastvits", ours)]
        if args.compare_official:
            try:
                official = build_official(ours_name, size, args.model_kwargs)
                copy_weights_to_official(ours, official)
                models.append((ours_name, "official", official))
            except RuntimeError as e:  # the official code cannot run every size: say so and go on
                if isinstance(e, OfficialUnavailable) and "not installed" in str(e):
                    print(f"bench_resolution_sweep: {e}", file=sys.stderr)
                    return 2
                notes.append(f"official {ours_name} at {size_text(size)}: {type(e).__name__}: {e}")
                print(f"note: {notes[-1]}", file=sys.stderr)
        for name in peers:
            models.append((name, "timm", build_model(name, size)[1]))
        entries = []
        for name, impl, model in models:
            gmacs, params = gmacs_and_params(model, size, device)
            runner = prepare_runner(model, impl, spec, torch.randn(1, 3, *size), device=device, threads=args.threads)
            entries.append(Entry(name, runner, gmacs, params))
        x = torch.randn(args.batch_size, 3, *size, generator=gen)
        print(f"{size_text(size)}: {', '.join(e.key for e in entries)}", file=sys.stderr)
        group, _ = measure_group(entries, x, settings)
        for r in group:  # different models: no speedups or output diffs between them
            r.update(speedup=None, speedup_vs=None, max_abs_diff=None, diff_vs=None)
        rows += group
        for e in entries:
            e.runner.close()

    print(f"\n{'model':<30} {'impl':<9} {'size':>8} {'ms/img':>9} {'MB/img':>8} {'GMACs':>7} {'quiet':>6}")
    for r in rows:
        mem = r["infer_mem_mb"] / r["infer_batch_size"] if r["infer_mem_mb"] is not None else float("nan")
        print(
            f"{r['model']:<30} {r['impl']:<9} {r['infer_img_size']!s:>8} "
            f"{r['infer_step_time'] / r['infer_batch_size']:>9.1f} {mem:>8.0f} {r['infer_gmacs']:>7.2f} "
            f"{r['rounds_kept']:>3}/{r['rounds_run']}" + ("!" if r["noisy"] else "")
        )
    fits = exponents(rows)
    print()
    for f in fits:
        t, t448, m = f["time_exponent"], f["time_exponent_448_up"], f["macs_exponent"]
        verdict = ""
        if f["impl"] == "fastvits" and t is not None:
            verdict = f"  ({'pass' if t <= EXPONENT_TARGET else 'FAIL'}, target <= {EXPONENT_TARGET})"
        fmt = lambda v: "-" if v is None else f"{v:.2f}"
        print(
            f"{f['model']} ({f['impl']}), {f['span']} px: time exponent {fmt(t)}, from 448 px {fmt(t448)}, "
            f"MACs exponent {fmt(m)}{verdict}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "resolution_sweep.csv")
    write_json(
        args.out / "resolution_sweep.json",
        command=sys.argv,
        machine=machine_info(device),
        rows=rows,
        exponents=fits,
        notes=notes,
    )
    plot(rows, args.out / "resolution_sweep.png")
    print(f"wrote {args.out}/resolution_sweep.{{csv,json,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
