"""`fastvits bench [MODE] ...`: measure models on this machine.

MODE picks what is measured; `models` (throughput, latency, memory, GMACs of whole models) is the
default, so `fastvits bench NAME ...` is `fastvits bench models NAME ...`. Further modes register
themselves like the top-level commands do: a module listed in `MODE_MODULES` exposes
`register(modes)` and adds its parser to `modes` (`fastvits bench detection`, `fastvits bench attention`).
Options follow the mode and model names.

Examples:
    fastvits bench fastervit_0_224 fastervit_1_224
    fastvits bench fastervit_0_224 --batch-size 1 32 --backend eager onnxruntime --compare-official
    fastvits bench 'fastervit_*_224' --img-size 224 576x960 --out results/ --threads 2
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..argtypes import json_object, non_negative_float, non_negative_int, positive_int
from ..inference.cpu_features import native_bf16
from .backends import BACKENDS, EXPORTED, ONNX_EXPORTERS, PRECISIONS, BenchError, OfficialUnavailable, parse_backends
from .report import print_results, save_results
from .suite import BenchSettings, bench_models

__all__ = [
    "MODE_MODULES",
    "add_output_arguments",
    "add_settings_arguments",
    "parse_size",
    "register",
    "run_models",
    "settings_from_args",
]

MODE_MODULES: tuple[str, ...] = ("fastvits.downstream.bench", "fastvits.bench.attention")
DEFAULT_MODE = "models"


class _ModeAction(argparse._SubParsersAction):
    """Sub-mode dispatch whose default mode takes over when the first word names no mode.

    `bench fastervit_0_224 ...` is parsed as `bench models fastervit_0_224 ...`.
    """

    class _AnyName(dict):
        def __contains__(self, name: object) -> bool:  # every word is acceptable: unknown ones go to the default
            return True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.choices = self._AnyName()

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser = super().add_parser(name, **kwargs)
        self.choices[name] = parser
        return parser

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if values and values[0] not in self._name_parser_map:
            values = [DEFAULT_MODE, *values]
        super().__call__(parser, namespace, values, option_string)


def parse_size(text: str) -> tuple[int, int]:
    """`224` -> (224, 224); `576x960` -> (576, 960) (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"image size {text!r}: write 224 or HxW such as 576x960")
    return parts[0], parts[1]


def _roof(text: str) -> float | None:
    if text == "auto":
        return None
    if text == "off":
        return 0.0
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--roof {text!r}: auto, off or GFLOP/s") from None


# the BenchSettings fields that every mode takes from its options of the same name (`add_settings_arguments`)
_SHARED_SETTINGS = (
    "precision", "device", "threads", "seed", "rounds", "max_rounds", "warmup", "sample_time", "max_load", "memory",
)


def add_settings_arguments(p: argparse.ArgumentParser) -> tuple[argparse._ArgumentGroup, argparse._ArgumentGroup]:
    """The options of every bench mode that `settings_from_args` reads, in the groups "what to run" and "how to
    measure"; returns both groups for the mode's own options."""
    g = p.add_argument_group("what to run")
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        nargs="+",
        default=["fp32"],
        help="fp32, bf16 (fastvits: the engine's bf16 form; others: autocast), fp16 (autocast), int8 (onnxruntime "
        "and openvino backends); several are timed interleaved (`bench models`). This CPU: "
        + (f"native bf16 ({native_bf16()})" if native_bf16() else "no native bf16, emulated: bf16 is slow here"),
    )
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    g.add_argument("--threads", type=positive_int, help="torch (and onnxruntime) threads (default: torch's default)")
    g.add_argument("--seed", type=int, default=0)
    m = p.add_argument_group("how to measure")
    m.add_argument("--rounds", type=positive_int, default=5, help="quiet interleaved rounds wanted (default 5)")
    m.add_argument(
        "--max-rounds", type=positive_int, help="give up waiting for quiet rounds after this many (default 2x --rounds)"
    )
    m.add_argument("--warmup", type=non_negative_int, default=2, help="untimed calls per runner first (default 2)")
    m.add_argument(
        "--sample-time",
        type=non_negative_float,
        default=0.3,
        help="seconds per timed sample: short calls are repeated (default 0.3)",
    )
    m.add_argument(
        "--max-load",
        type=float,
        default=0.2,
        help="CPU cores of other processes above which a sample is noisy and left out (default 0.2)",
    )
    m.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory probe")
    return g, m


def add_output_arguments(
    p: argparse.ArgumentParser, name: str, files: str = "NAME.csv, NAME.json and NAME.png"
) -> None:
    """--out (the folder for `files`) and --name (their stem, default `name`) of a bench mode."""
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, help=f"folder for {files}")
    o.add_argument("--name", default=name, help=f"file name stem in --out (default {name})")


