"""The fp32 GEMM roof of this machine: GFLOP/s of an n x n x n `torch.mm`, median of quiet samples.

Every "fraction of the roof" in docs/benchmarks.md is measured against this figure. Samples taken
while other processes used more than --max-load cores are left out (see fastvits.bench.measure).

    python benchmarks/gemm_roof.py --threads 2                      # 2048^3 fp32, the CPU reference
    python benchmarks/gemm_roof.py --device cuda --dtype bf16       # 8192^3 on a GPU
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fastvits.bench.measure import gemm_roof, machine_info

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, help="matrix side (default 2048 on CPU fp32, 512 CPU half, 8192 CUDA)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--rounds", type=int, default=7, help="quiet samples wanted")
    p.add_argument("--max-load", type=float, default=0.2)
    p.add_argument("--out", type=Path, help="JSON file for the result")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gflops, timing = gemm_roof(args.device, DTYPES[args.dtype], args.n, args.rounds, args.max_load)
    kept = [timing.samples[i] for i in timing.kept]
    n = args.n or (8192 if args.device == "cuda" else (2048 if args.dtype == "fp32" else 512))
    lo, hi = (2 * n**3 / s.step_s / 1e9 for s in (max(kept, key=lambda s: s.step_s), min(kept, key=lambda s: s.step_s)))
    print(
        f"GEMM roof {gflops:.1f} GFLOP/s ({args.dtype} {n}^3 torch.mm, {torch.get_num_threads()} threads, "
        f"{args.device}); range {lo:.1f}-{hi:.1f} over "
        + (
            f"all {len(timing.samples)} samples: none was quiet, figure unreliable"
            if timing.noisy
            else f"{len(timing.kept)} quiet of {len(timing.samples)} samples"
        )
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "gflops": gflops,
                    "n": n,
                    "dtype": args.dtype,
                    "command": sys.argv,
                    "machine": machine_info(args.device),
                    "samples": [[s.step_s, s.calls, s.other_load] for s in timing.samples],
                    "kept": timing.kept,
                },
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
