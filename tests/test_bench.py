"""`fastvits bench`: command line, files written, measurement bookkeeping, backends' outputs.

Tiny models, one round, no timing is ever asserted: only what was measured, how it was
bookkept and that every backend returns the plain eager output.
"""

import csv
import ctypes
import json
import mmap
import os
import re
import subprocess
import sys

import pytest
import torch
from helpers import BENCH_FAST, BENCH_TINY
from torch import nn

from fastvits.bench import measure
from fastvits.bench.backends import BackendSpec, copy_weights_to_official, parse_backends
from fastvits.bench.cli import parse_size
from fastvits.bench.report import CSV_COLUMNS, official_top1, pareto_front
from fastvits.bench.suite import allocator_note, expand_models
from fastvits.cli import build_parser, main
from fastvits.models.fastervit import official_state_dict


def _bench(tmp_path, *extra: str) -> tuple[list[dict], dict]:
    model = ["fastervit_0_224", "--model-kwargs", BENCH_TINY]
    argv = ["bench", *model, "-b", "1", "--out", str(tmp_path), *BENCH_FAST, *extra]
    assert main(argv) == 0
    with open(tmp_path / "bench.csv") as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads((tmp_path / "bench.json").read_text())


# ------------------------------------------------------------------------------------------ command line
@pytest.mark.parametrize(
    "argv, models",
    [
        (["bench", "fastervit_0_224"], ["fastervit_0_224"]),
        (["bench", "models", "fastervit_0_224", "fastervit_1_224"], ["fastervit_0_224", "fastervit_1_224"]),
        (["bench", "fastervit_0_224", "-b", "1", "4"], ["fastervit_0_224"]),
    ],
)
def test_bench_without_mode_means_models(argv, models):
    args = build_parser().parse_args(argv)
    assert args.func.__name__ == "run_models"
    assert args.models == models


def test_bench_alone_runs_the_default_mode():
    assert callable(build_parser().parse_args(["bench"]).func)


def test_sizes_and_backend_specs():
    assert parse_size("224") == (224, 224)
    assert parse_size("576x960") == (576, 960)
    assert str(BackendSpec.parse("compile+reparam+cl")) == "compile+cl+reparam"
    with pytest.raises(ValueError, match="unknown backend"):
        BackendSpec.parse("tensorrt")
    with pytest.raises(ValueError, match="cl"):
        BackendSpec.parse("onnxruntime+cl")
    with pytest.raises(ValueError, match="contradict"):
        BackendSpec.parse("eager+plain+reparam")
    assert str(BackendSpec.parse("eager+plain+cl")) == "eager+cl+plain"
    assert str(BackendSpec.parse("compile+freeze+reparam")) == "compile+reparam+freeze"
    with pytest.raises(ValueError, match="compile"):
        BackendSpec.parse("eager+freeze")
    specs = parse_backends(["eager", "eager+plain", "onnxruntime"], compile=True, channels_last=True)
    assert [str(s) for s in specs] == ["compile+cl", "compile+cl+plain", "onnxruntime"]


def test_wildcards_expand_to_fastvits_models():
    assert "fastervit_0_224" in expand_models(["fastervit_0_*"])
    with pytest.raises(ValueError, match="no fastvits or timm model"):
        expand_models(["no_such_model_*"])


def test_top1_lookup():
    assert official_top1("fastervit_0_224") == 82.1
    assert official_top1("faster_vit_1_224") == 83.2
    assert official_top1("swin_tiny_patch4_window7_224") == 81.4
    assert official_top1("resnet18") is None


# ------------------------------------------------------------------------------------------ bookkeeping
class _Monitor:
    """Reports the given other-load for each successive sample."""

    available = True

    def __init__(self, loads):
        self.loads = list(loads)

    def snapshot(self):
        return (0.0, 0, 0.0)

    def other_load(self, start, end):
        return self.loads.pop(0) if self.loads else 0.0


