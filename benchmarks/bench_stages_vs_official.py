"""Where the time goes: FasterViT stage by stage, fastvits against the official code, same weights.

Each part of the network (the stem, then every stage with its downsampler) is timed alone on the input it gets
in a forward pass, both implementations round-robin, next to the whole forward. Per part: GMACs
(`torch.utils.flop_counter`), milliseconds, the paired speedup and the fraction of the GEMM roof. Below the
table, the Amdahl arithmetic of the batch-1 target: how fast the transformer stages would have to run for the
whole model to reach `--target` times the official eager speed, given the time of the convolutional parts.

Needs the official package next to fastvits (`pip install fastervit`, non-commercial licence).

    python benchmarks/bench_stages_vs_official.py --threads 2 --out results/stages_vs_official.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

import fastvits
from fastvits.bench.backends import build_official, copy_weights_to_official
from fastvits.bench.measure import count_gmacs, gemm_roof, interleave, machine_info, paired_ratio


def parts(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The stem and the stages (both implementations use these attribute names)."""
    return [("stem", model.patch_embed)] + [(f"stage {i + 1}", level) for i, level in enumerate(model.levels)]


def part_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The input each part receives in a forward pass of `model` on `x`."""
    inputs: list[torch.Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: inputs.append(args[0])) for _, m in parts(model)]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return inputs


def measure(name: str, batch: int, rounds: int, roof: float) -> dict:
    plain = fastvits.create_model(name).eval()
    official = build_official(name, (224, 224))
    copy_weights_to_official(plain, official)
    ours = fastvits.optimize_for_inference(plain)
    counted = fastvits.optimize_for_inference(plain, runtime="export")  # plain ops, which the FLOP counter sees
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        calls: dict[str, dict[str, Callable[[], object]]] = {}  # impl -> part -> one call on its forward input
        for impl, model in (("ours", ours), ("official", official), ("counted", counted)):
            calls[impl] = {part: partial(m, xi) for (part, m), xi in zip(parts(model), part_inputs(model, x))}
            calls[impl]["model"] = partial(model, x)
        counted_calls = calls.pop("counted")
        fns = {f"{impl} {part}": fn for impl, by_part in calls.items() for part, fn in by_part.items()}
        for fn in [*fns.values(), *counted_calls.values()]:
            fn()  # warm-up: position tables, packed weights, the official deploy caches
        timings = interleave(fns, rounds=rounds)
        gmacs = {part: count_gmacs(fn, batch) for part, fn in counted_calls.items()}
    rows = []
    for part in calls["ours"]:
        t_ours, t_off = timings[f"ours {part}"], timings[f"official {part}"]
        rows.append(
            dict(
                part=part,
                gmacs=gmacs[part],
                ours_ms=1e3 * t_ours.step_s,
                official_ms=1e3 * t_off.step_s,
                speedup=paired_ratio(t_off, t_ours),
                ours_roof=2 * gmacs[part] * batch / t_ours.step_s / roof,
                noisy=t_ours.noisy,
            )
        )
    return dict(model=name, batch=batch, rows=rows)


def amdahl(result: dict, target: float, roof: float) -> str:
    """What the transformer stages would need for the whole model to reach `target` x the official eager."""
    rows = {r["part"]: r for r in result["rows"]}
    conv = ("stem", "stage 1", "stage 2")  # convolutional parts
    hat = [p for p in rows if p.startswith("stage") and p not in conv]
    budget = rows["model"]["official_ms"] / target - sum(rows[p]["ours_ms"] for p in conv)
    rest = rows["model"]["ours_ms"] - sum(rows[p]["ours_ms"] for p in rows if p != "model")  # norm, pooling, head
    hat_ours = sum(rows[p]["ours_ms"] for p in hat)
    hat_at_roof = sum(2e3 * rows[p]["gmacs"] * result["batch"] / roof for p in hat)
    return (
        f"{result['model']} batch {result['batch']}: for {target}x the official model, stages 3-4 (+ head) may take "
        f"{budget:.2f} ms; they take {hat_ours + rest:.2f} ms ({hat_ours:.2f} + {rest:.2f} outside the parts), "
        f"their multiply-adds alone take {hat_at_roof:.2f} ms at the GEMM roof"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__)
    p.add_argument("--models", nargs="+", default=["fastervit_0_224", "fastervit_1_224", "fastervit_2_224"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--target", type=float, help="speedup to explain (default: issue 4's 1.5 at batch 1, else 1.15)")
    p.add_argument("--out", type=Path, help="JSON file for the results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    roof, _ = gemm_roof(rounds=5)
    print(f"GEMM roof {roof:.1f} GFLOP/s, {args.threads} threads, torch {torch.__version__}")
    results = []
    for name in args.models:
        for batch in args.batch_sizes:
            r = measure(name, batch, args.rounds, roof)
            results.append(r)
            print(f"\n{name}, batch {batch}")
            print("| part | GMACs/img | fastvits ms | official ms | speedup (paired) | fastvits roof |")
            print("|---|---:|---:|---:|---:|---:|")
            for row in r["rows"]:
                print(
                    f"| {row['part']}{' (noisy)' if row['noisy'] else ''} | {row['gmacs']:.3f} | {row['ours_ms']:.2f} "
                    f"| {row['official_ms']:.2f} | {row['speedup']:.2f}x | {100 * row['ours_roof']:.0f}% |"
                )
            print(amdahl(r, args.target or (1.5 if batch == 1 else 1.15), roof))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(machine=machine_info(), roof_gflops=roof, results=results), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