def settings_from_args(args: argparse.Namespace, several_precisions: bool = False, **overrides: Any) -> BenchSettings:
    """The `BenchSettings` of a bench mode: the options `add_settings_arguments` added, updated with `overrides`
    (the mode's own fields, such as `roof=0` for no GEMM roof). Only a mode that says `several_precisions` takes
    more than one --precision."""
    if len(args.precision) > 1 and not several_precisions:
        raise BenchError(f"this mode times one precision at a time, got --precision {' '.join(args.precision)}; "
                         "run it once per precision, or use `fastvits bench models`")
    shared = {name: getattr(args, name) for name in _SHARED_SETTINGS} | {"precision": args.precision[0]}
    if several_precisions:
        shared["precisions"] = list(dict.fromkeys(args.precision))
    return BenchSettings(**shared | overrides)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "models",
        nargs="*",
        default=["fastervit_0_224"],
        help="fastvits or timm model names, wildcards allowed (default fastervit_0_224)",
    )
    g, m = add_settings_arguments(p)
    g.add_argument(
        "-b", "--batch-size", type=positive_int, nargs="+", help="batch sizes (default 1 32 on CPU, 1 256 on CUDA)"
    )
    g.add_argument(
        "--img-size", type=parse_size, nargs="+", help="image sizes, 224 or HxW (default: each model's own input size)"
    )
    g.add_argument(
        "--backend",
        nargs="+",
        default=["eager"],
        metavar="SPEC",
        help=f"one or more of {', '.join(BACKENDS)}, each optionally with +cl (channels_last), "
        "+reparam (fold for inference), +plain (fastvits' fast paths off, for A/B runs), +freeze (compile only: "
        "inductor freezing), "
        "e.g. eager eager+plain compile+reparam onnxruntime; several are timed interleaved",
    )
    g.add_argument("--channels-last", action="store_true", help="add +cl to every torch backend")
    g.add_argument("--compile", action="store_true", help="torch.compile: eager becomes compile")
    g.add_argument("--compile-mode", default=None, help="torch.compile mode (default, max-autotune, ...)")
    g.add_argument(
        "--onnx-exporter",
        choices=ONNX_EXPORTERS,
        default="auto",
        help="fastvits: fastvits.export (dynamo, dynamic batch); torchscript: torch.onnx.export "
        "per batch size; auto: fastvits when available",
    )
    g.add_argument("--reparam", action="store_true", help="add +reparam to every backend")
    g.add_argument("--calibration", default="fashion-mnist", metavar="DATA",
                   help="int8: calibration images, fashion-mnist[:FOLDER] or an image folder (default fashion-mnist)")
    g.add_argument("--calibration-images", type=positive_int, default=64, help="int8: how many (default 64)")
    g.add_argument(
        "--compare-official",
        action="store_true",
        help="also run the official FasterViT package (pip install fastervit) with the same weights, "
        "interleaved with fastvits",
    )
    g.add_argument("--model-kwargs", type=json_object, default={}, help="JSON kwargs for the model constructors")
    g.add_argument("--checkpoint", help="weights for the fastvits model (official .pth.tar or safetensors)")
    m.add_argument(
        "--roof",
        type=_roof,
        default=None,
        metavar="{auto,off,GFLOPS}",
        help="GEMM roof for the roof fraction: measured (auto, default), off, or a figure",
    )
    add_output_arguments(p, "bench", "NAME.csv (timm columns), NAME.json and NAME_pareto.png")


def _models_settings(args: argparse.Namespace) -> BenchSettings:
    try:
        backends = parse_backends(
            args.backend, compile=args.compile, channels_last=args.channels_last, reparam=args.reparam
        )
    except ValueError as e:
        raise BenchError(str(e)) from None
    if args.device == "cuda" and any(s.backend in EXPORTED for s in backends):
        raise BenchError("the onnxruntime and openvino backends run on the CPU only (--device cpu)")
    return settings_from_args(
        args,
        several_precisions=True,
        models=list(args.models),
        batch_sizes=args.batch_size,
        img_sizes=args.img_size,
        backends=backends,
        compare_official=args.compare_official,
        roof=args.roof,
        model_kwargs=args.model_kwargs,
        checkpoint=args.checkpoint,
        compile_mode=args.compile_mode,
        onnx_exporter=args.onnx_exporter,
        calibration=args.calibration,
        calibration_images=args.calibration_images,
    )


def run_models(args: argparse.Namespace) -> int:
    settings = _models_settings(args)
    try:
        results = bench_models(settings)
    except OfficialUnavailable as e:
        print(f"fastvits bench --compare-official: {e}", file=sys.stderr)
        return 2
    print_results(results)
    if args.out:
        for path in save_results(results, args.out, args.name):
            print(f"wrote {path}")
    return 0


def add_mode(
    modes: argparse._SubParsersAction,
    name: str,
    help: str,
    doc: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """A `fastvits bench` mode whose --help shows its module docstring `doc`: the first paragraph as description,
    the text after "Examples:" as epilog."""
    parser = modes.add_parser(
        name,
        help=help,
        description=doc.split("\n\n", 1)[0],
        epilog=doc.split("Examples:", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench",
        help="throughput, latency, memory and GMACs of models on this machine",
        usage="fastvits bench [MODE] [NAME ...] [options]",
        description="Measure on this machine. `fastvits bench NAME ...` is short for `fastvits bench models NAME ...`.",
    )
    modes = bench.add_subparsers(
        dest="bench_mode",
        metavar="MODE",
        action=_ModeAction,
    )
    models = add_mode(
        modes,
        DEFAULT_MODE,
        "throughput, batch-1 latency, peak memory, params and GMACs of whole models",
        __doc__,
        add_model_arguments,
        run_models,
    )
    for name in MODE_MODULES:
        importlib.import_module(name).register(modes)
    modes.help = ", ".join(f"{mode} (default)" if mode == DEFAULT_MODE else mode for mode in modes.choices)
    # `fastvits bench` alone: the default mode with its defaults
    bench.set_defaults(func=lambda args: run_models(models.parse_args([])))