def test_interleave_rotates_and_keeps_quiet_rounds():
    order = []
    fns = {n: (lambda n=n: order.append(n)) for n in "abc"}
    # round 1 quiet, round 2 noisy for b, round 3 quiet: 2 quiet rounds wanted -> 3 rounds run
    monitor = _Monitor([0, 0, 0, 0, 0.9, 0, 0, 0, 0])
    t = measure.interleave(fns, rounds=2, calls={n: 1 for n in fns}, monitor=monitor)
    assert order == list("abcbcacab")
    assert t["a"].kept == t["b"].kept == [0, 2] and not t["a"].noisy


def test_interleave_falls_back_to_all_rounds_when_none_is_quiet():
    fns = {"a": lambda: None, "b": lambda: None}
    t = measure.interleave(fns, rounds=1, max_rounds=2, calls={"a": 1, "b": 1}, monitor=_Monitor([1.0] * 4))
    assert len(t["a"].samples) == 2 and t["a"].kept == [0, 1] and t["a"].noisy


def test_ratio_is_median_of_per_round_pairs():
    def timing(steps):
        return measure.Timing([measure.Sample(s, 1, 0.0) for s in steps], list(range(len(steps))), False)

    # the per-round ratios are 2, 2 and 10 (a slow outlier round hits both): median 2
    assert measure.paired_ratio(timing([2.0, 4.0, 50.0]), timing([1.0, 2.0, 5.0])) == pytest.approx(2.0)


def test_pareto_front():
    pts = [(10, 82), (20, 79), (5, 83), (8, 79), (20, 81)]  # (8, 79) and (20, 79) are dominated
    assert pareto_front(pts) == [2, 0, 4]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS from /proc")
