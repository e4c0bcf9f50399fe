"""A steady inference loop for external profilers (perf, py-spy): one model, one input, forward passes for a
fixed time after a warm-up, then the rate.

Attach the profiler to the whole run and keep the loop long next to start-up, or cut the start-up off in the
report; e.g. where a batch-1 eager forward spends its time, by library, on the thread that runs Python:

    perf record -F 999 -g -o fv0.data -- python benchmarks/steady_forward.py fastervit_0_224 --seconds 30
    perf report -i fv0.data --sort dso --no-children -g none --time 50%-100% --tid TID

(TID: the process id, printed first). `--impl official` runs the official FasterViT package instead (random
weights; on PYTHONPATH, non-commercial licence).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from fastvits import optimize_for_inference
from fastvits.bench.backends import build_model, build_official


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="fastvits (or timm) model name, e.g. fastervit_0_224")
    parser.add_argument("--impl", choices=("fastvits", "official"), default="fastvits")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"pid {os.getpid()}", flush=True)
    torch.set_num_threads(args.threads)
    size = (args.img_size, args.img_size)
    if args.impl == "official":
        model = build_official(args.model, size)
    else:
        model = optimize_for_inference(build_model(args.model, size)[1])
    x = torch.randn(args.batch_size, 3, *size)
    with torch.inference_mode():
        for _ in range(10):
            model(x)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            model(x)
            steps += 1
        elapsed = time.perf_counter() - start
    print(f"{args.impl} {args.model} batch {args.batch_size}: {steps * args.batch_size / elapsed:.2f} img/s")


if __name__ == "__main__":
    main()
