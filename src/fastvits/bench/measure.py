"""Timing, machine load, peak memory, FLOPs and the GEMM roof.

On a shared machine a timing is only as good as the load it was taken under. Every timed sample
here records how many CPU cores *other* processes kept busy while it ran (machine-wide busy time
from /proc/stat minus this process's own CPU time), so a noisy sample can be recognised and left
out. Implementations that are compared run round-robin (A, B, A, B, ...; the starting runner
rotates each round), and a ratio is the median of per-round ratios: both members of a pair saw the
same machine.

A sample is one or more back-to-back calls lasting at least `target_s`, which keeps the 10 ms tick
of /proc/stat small against the sample, and gives short batch-1 calls a stable median.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None

from ..allocator import current_allocator
from ..inference import optimize_for_inference
from ..inference.cpu_features import cpu_name, isa_flags, native_bf16

__all__ = [
    "LoadMonitor",
    "Sample",
    "Timing",
    "count_gmacs",
    "model_gmacs",
    "register_deform_conv2d_flops",
    "gemm_roof",
    "interleave",
    "machine_info",
    "paired_ratio",
    "peak_memory",
    "summarize",
]

# ------------------------------------------------------------------------------------------- machine load


class LoadMonitor:
    """Cores kept busy by other processes between two snapshots.

    Reads the machine-wide busy time from /proc/stat (user, system, irq and steal: time the
    hypervisor gave our virtual CPUs to someone else counts as load too) and subtracts this
    process's CPU time. Where /proc/stat does not exist (macOS) `available` is False and every
    sample counts as quiet.
    """

    def __init__(self) -> None:
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.available = self._busy_ticks() is not None

    @staticmethod
    def _busy_ticks() -> int | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        guest = sum(fields[8:10])  # guest time is already part of user time
        return sum(fields) - idle - guest

    def snapshot(self) -> tuple[float, int, float]:
        return time.perf_counter(), self._busy_ticks() or 0, time.process_time()

    def other_load(self, start: tuple[float, int, float], end: tuple[float, int, float]) -> float:
        """Average number of cores other processes used between `start` and `end` (0 if unknown)."""
        if not self.available:
            return 0.0
        wall = end[0] - start[0]
        busy = (end[1] - start[1]) / self._hz
        own = end[2] - start[2]
        return max(0.0, (busy - own) / wall) if wall > 0 else 0.0


# ------------------------------------------------------------------------------------------------ timing


@dataclass
class Sample:
    """One timed sample: `calls` back-to-back calls taking `step_s` seconds each on average, with `page_faults`
    minor page faults per call (None where unknown)."""

    step_s: float
    calls: int
    other_load: float
    page_faults: float | None = None


@dataclass
class Timing:
    """The kept samples of one runner and their medians.

    `kept` are the indices of the rounds used: those in which every runner of the group was
    quiet, else all rounds (then `noisy` is True). Every runner of a group keeps the same rounds,
    so medians and per-round ratios describe the same moments.
    """

    samples: list[Sample]
    kept: list[int]
    noisy: bool
    step_s: float = field(init=False)
    other_load: float = field(init=False)
    page_faults: float | None = field(init=False)

    def __post_init__(self) -> None:
        kept = [self.samples[i] for i in self.kept]
        self.step_s = statistics.median(s.step_s for s in kept)
        self.other_load = statistics.median(s.other_load for s in kept)
        faults = [s.page_faults for s in kept if s.page_faults is not None]
        self.page_faults = statistics.median(faults) if faults else None

    @property
    def spread(self) -> tuple[float, float]:
        """(min, max) step time over the kept rounds."""
        kept = [self.samples[i].step_s for i in self.kept]
        return min(kept), max(kept)


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _page_faults() -> int | None:
    """Minor page faults of this process so far: each is a page the allocator took fresh from the system and the
    kernel zeroed on first touch (glibc's malloc returns large blocks after every call; tcmalloc keeps them)."""
    return None if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _time_calls(fn: Callable[[], object], calls: int, device: torch.device | str, monitor: LoadMonitor) -> Sample:
    _sync(device)
    faults_before = _page_faults()
    start = monitor.snapshot()
    for _ in range(calls):
        fn()
    _sync(device)
    end = monitor.snapshot()
    faults = None if faults_before is None else (_page_faults() - faults_before) / calls
    return Sample((end[0] - start[0]) / calls, calls, monitor.other_load(start, end), faults)


def calls_per_sample(fn: Callable[[], object], target_s: float, device: torch.device | str = "cpu") -> int:
    """Back-to-back calls that make a sample last about `target_s` (from one timed call)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return max(1, math.ceil(target_s / max(time.perf_counter() - start, 1e-6)))


def interleave(
    fns: Mapping[str, Callable[[], object]],
    *,
    rounds: int = 5,
    max_rounds: int | None = None,
    target_s: float = 0.3,
    max_load: float = 0.2,
    device: torch.device | str = "cpu",
    monitor: LoadMonitor | None = None,
    calls: Mapping[str, int] | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> dict[str, Timing]:
    """Time already warmed-up callables round-robin until `rounds` rounds were quiet.

    A round is quiet when every runner's sample saw at most `max_load` cores of other work.
    Rounds continue past `rounds` while fewer were quiet, up to `max_rounds` (default 2 x rounds).

    Args:
        fns: name -> callable (one forward each).
        calls: calls per sample for each name; measured with `calls_per_sample` when absent.
        progress: called after each round with (round number, quiet rounds so far, rounds wanted).
    """
    monitor = monitor or LoadMonitor()
    max_rounds = max(rounds, max_rounds if max_rounds is not None else 2 * rounds)
    names = list(fns)
    reps = {n: (calls or {}).get(n) or calls_per_sample(fns[n], target_s, device) for n in names}
    samples: dict[str, list[Sample]] = {n: [] for n in names}
    quiet_rounds: list[int] = []
    for r in range(max_rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for n in order:
            samples[n].append(_time_calls(fns[n], reps[n], device, monitor))
        if all(samples[n][r].other_load <= max_load for n in names):
            quiet_rounds.append(r)
        if progress:
            progress(r + 1, len(quiet_rounds), rounds)
        if r + 1 >= rounds and (len(quiet_rounds) >= rounds or not monitor.available):
            break
    return summarize(samples, quiet_rounds)


def summarize(samples: Mapping[str, list[Sample]], quiet_rounds: Sequence[int]) -> dict[str, Timing]:
    """Keep the quiet rounds, the same for every runner; if none was quiet, all rounds (flagged noisy)."""
    out = {}
    for n, s in samples.items():
        kept = list(quiet_rounds) or list(range(len(s)))
        out[n] = Timing(s, kept, noisy=not quiet_rounds)
    return out


def paired_ratio(baseline: Timing, other: Timing) -> float:
    """Median over the rounds both kept of baseline time / other time (> 1: `other` is faster)."""
    rounds = sorted(set(baseline.kept) & set(other.kept)) or list(range(min(len(baseline.samples), len(other.samples))))
    return statistics.median(baseline.samples[r].step_s / other.samples[r].step_s for r in rounds)


# ------------------------------------------------------------------------------------------------ memory


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc), so resident memory is close to live memory."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols (libc's); no `ldconfig` subprocess
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (VmHWM) to the current resident size."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def resident_bytes() -> int | None:
    """Current resident memory of this process after releasing freed heap pages (Linux), else None."""
    _release_free_heap()
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> int | None:
    """Bytes one call of `fn` needs above what is held before it (its peak working memory).

    CUDA: `torch.cuda.max_memory_allocated` above the allocated memory before the call.
    CPU (Linux): freed heap pages are returned to the OS first (`malloc_trim`), the kernel's peak
    resident size is reset (`/proc/self/clear_refs`), and the peak after the call (VmHWM) minus the
    resident size before it is reported. Memory an allocator keeps across calls (onnxruntime's
    arena) is resident before the call and not counted, so measure such runtimes without their
    arena. Returns None where neither mechanism exists.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        gc.collect()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = resident_bytes()
    if before is None or not _reset_peak_rss():
        return None
    fn()
    peak = _status_kib("VmHWM")
    return None if peak is None else max(0, peak * 1024 - before)


# ------------------------------------------------------------------------------------------------- FLOPs


def _deform_conv2d_flops(
    input_shape: Sequence[int], weight_shape: Sequence[int], *args: Any, out_shape: Sequence[int], **kwargs: Any
) -> int:
    """FLOPs (2 per multiply-accumulate) of a deformable conv's GEMM, counted like a regular conv; the bilinear
    sampling is not counted, as in LITv2's official count."""
    out_chans, in_per_group, kh, kw = weight_shape
    return 2 * out_shape[0] * out_shape[2] * out_shape[3] * out_chans * in_per_group * kh * kw


def register_deform_conv2d_flops() -> None:
    """Teach `torch.utils.flop_counter` torchvision's deformable conv (LITv2's token merging), once."""
    try:
        op = torch.ops.torchvision.deform_conv2d
    except (AttributeError, RuntimeError):  # torchvision built without its C++ ops: nothing to count
        return
    if op not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(op)(_deform_conv2d_flops)


def count_gmacs(fn: Callable[[], object], batch_size: int) -> float:
    """Multiply-accumulates per image (billions) of one call, from `torch.utils.flop_counter`.

    Counts convolutions, linear layers, attention matmuls and deformable convs (timm's `infer_gmacs` convention).
    The counter sees plain torch ops only: count a model prepared with `optimize_for_inference(model,
    runtime="export")` and warmed up, so that position encodings, which the timed models compute once per input
    size, are not counted either (`model_gmacs`).
    """
    register_deform_conv2d_flops()
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2 / batch_size / 1e9


def model_gmacs(model: nn.Module, x: torch.Tensor) -> float:
    """`count_gmacs` of `model(x)` per image: on a copy in plain torch ops with its position encodings computed
    once (`optimize_for_inference(runtime="export")`), as the timed models run."""
    counted = optimize_for_inference(model, runtime="export")
    with torch.no_grad():
        counted(x)  # fills the position-encoding tables
        return count_gmacs(lambda: counted(x), x.shape[0])


# -------------------------------------------------------------------------------------------- GEMM roof


def gemm_roof(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    n: int | None = None,
    rounds: int = 5,
    max_load: float = 0.2,
    monitor: LoadMonitor | None = None,
) -> tuple[float, Timing]:
    """Achievable matmul throughput: (GFLOP/s, timing) of an n x n x n `torch.mm`; for int8, (GOP/s, timing) of
    `torch._int_mm` (int8 x int8 -> int32).

    n defaults to 2048 for fp32 and int8 on CPU (about 0.1 s at 180 GFLOP/s on 2 cores), 512 for half
    precisions on CPU (CPUs without native bf16 run them at a few GFLOP/s) and 8192 on CUDA.
    """
    device = torch.device(device)
    if n is None:
        n = 8192 if device.type == "cuda" else (2048 if dtype in (torch.float32, torch.int8) else 512)
    if dtype == torch.int8:
        a = torch.randint(-128, 128, (n, n), device=device, dtype=dtype)
        b = torch.randint(-128, 128, (n, n), device=device, dtype=dtype)
        matmul = torch._int_mm
    else:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        matmul = torch.mm

    def mm() -> None:
        matmul(a, b)

    mm()  # warm-up
    timing = interleave({"mm": mm}, rounds=rounds, target_s=0.2, max_load=max_load, device=device, monitor=monitor)[
        "mm"
    ]
    return 2 * n**3 / timing.step_s / 1e9, timing


def onnxruntime_int8_roof(
    threads: int, n: int = 2048, rounds: int = 5, max_load: float = 0.2, monitor: LoadMonitor | None = None
) -> tuple[float, Timing]:
    """ONNX Runtime's own int8 matmul throughput on the CPU: (GOP/s, timing) of an n x n x n `MatMulInteger`
    (uint8 activations x int8 weights -> int32, the pair a QDQ model's quantized MatMuls run), on `threads` threads.
    On CPUs without VNNI, `torch._int_mm` falls back to a slow reference loop, so int8 models are measured against
    this roof."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-128, 128, (n, n), dtype=np.int8), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8_roof",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])], [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (n, n), dtype=np.uint8)

    def mm() -> None:
        session.run(None, {"a": a})

    mm()  # warm-up
    onnx.checker.check_model(model)
    timing = interleave({"mm": mm}, rounds=rounds, target_s=0.2, max_load=max_load, monitor=monitor)["mm"]
    return 2 * n**3 / timing.step_s / 1e9, timing


# ---------------------------------------------------------------------------------------------- machine


def machine_info(device: torch.device | str = "cpu") -> dict[str, object]:
    """What a result needs to be read against: hardware, threads, versions, load at the start."""
    device = torch.device(device)
    info: dict[str, object] = {
        "cpu": cpu_name(),
        "isa": isa_flags(),
        "native_bf16": native_bf16(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        # not platform.platform(): it runs `uname -p`, and a subprocess forked from a process holding OpenVINO's
        # threads and a torch DataLoader's SIGCHLD handler crashed that process (in the test suite)
        "platform": f"{platform.system()}-{platform.release()}-{platform.machine()}",
        "device": device.type,
        "allocator": current_allocator(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "load_source": "/proc/stat" if LoadMonitor().available else "unavailable (every sample counted as quiet)",
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info
