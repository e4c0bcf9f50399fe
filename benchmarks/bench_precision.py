"""fp32 against bf16 inference forms on the CPU, interleaved in one process, same weights and input.

For each model and batch size: `optimize_for_inference(model)` (fp32) and `optimize_for_inference(model,
precision="bf16")` timed round-robin (`fastvits.bench.measure.interleave`: quiet rounds only), with the bf16 form's
largest logit error relative to the fp32 logits' scale and its top-1 agreement with fp32 (random weights: close
logits, so agreement is a pessimistic figure). Prints the CPU's native bf16 support.

    python benchmarks/bench_precision.py --threads 2 --out results/precision.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import fastvits
from fastvits.bench.measure import interleave, machine_info, paired_ratio
from fastvits.inference.cpu_features import native_bf16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["fastervit_0_224", "litv2_s"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"native bf16: {native_bf16() or 'none (emulated)'}")
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = fastvits.create_model(name).eval()
        forms = {p: fastvits.optimize_for_inference(model, precision=p) for p in ("fp32", "bf16")}
        for bs in args.batch_sizes:
            x = torch.randn(bs, 3, args.img_size, args.img_size)
            with torch.inference_mode():
                outs = {p: f(x) for p, f in forms.items()}  # warm-up: position tables, packed weights
                timings = interleave({p: (lambda f=f: f(x)) for p, f in forms.items()}, rounds=args.rounds)
            ref, low = outs["fp32"], outs["bf16"]
            row = dict(
                model=name,
                batch_size=bs,
                fp32_img_s=bs / timings["fp32"].step_s,
                bf16_img_s=bs / timings["bf16"].step_s,
                speedup=paired_ratio(timings["fp32"], timings["bf16"]),
                rel_logit_err=((low - ref).abs().max() / ref.abs().max()).item(),
                top1_agreement=(low.argmax(1) == ref.argmax(1)).float().mean().item(),
                noisy=any(t.noisy for t in timings.values()),
            )
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(machine=machine_info(), native_bf16=native_bf16(), rows=rows), indent=1))


if __name__ == "__main__":
    main()
