"""Memory of the 768-px ImageNet-21K FasterViT-4: what the model holds against its parameter bytes.

Its last two stages attend in 48x48 and 24x24 windows, where a full (heads, N, N) position bias
per layer is large (16 x 2304 x 2304 floats = 340 MB for each stage-3 block); the official model
keeps one such buffer per layer. This script reports, for fastvits (and the official model with
--compare-official):
- parameter and buffer bytes, and the resident memory that building the model added;
- one forward at 768 px of `optimize_for_inference(model)`: its peak working memory, and what stays resident
  afterwards (position tables, packed weights);
- the bytes the inference engine holds (position-encoding tables, oneDNN-packed weights), against what keeping
  every layer's full bias would take (measured from the biases the forward computes);
- the same after a second forward at another size (do the tables pile up per input size?).
Resident figures come from /proc/self/status after returning freed heap pages (Linux).

    python benchmarks/bench_memory_21k_768.py --threads 2 --out results/memory_21k_768
    python benchmarks/bench_memory_21k_768.py --compare-official --out results/memory_21k_768
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from fastvits.bench.backends import build_model, build_official, copy_weights_to_official
from fastvits.bench.cli import parse_size
from fastvits.bench.measure import machine_info, peak_memory, resident_bytes
from fastvits.inference import optimize_for_inference
from fastvits.inference.onednn import PackedConv2d, PackedLinear
from fastvits.inference.position import FrozenRelativeBias, SizeTable

MB = 2**20


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def engine_bytes(model: nn.Module) -> int:
    """Bytes the inference engine holds beyond the weights: position-encoding tables and oneDNN-packed weights."""
    total = 0
    for m in model.modules():
        if isinstance(m, SizeTable):
            total += tensor_bytes(getattr(m, name) for name in m.sizes.values())
        if isinstance(m, (PackedConv2d, PackedLinear)) and m._packed is not None:
            total += m._packed.numel() * m._packed.element_size()  # opaque oneDNN tensor: one buffer
    return total


def forward_report(model: nn.Module, size: tuple[int, int], base_rss: int | None) -> dict:
    """Peak working memory and retained memory of one batch-1 forward at `size`."""
    x = torch.randn(1, 3, *size)
    bias_bytes = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: bias_bytes.append(out.numel() * out.element_size()))
        for m in model.modules()
        if isinstance(m, FrozenRelativeBias)
    ]
    t0 = time.perf_counter()
    with torch.inference_mode():
        peak = peak_memory(lambda: model(x))
    seconds = time.perf_counter() - t0
    for h in hooks:
        h.remove()
    rss = resident_bytes()
    return {
        "size": f"{size[0]}x{size[1]}",
        "seconds": seconds,
        "peak_working_mb": peak / MB if peak is not None else None,
        "retained_mb": (rss - base_rss) / MB if rss is not None and base_rss is not None else None,
        "engine_mb": engine_bytes(model) / MB,
        "full_bias_per_layer_mb": sum(bias_bytes) / MB
        if hooks
        else None,  # every layer's (heads, N, N) bias, as a per-layer cache would hold
    }


def model_report(name: str, model_fn, init_size: tuple[int, int] | None = None) -> tuple[nn.Module, dict]:
    """Build the model and measure what it holds.

    Then (init_size) run one small forward of the plain model and make its inference form, so that the one-time
    cost of the first forward in a process (kernel libraries, thread pools) is not charged to the 768-px forward.
    """
    before = resident_bytes()
    model = model_fn().eval()
    after = resident_bytes()
    params = tensor_bytes(model.parameters())
    buffers = tensor_bytes(model.buffers())
    if init_size:
        with torch.inference_mode():
            model(torch.randn(1, 3, *init_size))
        model = optimize_for_inference(model)
    base = resident_bytes()
    return model, {
        "model": name,
        "param_mb": params / MB,
        "buffer_mb": buffers / MB,
        "resident_after_build_mb": (after - before) / MB if after is not None and before is not None else None,
        "resident_over_params": (after - before) / params if after is not None and before is not None else None,
        "_rss_base": base,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--model", default="fastervit_4_21k_768")
    p.add_argument("--size", type=parse_size, default=(768, 768))
    p.add_argument(
        "--second-size",
        type=lambda t: None if t in ("0", "none") else parse_size(t),
        default=(640, 640),
        help="a second input size, or none",
    )
    p.add_argument("--compare-official", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model-kwargs", type=json.loads, default={}, help="JSON (smoke tests with a tiny model)")
    p.add_argument("--out", type=Path, default=Path("results/memory_21k_768"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    reports = []
    ours, rep = model_report(
        args.model + " (fastvits)", lambda: build_model(args.model, model_kwargs=args.model_kwargs)[1], (64, 64)
    )
    base = rep.pop("_rss_base")
    rep["forwards"] = [forward_report(ours, args.size, base)]
    if args.second_size:
        rep["forwards"].append(forward_report(ours, args.second_size, base))
    reports.append(rep)
    if args.compare_official:
        official, orep = model_report(
            args.model + " (official)", lambda: build_official(args.model, args.size, args.model_kwargs)
        )
        copy_weights_to_official(ours, official)
        obase = orep.pop("_rss_base")
        orep["forwards"] = [forward_report(official, args.size, obase)]
        reports.append(orep)

    print(f"{'model':<40} {'params MB':>10} {'buffers MB':>10} {'built MB':>9} {'built/params':>12}")
    for r in reports:
        built = "-" if r["resident_after_build_mb"] is None else f"{r['resident_after_build_mb']:.0f}"
        ratio = "-" if r["resident_over_params"] is None else f"{r['resident_over_params']:.2f}"
        print(f"{r['model']:<40} {r['param_mb']:>10.0f} {r['buffer_mb']:>10.0f} {built:>9} {ratio:>12}")
    head = f"{'model':<40} {'size':>8} {'s':>6} {'peak MB':>8} {'retained MB':>11} {'engine MB':>9}"
    print(f"\n{head} {'full biases MB':>14}")
    fmt = lambda v: "-" if v is None else f"{v:.0f}"
    for r in reports:
        for f in r["forwards"]:
            print(
                f"{r['model']:<40} {f['size']:>8} {f['seconds']:>6.1f} {fmt(f['peak_working_mb']):>8} "
                f"{fmt(f['retained_mb']):>11} {f['engine_mb']:>9.1f} {fmt(f['full_bias_per_layer_mb']):>14}"
            )
    print(
        "\nbuilt: resident memory added by building; retained: resident memory the forwards left behind (after "
        "a first small forward that initialises the runtime); engine: position tables and packed weights of "
        "optimize_for_inference; full biases: "
        "every layer's (heads, N, N) bias of that forward, which per-layer bias buffers would hold"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "memory_21k_768.json"
    path.write_text(json.dumps({"command": sys.argv, "machine": machine_info(), "reports": reports}, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