def test_peak_memory_sees_a_large_temporary():
    def fn():
        torch.ones(64 * 2**20 // 4).sum()  # 64 MB, written then freed

    peak = measure.peak_memory(fn)
    assert peak is not None and peak >= 48 * 2**20


# ---------------------------------------------------------------------------------------- official weights
def test_official_state_dict_renames_and_aliases():
    sd = {
        "levels.2.blocks.0.attn.rel_pos.cpb_mlp.0.weight": torch.zeros(1),
        "levels.2.global_tokenizer.pos_embed.weight": torch.ones(1),
    }
    out = official_state_dict(sd)
    assert set(out) == {
        "levels.2.blocks.0.attn.pos_emb_funct.cpb_mlp.0.weight",
        "levels.2.global_tokenizer.pos_embed.weight",
        "levels.2.global_tokenizer.to_global_feature.pos.weight",
    }


def test_weight_copy_allows_only_derived_buffers_missing():
    class Official(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.register_buffer("relative_bias", torch.zeros(1))

    ours = nn.Module()
    ours.fc = nn.Linear(2, 2)
    official = Official()
    copy_weights_to_official(ours, official)
    assert torch.equal(official.fc.weight, ours.fc.weight)
    ours.extra = nn.Linear(1, 1)
    with pytest.raises(RuntimeError, match="unexpected"):
        copy_weights_to_official(ours, official)


def test_compare_official_explains_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastervit", None)  # import fastervit -> ImportError
    argv = [
        "bench",
        "fastervit_0_224",
        "--model-kwargs",
        BENCH_TINY,
        "-b",
        "1",
        "--img-size",
        "64",
        "--compare-official",
        *BENCH_FAST,
    ]
    assert main(argv) == 2
    assert "pip install fastervit" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "no_such_model"], "unknown model 'no_such_model': neither a fastvits model"),
        (["bench", "no_such_model_*"], r"no fastvits or timm model matches 'no_such_model_\*'"),
        (["bench", "fastervit_0_224", "--img-size", "16"], "at least 32x32 px, got 16: pass a larger --img-size"),
        (["bench", "fastervit_0_224", "--backend", "tensorrt"], "unknown backend 'tensorrt'"),
        (["bench", "fastervit_0_224", "--checkpoint", "nope.pth"], "checkpoint file nope.pth does not exist"),
        (["bench", "attention", "--dim", "50", "--heads", "4"], "--dim 50 --heads 4: .*multiple of num_heads=4"),
    ],
)
def test_user_mistakes_are_one_line_errors(argv, message, capsys):
    assert main(argv if "attention" in argv else [*argv, *BENCH_FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(f"fastvits bench: error: .*{message}", err) and "Traceback" not in err


@pytest.mark.parametrize("option", ["-b 0", "--threads 0", "--rounds 0", "--warmup -1", "--sample-time -1"])
def test_counts_and_times_are_checked_by_the_parser(option, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["bench", "fastervit_0_224", *option.split()])
    assert e.value.code == 2 and "is not a" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- end to end
def test_bench_writes_csv_json_png_and_fast_paths_match(tmp_path):
    backends = ["eager", "eager+reparam", "eager+cl", "eager+plain"]
    rows, report = _bench(tmp_path, "--img-size", "64", "96x64", "--backend", *backends)
    with open(tmp_path / "bench.csv") as f:
        header = next(csv.reader(f))
    assert header[:7] == [
        "model",
        "infer_samples_per_sec",
        "infer_step_time",
        "infer_batch_size",
        "infer_img_size",
        "param_count",
        "infer_gmacs",
    ]
    assert header == list(CSV_COLUMNS)
    assert [r["infer_img_size"] for r in rows] == ["64"] * 4 + ["96x64"] * 4
    assert [r["backend"] for r in rows[:4]] == backends
    for r in rows:
        assert float(r["infer_samples_per_sec"]) > 0 and float(r["infer_gmacs"]) > 0
        assert r["top1"] == "82.1" and r["rounds_run"] == "1"
    for r in rows[1:4] + rows[5:]:  # every fast path gives the plain path's output
        assert float(r["max_abs_diff"]) < 1e-4, r
    if torch.backends.mkldnn.is_available():  # +plain really ran another path than eager (fused kernels off)
        assert float(rows[3]["max_abs_diff"]) > 0
    assert report["settings"]["backends"] == backends
    assert report["rows"][0]["samples"] and report["machine"]["roof_gflops"] == 50
    if os.path.exists("/proc/self/stat"):  # Linux: getrusage counts minor page faults
        assert all(float(r["page_faults"]) >= 0 for r in rows)
    assert (tmp_path / "bench_pareto.png").stat().st_size > 0


def test_onnxruntime_backend_matches_eager(tmp_path):
    pytest.importorskip("onnxruntime")
    # 224 px: the HAT stage has a 2x2 window grid, so carrier tokens are exported too
    rows, _ = _bench(
        tmp_path,
        "--img-size",
        "224",
        "--backend",
        "eager",
        "onnxruntime",
        "--onnx-exporter",
        "torchscript",
        "--no-memory",
    )
    assert rows[1]["backend"] == "onnxruntime"
    assert float(rows[1]["max_abs_diff"]) < 1e-4


def test_compile_backend_matches_eager(tmp_path):
    rows, _ = _bench(tmp_path, "--img-size", "64", "--backend", "eager", "compile", "--no-memory")
    assert float(rows[1]["max_abs_diff"]) < 1e-4


def test_gmacs_are_the_work_of_a_timed_call():
    """The reported GMACs are the plain model's work less its position MLPs, which the timed (optimized) models run
    once per input size: the MLPs' share is counted by hand from their inputs."""
    from helpers import small_model

    from fastvits.bench.suite import gmacs_and_params

    model = small_model("fastervit_0_224").eval()
    gmacs, _ = gmacs_and_params(model, (224, 224), torch.device("cpu"))  # before the hooks: it copies the model
    mlp_macs = [0]

    def count(mlp, args, out):  # Linear(2, hidden) -> ReLU -> Linear(hidden, out) on every row of the input
        rows, hidden = args[0].shape[:-1].numel(), mlp[0].out_features
        mlp_macs[0] += rows * (2 * hidden + hidden * mlp[2].out_features)

    for name, m in model.named_modules():
        if name.endswith("cpb_mlp"):
            m.register_forward_hook(count)
    x = torch.randn(1, 3, 224, 224)  # 2x2 windows in stage 3: carrier tokens and their position MLPs
    with torch.no_grad():
        plain = measure.count_gmacs(lambda: model(x), 1)
    assert mlp_macs[0] > 0
    assert gmacs == pytest.approx(plain - mlp_macs[0] / 1e9, rel=1e-9)


def _touch_fresh_memory(size: int = 2**26) -> None:
    """Map `size` bytes anew and write every byte: one first-touch fault per page, whatever state the C allocator
    is in (glibc's thresholds move with what the process freed before)."""
    block = mmap.mmap(-1, size)
    view = ctypes.c_char.from_buffer(block)
    ctypes.memset(ctypes.addressof(view), 1, size)
    del view
    block.close()


def _transparent_huge_pages() -> str | None:
    """The kernel's transparent huge page mode ("always", "madvise", "never"), None where it has none."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()  # e.g. "always [madvise] never"
    except OSError:
        return None
    return text[text.index("[") + 1 : text.index("]")] if "[" in text else None


@pytest.mark.skipif(not measure.machine_info()["allocator"].startswith("glibc"), reason="glibc's malloc behaviour")
@pytest.mark.skipif(
    _transparent_huge_pages() == "always",
    reason="transparent huge pages are 'always': the kernel may back the block with 2 MB pages, one fault each",
)
def test_page_faults_count_memory_taken_fresh_from_the_system():
    """A 64 MB block mapped afresh for every call: one minor fault per page per call (16,384 pages of 4 KiB,
    1,024 of 64 KiB)."""
    pages = 2**26 // os.sysconf("SC_PAGE_SIZE")
    timings = measure.interleave({"fresh": _touch_fresh_memory, "none": lambda: None}, rounds=2, target_s=0.01)
    assert timings["fresh"].page_faults >= 0.95 * pages, (timings["fresh"].page_faults, pages)
    assert timings["none"].page_faults < 100


def _allocator_seen(env: dict[str, str]) -> str:
    code = "from fastvits.bench.measure import machine_info; print(machine_info()['allocator'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps")
def test_machine_info_names_the_allocator():
    """Results say which C allocator ran them (a preloaded tcmalloc changes large-batch figures)."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    assert _allocator_seen(env) == "glibc malloc"
    env["MALLOC_TRIM_THRESHOLD_"] = "1000000000"
    assert _allocator_seen(env) == "glibc malloc (MALLOC_TRIM_THRESHOLD_=1000000000)"
    tcmalloc = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"  # Debian's libtcmalloc-minimal4, if installed
    if os.path.exists(tcmalloc):
        assert _allocator_seen({**env, "LD_PRELOAD": tcmalloc}) == "tcmalloc"


def _row(model: str, faults: float | None, batch: int) -> dict:
    return dict(model=model, impl="fastvits", backend="eager", infer_batch_size=batch, page_faults=faults)


def test_allocator_note_only_for_many_page_faults_under_glibc():
    rows = [_row("a", 50_000, 32), _row("b", 250_000, 32), _row("c", 500, 32), _row("d", 900, 1), _row("gpu", None, 8)]
    note = allocator_note(rows, "glibc malloc")
    assert note is not None
    assert note.startswith("2 of 5 rows") and "most: b fastvits eager batch 32, 250,000 page faults" in note
    assert "fastvits --allocator tcmalloc" in note and "LD_PRELOAD=" in note and "libtcmalloc" in note
    assert allocator_note(rows, "tcmalloc") is None
    assert allocator_note(rows[2:], "glibc malloc (MALLOC_ARENA_MAX=2)") is None
