"""Swin-T against Swin-T + HAT (`fastvits.hat_swin.swin_with_hat`): parameters, GMACs and CPU throughput.

Both models are timed round-robin on the same input with `fastvits.bench`'s load-aware timing; the
converted model is built from the same (random) Swin-T weights, so `max_abs_diff` shows how far its
logits start from Swin's. Weights are random (nothing is downloaded); speed does not depend on them.

Usage:
    OMP_NUM_THREADS=2 python benchmarks/bench_swin_hat.py --threads 2 --out results/swin_hat
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch

from fastvits.bench.backends import BackendSpec, prepare_runner
from fastvits.bench.measure import machine_info
from fastvits.bench.report import print_table, write_csv, write_json
from fastvits.bench.suite import BenchSettings, Entry, gmacs_and_params, measure_group
from fastvits.hat_swin import swin_with_hat

MODEL = "swin_tiny_patch4_window7_224"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-b", "--batch-size", type=int, nargs="+", default=[1, 8])
    p.add_argument("--stages", type=int, nargs="+", default=[2, 3], help="Swin stages that get HAT (0-based)")
    p.add_argument("--ct-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, help="folder for swin_hat.csv and swin_hat.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    swin = timm.create_model(MODEL).eval()
    hat = swin_with_hat(swin, stages=args.stages, ct_size=args.ct_size).eval()
    settings = BenchSettings(device="cpu", threads=args.threads, rounds=args.rounds, roof=0)
    size = (224, 224)
    example = torch.randn(1, 3, *size)
    entries = []
    for impl, model in (("timm", swin), ("fastvits", hat)):  # same group name: the speedup column is paired
        gmacs, params = gmacs_and_params(model, size, torch.device("cpu"))
        runner = prepare_runner(model, impl, BackendSpec(), example, threads=args.threads)
        entries.append(Entry(MODEL, runner, gmacs, params))
    rows = []
    for bs in args.batch_size:
        print(f"batch {bs}", file=sys.stderr)
        group, _ = measure_group(entries, torch.randn(bs, 3, *size), settings)
        for row, name in zip(group, ("Swin-T", "Swin-T + HAT")):
            row.update(model=name, hat_stages=args.stages, ct_size=args.ct_size)
        rows += group
    print_table(rows)
    base, ours = rows[0], rows[1]
    print(
        f"Swin-T + HAT (stages {args.stages}, ct_size {args.ct_size}): "
        f"params +{100 * (ours['param_count'] / base['param_count'] - 1):.2f}%, "
        f"GMACs +{100 * (ours['infer_gmacs'] / base['infer_gmacs'] - 1):.2f}%"
    )
    for r in rows[1::2]:
        print(f"batch {r['infer_batch_size']}: Swin-T + HAT runs at {r['speedup']:.2f}x Swin-T's throughput (paired)")
    if args.out:
        write_csv(rows, args.out / "swin_hat.csv")
        write_json(args.out / "swin_hat.json", command=sys.argv, machine=machine_info("cpu"), settings=vars(args)
                   | {"out": str(args.out)}, rows=rows)
        print(f"wrote {args.out}/swin_hat.{{csv,json}}")


if __name__ == "__main__":
    main()
