"""LITv2's token-merging deformable conv on the CPU: torchvision's kernel against fastvits' weighted-gather one.

The three DTM layers of LITv2-S (2x2 kernel, stride 2, channels doubled; 56 -> 28, 28 -> 14, 14 -> 7 at 224 px),
random offsets of a few pixels, batch 1 and 32, timed round-robin; the difference is relative to the largest
output value.

    python benchmarks/bench_deform_conv.py --threads 2
"""

from __future__ import annotations

import argparse

import torch
from torchvision.ops import deform_conv2d

from fastvits.bench.measure import interleave, paired_ratio
from fastvits.inference.deform import deform_conv2d_sampled

LITV2_S_DTM = [(96, 56), (192, 28), (384, 14)]  # (input channels, input side)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("| batch | layer (C, side) | torchvision ms | fastvits ms | speedup (paired) | max rel. difference |")
    print("|---:|---|---:|---:|---:|---:|")
    with torch.inference_mode():
        for batch in args.batch_sizes:
            for channels, side in LITV2_S_DTM:
                x = torch.randn(batch, channels, side, side)
                weight, bias = torch.randn(2 * channels, channels, 2, 2) * 0.05, torch.randn(2 * channels)
                offset = torch.randn(batch, 8, side // 2, side // 2) * 2
                runners = {
                    "torchvision": lambda: deform_conv2d(x, offset, weight, bias, stride=2),
                    "fastvits": lambda: deform_conv2d_sampled(x, offset, weight, bias, 2, 0),
                }
                expected = runners["torchvision"]()
                diff = ((runners["fastvits"]() - expected).abs().max() / expected.abs().max()).item()
                t = interleave(runners, rounds=args.rounds)
                print(
                    f"| {batch} | ({channels}, {side}) | {t['torchvision'].step_s * 1e3:.2f} | "
                    f"{t['fastvits'].step_s * 1e3:.2f} | {paired_ratio(t['torchvision'], t['fastvits']):.2f}x | "
                    f"{diff:.1e} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
