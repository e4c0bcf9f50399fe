"""One dynamic-shape graph against one graph per size: FasterViT under `torch.compile(dynamic=True)`.

For each input size, three runners time the same input round-robin: the eager inference form
(`optimize_for_inference`, fused CPU kernels), one
`torch.compile(dynamic=True)` graph shared by every size, and a graph compiled for that size alone
(`dynamic=False`, on its own copy of the model). The script reports the compile time each size cost and how many
graphs the dynamic model holds after it: sizes of the same structure (several windows per axis in both
transformer stages) must share one graph.

    python benchmarks/bench_dynamic_compile.py --threads 2 --out results/dynamic_compile
    python benchmarks/bench_dynamic_compile.py --backend aot_eager --sizes 256 320x480 --rounds 2   # quick look
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from fastvits import create_model, optimize_for_inference
from fastvits.bench.cli import parse_size
from fastvits.bench.measure import interleave, machine_info, paired_ratio
from fastvits.bench.suite import size_text

DEFAULT_SIZES = ["320x480", "256", "448", "576x960"]  # the first not square, or PyTorch assumes H == W at first


def cached_graphs(model: torch.nn.Module) -> int:
    """Graphs torch.compile holds for the model's forward (for every instance of its class)."""
    code = type(model).forward.__code__
    return len(torch._dynamo.eval_frame._debug_get_cache_entry_list(code))


def timed_first_call(fn, x: torch.Tensor) -> float:
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fastervit_0_any_res")
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="HxW or S")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = 64  # one static graph per size and copy, next to the dynamic ones

    torch.manual_seed(0)
    model = create_model(args.model).eval()
    dynamic = torch.compile(model, fullgraph=True, dynamic=True, backend=args.backend)
    eager = optimize_for_inference(model)
    inputs = {text: torch.randn(args.batch_size, 3, *parse_size(text)) for text in args.sizes}
    rows = []
    with torch.inference_mode():
        for text, x in inputs.items():  # the dynamic graphs first, so that only they are counted
            compile_s = timed_first_call(dynamic, x)
            rows.append({"size": size_text(parse_size(text)), "dynamic_compile_s": round(compile_s, 1)})
            rows[-1]["dynamic_graphs_so_far"] = cached_graphs(model)
        for row, x in zip(rows, inputs.values()):
            static = torch.compile(copy.deepcopy(model), fullgraph=True, dynamic=False, backend=args.backend)
            row["static_compile_s"] = round(timed_first_call(static, x), 1)
            expected = model(x)
            row["max_abs_diff"] = max((f(x) - expected).abs().max().item() for f in (dynamic, static))
            timings = interleave(
                {"eager": lambda: eager(x), "dynamic": lambda: dynamic(x), "static": lambda: static(x)},
                rounds=args.rounds,
            )
            row.update({f"{n}_ms_per_img": round(t.step_s * 1e3 / args.batch_size, 2) for n, t in timings.items()})
            row["static_over_dynamic"] = round(paired_ratio(timings["static"], timings["dynamic"]), 3)
            row["eager_over_dynamic"] = round(paired_ratio(timings["eager"], timings["dynamic"]), 3)
            row["noisy"] = any(t.noisy for t in timings.values())
            print(json.dumps(row), flush=True)

    header = list(rows[0])
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(str(r[k]) for k in header) + " |" for r in rows]
    print("\n".join(table))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        result = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
        (args.out / "dynamic_compile.json").write_text(json.dumps(result, indent=2))
        (args.out / "summary.md").write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
