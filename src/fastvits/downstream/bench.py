"""`fastvits bench detection`: detection backbones at detection input sizes.

Times each backbone's four-level pyramid (optionally with the FPN the detectors put on it) at 800x1333 by
default, all models round-robin on the same input with `fastvits.bench`'s load-aware timing, and writes
the usual bench table (CSV with timm's columns, JSON). FasterViT and LITv2 run any size as built; timm
models that fix their input size (Swin) are built for each size.

Examples:
    fastvits bench detection --out results/detection_backbones
    fastvits bench detection fastervit_0_any_res convnext_tiny --img-size 800x1333 640x640 --neck fpn
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ..argtypes import json_object
from ..bench.backends import BackendSpec, is_fastvits_model, prepare_runner
from ..bench.cli import add_mode, add_output_arguments, add_settings_arguments, parse_size, settings_from_args
from ..bench.measure import machine_info
from ..bench.report import print_table, write_csv, write_json
from ..bench.suite import BenchSettings, Entry, expand_models, gmacs_and_params, measure_group, size_text
from ..registry import resolve_name
from .backbone import BackboneConfig, BackboneWithFPN, build_backbone

DEFAULT_MODELS = ("fastervit_0_any_res", "litv2_s", "swin_tiny_patch4_window7_224", "convnext_tiny")
DEFAULT_SIZE = "800x1333"


class PyramidProbe(nn.Module):
    """A backbone (+ FPN) whose output is the mean of every pyramid map, (B, levels).

    The bench harness keeps one tensor per call and compares shapes across runners; a per-level mean is
    small, has the same shape for every model, and keeps every level live so a compiler cannot drop one.
    """

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x)
        maps = features.values() if isinstance(features, OrderedDict) else features
        return torch.stack([f.float().mean((1, 2, 3)) for f in maps], dim=1)


def build_probe(name: str, size: tuple[int, int], neck: str, model_kwargs: dict[str, Any]) -> nn.Module:
    """The backbone of `name` for inputs of `size`, with the R-CNN FPN (256 channels, P2-P6) if `neck == "fpn"`."""
    kwargs = dict(model_kwargs)
    if not is_fastvits_model(name) and timm.models.get_pretrained_cfg(resolve_name(name)).fixed_input_size:
        kwargs["img_size"] = size  # Swin-style models bake the input size into their position tables
    backbone = build_backbone(BackboneConfig(name, kwargs=kwargs))
    if neck == "fpn":
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        backbone = BackboneWithFPN(backbone, 256, LastLevelMaxPool())
    return PyramidProbe(backbone).eval()


def bench_backbones(
    models: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    batch_size: int,
    neck: str,
    spec: BackendSpec,
    settings: BenchSettings,
    model_kwargs: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """One bench row per model and size; the models of a size are timed interleaved on one input.

    Args:
        model_kwargs: Constructor kwargs per model name (tiny configurations for smoke runs).
    """
    device = torch.device(settings.device)
    gen = torch.Generator().manual_seed(settings.seed)
    rows = []
    for size in sizes:
        entries = []
        for name in models:
            probe = build_probe(name, size, neck, model_kwargs.get(name, {}))
            gmacs, params = gmacs_and_params(probe, size, device)
            runner = prepare_runner(
                probe,
                "fastvits" if is_fastvits_model(name) else "timm",
                spec,
                torch.randn(1, 3, *size),
                device=device,
                precision=settings.precision,
                threads=settings.threads,
            )
            entries.append(Entry(name, runner, gmacs, params))
        print(f"{size_text(size)}: {', '.join(e.key for e in entries)}", file=sys.stderr)
        group, _ = measure_group(entries, torch.randn(batch_size, 3, *size, generator=gen), settings)
        for row in group:  # different models: speedups and output differences between them mean nothing
            row.update(speedup=None, speedup_vs=None, max_abs_diff=None, diff_vs=None, neck=neck)
        rows += group
        for e in entries:
            e.runner.close()
    return rows


def plot_rows(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Bar chart of milliseconds per image, one group of bars per input size."""
    from matplotlib.figure import Figure

    sizes = list(dict.fromkeys(str(r["infer_img_size"]) for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig = Figure(figsize=(2 + 1.6 * len(sizes) * len(models) / 2, 4.5))
    ax = fig.add_subplot()
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        ms = {
            str(r["infer_img_size"]): r["infer_step_time"] / r["infer_batch_size"] for r in rows if r["model"] == model
        }
        xs = [j + i * width for j, s in enumerate(sizes) if s in ms]
        bars = ax.bar(xs, [ms[s] for s in sizes if s in ms], width, label=model)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sizes))], sizes)
    first = rows[0]
    ax.set_ylabel(f"ms per image (batch {first['infer_batch_size']}, {first['precision']}, {first['device']})")
    ax.set_title(f"detection backbones{' + FPN' if first.get('neck') == 'fpn' else ''}: lower is faster")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="*", default=list(DEFAULT_MODELS), help="fastvits or timm names, wildcards allowed")
    p.add_argument("--img-size", type=parse_size, nargs="+", default=[parse_size(DEFAULT_SIZE)], help="HxW sizes")
    p.add_argument("-b", "--batch-size", type=int, default=1)
    p.add_argument("--neck", choices=("none", "fpn"), default="none", help="time the backbone alone or with its FPN")
    p.add_argument("--backend", default="eager", help="eager, compile, with +cl for channels_last")
    p.add_argument(
        "--model-kwargs",
        type=json_object,
        default={},
        help='constructor kwargs per model as JSON, e.g. \'{"litv2_s": {"embed_dim": 32}}\'',
    )
    add_settings_arguments(p)
    p.set_defaults(device="cuda" if torch.cuda.is_available() else "cpu")
    add_output_arguments(p, "detection_backbones")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_from_args(args, roof=0)
    models = expand_models(args.models)
    rows = bench_backbones(
        models, args.img_size, args.batch_size, args.neck, BackendSpec.parse(args.backend), settings, args.model_kwargs
    )
    print_table(rows)
    if args.out:
        write_csv(rows, args.out / f"{args.name}.csv")
        write_json(
            args.out / f"{args.name}.json",
            command=sys.argv,
            machine=machine_info(args.device),
            settings=vars(args) | dict(out=str(args.out)),
            rows=rows,
        )
        plot_rows(rows, args.out / f"{args.name}.png")
        print(f"wrote {args.out}/{args.name}.{{csv,json,png}}")
    return 0


def register(modes: argparse._SubParsersAction) -> None:
    """Adds the `detection` mode to `fastvits bench`."""
    help = "detection backbones at 800x1333 against Swin-T and ConvNeXt-T"
    add_mode(modes, "detection", help, __doc__, add_arguments, run)
