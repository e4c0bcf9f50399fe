"""`fastvits bench attention`: single 2-D attention layers, timed against each other.

The LITv2 setting by default: one layer on a 14 x 14 map (196 tokens) of 768 channels with 12 heads,
batch 64, for global attention (MSA), Swin's window attention (W-MSA, window 7), PVT's spatial-reduction
attention (SRA, sr_ratio 2: PVT's ratio at stride 16, the 14 x 14 stage of a 224 image), HiLo (alpha 0.9,
window 2) and HAT (window 7, 2 x 2 carrier tokens per window, one attention-only block). Several `--sizes`
make a resolution sweep. Each layer keeps its configuration at every size (a layer applied to a larger
map, as in dense prediction), so global attention and SRA grow quadratically.

Per layer and size: GMACs per map (`torch.utils.flop_counter` on the plain attention path, since it does
not count the fused CPU attention kernels), throughput, peak memory and the time
relative to `--baseline` (paired per round), all layers of a size timed round-robin with `fastvits.bench`'s
load-aware timing. Configurations above `--max-gflop` of work per call are skipped with a note (global
attention on 112 x 112 tokens at batch 64 would take minutes per call on a CPU); the sweep in
docs/attention.md reduces the batch instead.

Examples:
    fastvits bench attention --out results/attention
    fastvits bench attention --sizes 14 28 56 112 -b 1 --name sweep --out results/attention
    fastvits bench attention --kinds hilo sra --dim 384 --heads 6 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..argtypes import positive_int
from ..inference import optimize_for_inference
from ..layers import ATTENTION_2D, Attention2d, create_attention2d
from .backends import BackendSpec, BenchError, prepare_runner
from .cli import add_mode, add_output_arguments, add_settings_arguments, parse_size, settings_from_args
from .measure import machine_info, model_gmacs
from .report import print_table, write_csv, write_json
from .suite import BenchSettings, Entry, measure_group, size_text

__all__ = ["LayerSpec", "bench_attention", "layer_gmacs", "layer_specs", "plot_attention", "register", "summarize"]


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the benchmark: a registry kind with its constructor arguments and a table label."""

    kind: str
    kwargs: dict[str, Any]
    label: str

    def build(self, dim: int, num_heads: int) -> Attention2d:
        return create_attention2d(self.kind, dim, num_heads, **self.kwargs)


def layer_specs(
    kinds: Sequence[str], window: int = 7, sr_ratio: int = 2, hilo_window: int = 2, alpha: float = 0.9, ct_size: int = 2
) -> list[LayerSpec]:
    """The benchmark's layers in `kinds` order (defaults: the LITv2 comparison, plus HAT)."""
    table = {
        "global": LayerSpec("global", {}, "global (MSA)"),
        "window": LayerSpec("window", {"window_size": window}, f"window w{window} (W-MSA)"),
        "sra": LayerSpec("sra", {"sr_ratio": sr_ratio}, f"SRA r{sr_ratio}"),
        "hilo": LayerSpec("hilo", {"window_size": hilo_window, "alpha": alpha}, f"HiLo s{hilo_window} a{alpha}"),
        "hat": LayerSpec("hat", {"window_size": window, "ct_size": ct_size}, f"HAT w{window} c{ct_size}"),
    }
    return [table[k] for k in kinds]


