"""Benchmark runs: groups of runners timed round-robin on one input, and the loop over models, sizes, batches.

`measure_group` is the unit every benchmark uses: it warms each runner up, checks its output
against the group's first runner, times them all interleaved (see `measure.interleave`), probes
peak memory and returns one result row per runner. `bench_models` is what `fastvits bench models`
runs: for each model and image size it builds fastvits' model (and the official one with the same
weights when asked), prepares one runner per backend spec and measures every batch size.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import timm
import torch
from timm.data import resolve_data_config
from torch import nn

from ..deploy.calibration import CalibrationSet, load_calibration
from ..registry import list_models
from .backends import (
    BackendSpec,
    BenchError,
    OfficialUnavailable,
    Runner,
    Unsupported,
    build_model,
    build_official,
    check_model_name,
    copy_weights_to_official,
    default_img_size,
    prepare_runner,
)
from .measure import gemm_roof, interleave, machine_info, model_gmacs, onnxruntime_int8_roof, paired_ratio, peak_memory
from .report import official_top1

__all__ = [
    "BenchResults",
    "BenchSettings",
    "allocator_note",
    "bench_models",
    "expand_models",
    "measure_group",
    "measure_roofs",
]

Log = Callable[[str], None]
ROOF_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class BenchSettings:
    """Everything a `bench_models` run depends on (the command line's options)."""

    models: list[str] = field(default_factory=lambda: ["fastervit_0_224"])
    batch_sizes: list[int] | None = None  # None: 1 and 32 on CPU, 1 and 256 on CUDA
    img_sizes: list[tuple[int, int]] | None = None  # None: each model's default input size
    precision: str = "fp32"  # the precision of modes that time one (fp32, bf16, fp16 autocast)
    precisions: list[str] | None = None  # `fastvits bench models`: several, timed interleaved (None: [precision])
    calibration: str = "fashion-mnist"  # int8's calibration images (`fastvits.deploy.load_calibration`)
    calibration_images: int = 64
    backends: list[BackendSpec] = field(default_factory=lambda: [BackendSpec()])
    compare_official: bool = False
    device: str = "cpu"
    threads: int | None = None  # None: torch's default
    rounds: int = 5  # quiet rounds wanted
    max_rounds: int | None = None  # None: 2 x rounds
    warmup: int = 2  # calls per runner before timing
    sample_time: float = 0.3  # seconds per timed sample (several calls when one is shorter)
    max_load: float = 0.2  # cores of other work above which a sample is noisy
    memory: bool = True  # probe the peak memory of one batch per runner
    roof: float | None = None  # GEMM roof GFLOP/s; None: measure; 0: skip
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    compile_mode: str | None = None
    onnx_exporter: str = "auto"  # auto, fastvits (fastvits.export, dynamic batch) or torchscript (static)
    seed: int = 0

    def resolved_batch_sizes(self) -> list[int]:
        return self.batch_sizes or ([1, 256] if self.device == "cuda" else [1, 32])

    def resolved_precisions(self) -> list[str]:
        return self.precisions or [self.precision]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["backends"] = [str(s) for s in self.backends]
        d["batch_sizes"] = self.resolved_batch_sizes()
        d["precisions"] = self.resolved_precisions()
        return d


@dataclass
class BenchResults:
    machine: dict[str, Any]
    settings: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def expand_models(patterns: Sequence[str]) -> list[str]:
    """Model names with wildcards expanded (fastvits models first, else timm's), order kept."""
    names: list[str] = []
    for p in patterns:
        if any(c in p for c in "*?["):
            found = list_models(p) or timm.list_models(p)
            if not found:
                raise BenchError(f"no fastvits or timm model matches {p!r}; see fastvits.list_models()")
        else:
            check_model_name(p)
            found = [p]
        names += [n for n in found if n not in names]
    return names


def measure_roofs(settings: BenchSettings, log: Log = _stderr) -> dict[str, float | None]:
    """The GEMM roof per precision in GFLOP/s (int8: GOP/s of `torch._int_mm`): settings.roof for all if given
    (0: none), else measured now."""
    roofs: dict[str, float | None] = {}
    for precision in settings.resolved_precisions():
        if settings.roof is not None:
            roofs[precision] = settings.roof or None
            continue
        gflops, timing = gemm_roof(settings.device, ROOF_DTYPES[precision], rounds=3, max_load=settings.max_load)
        op = "torch._int_mm" if precision == "int8" else "torch.mm"
        unit = "GOP/s" if precision == "int8" else "GFLOP/s"
        threads = torch.get_num_threads()
        log(f"GEMM roof: {gflops:.1f} {unit} ({precision} {op}, {threads} threads{', noisy' if timing.noisy else ''})")
        if precision == "int8" and importlib.util.find_spec("onnxruntime") is not None:
            # the runtimes' own int8 kernels: on CPUs without VNNI torch._int_mm is a slow reference loop
            ort_gops, timing = onnxruntime_int8_roof(threads, rounds=3, max_load=settings.max_load)
            log(f"GEMM roof: {ort_gops:.1f} GOP/s (int8 onnxruntime MatMulInteger, {threads} threads"
                f"{', noisy' if timing.noisy else ''}): int8 rows are measured against the higher of the two")
            gflops = max(gflops, ort_gops)
        roofs[precision] = gflops
    return roofs


def size_text(size: tuple[int, int]) -> str | int:
    """timm writes a square size as one integer; non-square as HxW."""
    return size[0] if size[0] == size[1] else f"{size[0]}x{size[1]}"


# --------------------------------------------------------------------------------------------- one group


@dataclass
class Entry:
    """A runner with what its rows report besides timings."""

    model: str
    runner: Runner
    gmacs: float | None = None
    params: int | None = None

    @property
    def key(self) -> str:
        return f"{self.model} | {self.runner.name}"


def _speed_baseline(entries: Sequence[Entry], i: int) -> int | None:
    """Whom row i's speedup is against: the official runner with the same spec, else the model's first runner."""
    e = entries[i]
    if e.runner.impl == "official":
        return None
    for j, o in enumerate(entries):
        if (o.model == e.model and o.runner.impl == "official" and o.runner.spec == e.runner.spec
                and o.runner.precision == e.runner.precision):
            return j
    first = next(j for j, o in enumerate(entries) if o.model == e.model)
    return first if first != i else None


def measure_group(
    entries: Sequence[Entry],
    x: torch.Tensor,
    settings: BenchSettings,
    roofs: dict[str, float | None] | None = None,
    roof_gmacs: float | None = None,
    log: Log = _stderr,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Time the entries interleaved on input x; returns (rows, comparisons).

    roofs: the GEMM roof of each precision (`measure_roofs`), for each row's roof fraction.
    roof_gmacs: the work per image that the roof fraction credits (default: each row's own GMACs).
    The same figure for every implementation of a model makes fractions comparable.
    """
    device = torch.device(settings.device)
    inputs = [e.runner.adapt(x) for e in entries]
    outputs, calls = [], {}
    for e, xa in zip(entries, inputs):
        t0 = time.perf_counter()
        log(f"  warm-up {e.key}" + (" (compiling)" if e.runner.spec.backend == "compile" else ""))
        out, last = None, 0.0
        # a compiled runner's first call compiles: time at least one call after it for the calibration
        for _ in range(max(2 if e.runner.spec.backend == "compile" else 1, settings.warmup)):
            t = time.perf_counter()
            out = e.runner.call(xa)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            last = time.perf_counter() - t
        outputs.append(out.detach().float().cpu())
        calls[e.key] = max(1, math.ceil(settings.sample_time / max(last, 1e-6)))
        if time.perf_counter() - t0 > 10:
            log(f"    warm-up took {time.perf_counter() - t0:.0f} s")

    tty = sys.stderr.isatty()

    def progress(r: int, quiet: int, wanted: int) -> None:
        if tty and log is _stderr:
            print(f"\r  round {r}: {quiet}/{wanted} quiet", end="", file=sys.stderr, flush=True)

    fns = {e.key: (lambda r=e.runner, xa=xa: r.call(xa)) for e, xa in zip(entries, inputs)}
    timings = interleave(
        fns,
        rounds=settings.rounds,
        max_rounds=settings.max_rounds,
        target_s=settings.sample_time,
        max_load=settings.max_load,
        device=device,
        calls=calls,
        progress=progress,
    )
    if tty and log is _stderr:
        print(file=sys.stderr)
    first = next(iter(timings.values()))
    kept = "/".join(str(len(t.kept)) for t in timings.values())
    noisy = any(t.noisy for t in timings.values())
    log(f"  {len(first.samples)} rounds, kept {kept}" + (" (none quiet: all kept)" if noisy else ""))
    mem: list[int | None] = [None] * len(entries)
    if settings.memory:
        for i, (e, xa) in enumerate(zip(entries, inputs)):
            fn = e.runner.memory_call(xa) if e.runner.memory_call else (lambda r=e.runner, xa=xa: r.call(xa))
            mem[i] = peak_memory(fn, device)
            del fn

    rows = []
    bs = x.shape[0]
    for i, e in enumerate(entries):
        t = timings[e.key]
        base = _speed_baseline(entries, i)
        diff = (outputs[i] - outputs[0]).abs().max().item() if i else None
        work = roof_gmacs if roof_gmacs is not None else e.gmacs
        roof_gflops = (roofs or {}).get(e.runner.precision)
        ips = bs / t.step_s
        rows.append(
            {
                "model": e.model,
                "infer_samples_per_sec": ips,
                "infer_step_time": t.step_s * 1e3,
                "infer_batch_size": bs,
                "infer_img_size": size_text((x.shape[2], x.shape[3])),
                "param_count": e.params / 1e6 if e.params is not None else None,
                "infer_gmacs": e.gmacs,
                "impl": e.runner.impl,
                "backend": str(e.runner.spec),
                "precision": e.runner.precision,
                "device": device.type,
                "threads": torch.get_num_threads(),
                "infer_mem_mb": mem[i] / 2**20 if mem[i] is not None else None,
                "page_faults": t.page_faults,
                "roof_frac": ips * 2 * work / roof_gflops if roof_gflops and work else None,
                "speedup": paired_ratio(timings[entries[base].key], t) if base is not None else None,
                "speedup_vs": entries[base].runner.name if base is not None else None,
                "max_abs_diff": diff,
                "diff_vs": entries[0].runner.name if i else None,
                "top1": official_top1(e.model),
                "rounds_kept": len(t.kept),
                "rounds_run": len(t.samples),
                "noisy": t.noisy,
                "other_load": t.other_load,
                "step_time_min": t.spread[0] * 1e3,
                "step_time_max": t.spread[1] * 1e3,
                "samples": [[s.step_s, s.calls, s.other_load, s.page_faults] for s in t.samples],
                "notes": e.runner.notes,
            }
        )
    return rows, _best_vs_best(entries, timings, rows) + _precision_gains(entries, timings, rows)


def _best_vs_best(entries: Sequence[Entry], timings: dict, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and precision with both implementations: fastvits' fastest runner against the official fastest."""
    out = []
    for model, precision in dict.fromkeys((e.model, e.runner.precision) for e in entries):
        idx = {
            impl: [i for i, e in enumerate(entries)
                   if e.model == model and e.runner.impl == impl and e.runner.precision == precision]
            for impl in ("fastvits", "official")
        }
        if not idx["fastvits"] or not idx["official"]:
            continue
        ours = min(idx["fastvits"], key=lambda i: timings[entries[i].key].step_s)
        theirs = min(idx["official"], key=lambda i: timings[entries[i].key].step_s)
        eager = [
            (i, j)
            for i in idx["fastvits"]
            for j in idx["official"]
            if entries[i].runner.spec == entries[j].runner.spec == BackendSpec()
        ]
        out.append(
            {
                "kind": "fastvits vs official",
                "model": model,
                "precision": precision,
                "infer_batch_size": rows[ours]["infer_batch_size"],
                "infer_img_size": rows[ours]["infer_img_size"],
                "best_fastvits": entries[ours].runner.name,
                "best_official": entries[theirs].runner.name,
                "best_speedup": paired_ratio(timings[entries[theirs].key], timings[entries[ours].key]),
                "best_fastvits_roof_frac": rows[ours]["roof_frac"],
                "best_official_roof_frac": rows[theirs]["roof_frac"],
                "eager_speedup": rows[eager[0][0]]["speedup"] if eager else None,
                "eager_fastvits_roof_frac": rows[eager[0][0]]["roof_frac"] if eager else None,
                "eager_official_roof_frac": rows[eager[0][1]]["roof_frac"] if eager else None,
            }
        )
    return out


def _precision_gains(entries: Sequence[Entry], timings: dict, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and implementation timed in fp32 and another precision: the fastest runner of each other precision
    against the fastest fp32 runner."""
    out = []
    for model, impl in dict.fromkeys((e.model, e.runner.impl) for e in entries):
        best: dict[str, int] = {}
        for i, e in enumerate(entries):
            if e.model == model and e.runner.impl == impl:
                p = e.runner.precision
                if p not in best or timings[e.key].step_s < timings[entries[best[p]].key].step_s:
                    best[p] = i
        if "fp32" not in best:
            continue
        base = best.pop("fp32")
        for precision, i in best.items():
            out.append({
                "kind": "precision vs fp32", "model": model, "impl": impl, "precision": precision,
                "infer_batch_size": rows[i]["infer_batch_size"], "infer_img_size": rows[i]["infer_img_size"],
                "best": entries[i].runner.name, "best_fp32": entries[base].runner.name,
                "speedup": paired_ratio(timings[entries[base].key], timings[entries[i].key]),
                "roof_frac": rows[i]["roof_frac"], "fp32_roof_frac": rows[base]["roof_frac"],
                "max_abs_diff_vs_first": rows[i]["max_abs_diff"],
            })
    return out


# ------------------------------------------------------------------------------------------- model loop


def gmacs_and_params(model: nn.Module, size: tuple[int, int], device: torch.device) -> tuple[float, int]:
    model.to(device)
    return model_gmacs(model, torch.randn(1, 3, *size, device=device)), sum(p.numel() for p in model.parameters())


def _build_entries(
    name: str,
    size: tuple[int, int],
    ours: tuple[str, nn.Module],
    settings: BenchSettings,
    keep_original: bool,
    notes: list[str],
    log: Log,
) -> tuple[list[Entry], float | None]:
    """Runners for every backend spec of the model (and of the official model); (entries, fastvits GMACs)."""
    device = torch.device(settings.device)
    impl, model = ours
    bases = [(impl, model)]
    if settings.compare_official and impl == "fastvits":
        try:
            official = build_official(name, size, settings.model_kwargs)
            copy_weights_to_official(model, official)
            bases.append(("official", official))
        except OfficialUnavailable as e:
            if "not installed" in str(e):
                raise
            notes.append(f"{name} {size_text(size)}: no official comparison: {e}")
            log(f"  note: {notes[-1]}")
    example = torch.randn(1, 3, *size)
    pairs = [(p, spec) for p in settings.resolved_precisions() for spec in settings.backends]
    calibration = _calibration(model, size, settings) if "int8" in settings.resolved_precisions() else None
    entries, ours_gmacs = [], None
    for b_impl, base in bases:
        gmacs, params = gmacs_and_params(base, size, device)
        if b_impl == impl:
            ours_gmacs = gmacs
        keep = keep_original or b_impl != impl
        for k, (precision, spec) in enumerate(pairs):
            module = base if keep and k == len(pairs) - 1 else copy.deepcopy(base)
            try:
                runner = prepare_runner(
                    module,
                    b_impl,
                    spec,
                    example,
                    device=device,
                    precision=precision,
                    threads=settings.threads,
                    compile_mode=settings.compile_mode,
                    onnx_exporter=settings.onnx_exporter,
                    calibration=calibration,
                )
            except Unsupported as e:
                if len(pairs) == 1 and b_impl == impl:  # the one pair asked for cannot run: an error, not a note
                    raise
                notes.append(f"{name}: {b_impl} {spec} {precision} skipped: {e}")
                log(f"  note: {notes[-1]}")
                continue
            entries.append(Entry(name, runner, gmacs, params))
    if not entries:
        raise BenchError(f"no backend of {', '.join(map(str, settings.backends))} runs any of the precisions "
                         f"{', '.join(settings.resolved_precisions())} here; see the notes above")
    return entries, ours_gmacs


def _calibration(model: nn.Module, size: tuple[int, int], settings: BenchSettings) -> CalibrationSet:
    """int8's calibration images at the benchmark's size, preprocessed as the model expects (no crop)."""
    config = {**resolve_data_config(model=model), "input_size": (3, *size), "crop_pct": 1.0}
    return load_calibration(settings.calibration, config, settings.calibration_images)


def check_img_size(name: str, model: nn.Module, size: tuple[int, int]) -> None:
    """Refuse an image size below the model's `min_input_size` (pretrained_cfg) before anything is timed."""
    min_size = (getattr(model, "pretrained_cfg", None) or {}).get("min_input_size")
    if min_size and (size[0] < min_size[-2] or size[1] < min_size[-1]):
        raise BenchError(
            f"{name} takes images of at least {min_size[-2]}x{min_size[-1]} px, got {size_text(size)}: "
            "pass a larger --img-size"
        )


def bench_models(settings: BenchSettings, log: Log = _stderr) -> BenchResults:
    """The `fastvits bench models` run; see the module docstring."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda asked but torch sees no CUDA device")
    names = expand_models(settings.models)
    results = BenchResults(machine_info(device), settings.to_dict())
    roofs = measure_roofs(settings, log)
    results.machine["roofs"] = roofs  # per precision; int8 in GOP/s
    results.machine["roof_gflops"] = roofs[settings.resolved_precisions()[0]]
    batch_sizes = settings.resolved_batch_sizes()
    gen = torch.Generator().manual_seed(settings.seed)
    for name in names:
        sizes = settings.img_sizes or [default_img_size(name)]
        ours = None
        for k, size in enumerate(sizes):
            if ours is None or ours[0] != "fastvits":  # fastvits models run every size; timm's are built per size
                torch.manual_seed(settings.seed)
                ours = build_model(name, size, settings.model_kwargs, settings.checkpoint)
            check_img_size(name, ours[1], size)
            entries, ours_gmacs = _build_entries(
                name, size, ours, settings, keep_original=k == len(sizes) - 1, notes=results.notes, log=log
            )
            try:
                for bs in batch_sizes:
                    log(f"{name} {size_text(size)} batch {bs}: {', '.join(e.runner.name for e in entries)}")
                    x = torch.randn(bs, 3, *size, generator=gen)
                    rows, comps = measure_group(entries, x, settings, roofs, ours_gmacs, log)
                    results.rows += rows
                    results.comparisons += comps
            finally:
                for e in entries:
                    e.runner.close()
    note = allocator_note(results.rows, str(results.machine["allocator"]))
    if note:
        results.notes.append(note)
    return results


def allocator_note(rows: Sequence[dict[str, Any]], allocator: str, faults_per_image: float = 1000) -> str | None:
    """Advice for runs in which glibc's malloc makes rows take memory fresh from the system at every batch (more
    than `faults_per_image` page faults, i.e. 4 MB, per image); None otherwise. On the 2-core Xeon of
    docs/benchmarks.md, rows above this ran 1.17-1.35x faster with tcmalloc preloaded (FasterViT-0 and -2 at batch 32:
    1,500 to 13,300 faults per image under glibc, at most 20 with tcmalloc)."""
    if not allocator.startswith("glibc"):
        return None

    def per_image(row: dict[str, Any]) -> float:
        return (row.get("page_faults") or 0) / row["infer_batch_size"]

    costly = [r for r in rows if per_image(r) > faults_per_image]
    if not costly:
        return None
    worst = max(costly, key=per_image)
    return (
        f"{len(costly)} of {len(rows)} rows take memory fresh from the system at every batch (most: {worst['model']} "
        f"{worst['impl']} {worst['backend']} batch {worst['infer_batch_size']}, {worst['page_faults']:,.0f} page "
        f"faults per batch): glibc's malloc gives large blocks back after each forward. tcmalloc usually makes such "
        "runs faster, for every implementation: apt-get install libtcmalloc-minimal4, then `fastvits --allocator "
        "tcmalloc COMMAND ...` (or LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 for any program; "
        "OpenVINO cannot run under it and is skipped then); docs/benchmarks.md, 'the allocator'"
    )