def layer_gmacs(layer: Attention2d, dim: int, size: tuple[int, int]) -> float:
    """Multiply-accumulates (billions) of one call on one map (`model_gmacs`), counted on the meta device, where
    the attention matrices (7.5 GB for global attention on 112 x 112 tokens) cost no memory and no time."""
    return model_gmacs(copy.deepcopy(layer).to("meta"), torch.empty(1, dim, *size, device="meta"))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_attention(
    specs: Sequence[LayerSpec],
    dim: int,
    num_heads: int,
    sizes: Sequence[tuple[int, int]],
    batch_size: int,
    settings: BenchSettings,
    max_gflop: float,
) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, notes): one row per layer and map size; skipped layers get a row without timings and a note.

    The first spec is the baseline of the `speedup` column (its time / the row's time, paired per round).
    """
    device = torch.device(settings.device)
    gen = torch.Generator().manual_seed(settings.seed)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for size in sizes:
        entries, labels, skipped = [], {}, []
        x1 = torch.randn(1, dim, *size, generator=gen).to(device)
        for spec in specs:
            torch.manual_seed(settings.seed)
            layer = spec.build(dim, num_heads).to(device).eval()
            gmacs = layer_gmacs(layer, dim, size)
            params = sum(p.numel() for p in layer.parameters())
            gflop = 2 * gmacs * batch_size
            if gflop > max_gflop:
                notes.append(f"{spec.label} at {size_text(size)}: skipped, {gflop:.3g} GFLOP per call > --max-gflop")
                skipped.append(
                    {
                        "model": spec.label,
                        "infer_img_size": size_text(size),
                        "infer_batch_size": batch_size,
                        "infer_gmacs": gmacs,
                        "param_count": params / 1e6,
                        "tokens": size[0] * size[1],
                        "impl": "fastvits",
                        "backend": "skipped >max-gflop",
                        "rounds_kept": 0,
                        "rounds_run": 0,
                    }
                )
                continue
            runner = prepare_runner(  # every layer as fastvits runs it at inference
                optimize_for_inference(layer), spec.label, BackendSpec(), x1, device=device,
                precision=settings.precision, threads=settings.threads,
            )
            labels[runner.name] = spec.label
            entries.append(Entry(f"attention {size_text(size)}", runner, gmacs, params))
        if entries:
            _log(f"{size_text(size)} tokens, batch {batch_size}: {', '.join(labels.values())}")
            x = torch.randn(batch_size, dim, *size, generator=gen)
            group, _ = measure_group(entries, x, settings, log=_log)
            for row in group:  # the harness names rows by group and runner: name them by layer
                row.update(
                    model=row["impl"],  # the runner's impl is the layer's label
                    impl="fastvits",
                    speedup_vs=labels.get(row["speedup_vs"]),
                    max_abs_diff=None,  # different layers: their outputs are not meant to agree
                    diff_vs=None,
                    tokens=size[0] * size[1],
                )
            rows += group
            for e in entries:
                e.runner.close()
        rows += skipped
    return rows, notes


def summarize(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per measured row against the baseline: how many times faster the baseline is."""
    return [
        f"{r['speedup_vs']} vs {r['model']} at {r['infer_img_size']}: {1 / r['speedup']:.2f}x as fast"
        for r in rows
        if r.get("speedup")
    ]


def plot_attention(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Time, GFLOPs and peak memory per map against tokens (lines), or per layer at a single size (bars)."""
    from matplotlib.figure import Figure

    measured = [r for r in rows if r.get("infer_step_time") is not None]
    layers = list(dict.fromkeys(r["model"] for r in rows))
    panels = [
        ("ms per map", lambda r: r["infer_step_time"] / r["infer_batch_size"], measured),
        ("GFLOPs per map", lambda r: 2 * r["infer_gmacs"], rows),
        ("peak memory (MB)", lambda r: r.get("infer_mem_mb"), measured),
    ]
    fig = Figure(figsize=(15, 4.5))
    axes = fig.subplots(1, 3)
    sizes = {r["tokens"]: str(r["infer_img_size"]) for r in rows}  # tokens -> grid label
    sweep = len(sizes) > 1
    for ax, (title, value, subset) in zip(axes, panels):
        for i, layer in enumerate(layers):
            points = sorted((r["tokens"], value(r)) for r in subset if r["model"] == layer and value(r) is not None)
            if sweep and points:
                ax.plot(*zip(*points), marker="o", label=layer)
            elif points:
                ax.bar(i, points[0][1], label=layer)
        if sweep:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(list(sizes), [f"{g}\n{n}" for n, g in sizes.items()])
            ax.minorticks_off()
            ax.set_xlabel("token grid and tokens")
        else:
            ax.set_xticks(range(len(layers)), layers, rotation=20, ha="right", fontsize=7)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)  # the GFLOPs panel has every layer, skipped ones too
    first = rows[0]
    fig.suptitle(
        f"single attention layers: batch {first['infer_batch_size']}, {first.get('device', '')} "
        f"{first.get('precision', '')}, {first.get('threads', '')} threads"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    g, _ = add_settings_arguments(p)
    g.add_argument("--kinds", nargs="+", choices=list(ATTENTION_2D), default=list(ATTENTION_2D), help="layers")
    g.add_argument("--baseline", choices=list(ATTENTION_2D), default="hilo", help="the speedup column's reference")
    g.add_argument("--dim", type=positive_int, default=768, help="channels (default 768)")
    g.add_argument("--heads", type=positive_int, default=12, help="attention heads (default 12)")
    g.add_argument("--sizes", type=parse_size, nargs="+", default=[(14, 14)], help="token grids, 14 or HxW")
    g.add_argument("-b", "--batch-size", type=positive_int, default=64)
    g.add_argument("--window", type=positive_int, default=7, help="window side of W-MSA and HAT")
    g.add_argument("--sr-ratio", type=positive_int, default=2, help="SRA reduction ratio")
    g.add_argument("--hilo-window", type=positive_int, default=2, help="HiLo window / pooling size")
    g.add_argument("--alpha", type=float, default=0.9, help="HiLo's fraction of Lo-Fi heads")
    g.add_argument("--ct-size", type=positive_int, default=2, help="HAT carrier tokens per window side")
    g.add_argument("--max-gflop", type=float, default=2000.0, help="skip configurations above this work per call")
    add_output_arguments(p, "attention")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda asked but torch sees no CUDA device")
    settings = settings_from_args(args, roof=0)
    kinds = [args.baseline] + [k for k in args.kinds if k != args.baseline]
    specs = layer_specs(kinds, args.window, args.sr_ratio, args.hilo_window, args.alpha, args.ct_size)
    for spec in specs:  # the layers' own checks (head split, window sizes), before any timing
        try:
            spec.build(args.dim, args.heads)
        except ValueError as e:
            raise BenchError(f"{spec.kind} with --dim {args.dim} --heads {args.heads}: {e}") from None
    rows, notes = bench_attention(specs, args.dim, args.heads, args.sizes, args.batch_size, settings, args.max_gflop)
    machine = machine_info(args.device)
    device = machine.get("gpu", "cpu")
    print(f"\n{machine['cpu']}, {machine['torch_threads']} threads, torch {machine['torch']}, {device}")
    print_table(rows)
    summary = summarize(rows)
    for line in summary + [f"note: {n}" for n in notes]:
        print(line)
    if args.out:
        write_csv(rows, args.out / f"{args.name}.csv")
        write_json(
            args.out / f"{args.name}.json",
            command=sys.argv,
            machine=machine,
            settings=vars(args) | {"out": str(args.out), "sizes": [list(s) for s in args.sizes]},
            rows=rows,
            summary=summary,
            notes=notes,
        )
        plot_attention(rows, args.out / f"{args.name}.png")
        print(f"wrote {args.out}/{args.name}.{{csv,json,png}}")
    return 0


def register(modes: argparse._SubParsersAction) -> None:
    """Adds the `attention` mode to `fastvits bench`."""
    help = "single 2-D attention layers (MSA, W-MSA, SRA, HiLo, HAT): GMACs, throughput, memory"
    add_mode(modes, "attention", help, __doc__, add_arguments, run)
