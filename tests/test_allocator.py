"""`fastvits --allocator`: finding an allocator library, clear errors, and running a command under it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BENCH_FAST, BENCH_TINY

from fastvits import allocator
from fastvits.allocator import AllocatorNotFound, find_allocator, relaunch_with_allocator

linux_only = pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="LD_PRELOAD and /proc/self/maps")


def _loaded_libm() -> Path:
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.rstrip().endswith(("/libm.so.6", "/libm.so")):
            return Path(line.split()[-1])
    pytest.skip("no libm mapped into this process")


@pytest.fixture
def fake_tcmalloc(tmp_path) -> tuple[Path, dict[str, str]]:
    """(a copy of libm under tcmalloc's file name, the environment without a preload): CI machines have no tcmalloc."""
    fake = tmp_path / "libtcmalloc_minimal.so.4"
    shutil.copy(_loaded_libm(), fake)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "FASTVITS_ALLOCATOR_RELAUNCHED")}
    return fake, env


def test_missing_library_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(allocator, "_search_dirs", lambda: [tmp_path])
    with pytest.raises(AllocatorNotFound, match=r"libtcmalloc_minimal\.so\.4.*apt-get install libtcmalloc-minimal4"):
        find_allocator("tcmalloc")
    with pytest.raises(AllocatorNotFound, match="--allocator /path/to/lib.so"):
        find_allocator("jemalloc")


def test_bad_names_and_paths(tmp_path):
    with pytest.raises(AllocatorNotFound, match="one of tcmalloc, jemalloc, mimalloc"):
        find_allocator("ptmalloc")
    with pytest.raises(AllocatorNotFound, match="not a tcmalloc, jemalloc or mimalloc library"):
        find_allocator(str(tmp_path / "libtcmalloc.so.4"))  # no such file
    other = tmp_path / "libfoo.so"
    other.write_bytes(b"")
    with pytest.raises(AllocatorNotFound, match="not a tcmalloc"):
        find_allocator(str(other))


def test_no_relaunch_when_already_in_use(monkeypatch, tmp_path):
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"")
    monkeypatch.setattr(allocator, "current_allocator", lambda: "jemalloc")
    assert find_allocator(str(lib)) == ("jemalloc", lib.resolve())
    relaunch_with_allocator(str(lib), ["bench"])  # would replace the test process otherwise


def test_a_preload_that_does_not_take_is_an_error_not_a_loop(monkeypatch, tmp_path):
    lib = tmp_path / "libtcmalloc.so.4"
    lib.write_bytes(b"")
    monkeypatch.setattr(allocator, "current_allocator", lambda: "glibc malloc")
    monkeypatch.setenv("FASTVITS_ALLOCATOR_RELAUNCHED", "1")
    with pytest.raises(AllocatorNotFound, match="was preloaded but is not in use"):
        relaunch_with_allocator(str(lib), ["bench"])


@linux_only
def test_command_runs_again_under_the_allocator(tmp_path, fake_tcmalloc):
    """The command re-runs with the library preloaded, and its results name the allocator. A copy of libm under
    tcmalloc's file name stands in for tcmalloc, which CI machines do not have."""
    fake, env = fake_tcmalloc
    bench = ["bench", "fastervit_0_224", "--model-kwargs", BENCH_TINY, "-b", "1", *BENCH_FAST, "--no-memory"]
    argv = ["--allocator", str(fake), *bench, "--out", str(tmp_path)]
    run = subprocess.run([sys.executable, "-m", "fastvits.cli", *argv], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    machine = json.loads((tmp_path / "bench.json").read_text())["machine"]
    assert machine["allocator"] == "tcmalloc"


@linux_only
def test_openvino_is_refused_under_a_preloaded_allocator(tmp_path, fake_tcmalloc):
    """OpenVINO aborts the process ("free(): invalid size") with tcmalloc or jemalloc preloaded, so a run that asks
    for it there skips it with the reason (bench) or exits 2 (export) before OpenVINO is loaded."""
    fake, env = fake_tcmalloc
    bench = ["bench", "fastervit_0_224", "--model-kwargs", BENCH_TINY, "-b", "1", *BENCH_FAST, "--no-memory",
             "--backend", "eager", "openvino"]
    run = subprocess.run([sys.executable, "-m", "fastvits.cli", "--allocator", str(fake), *bench, "--out",
                          str(tmp_path)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "bench.json").read_text())
    assert [row["backend"] for row in results["rows"]] == ["eager"]
    skipped = "openvino fp32 skipped: OpenVINO aborts in a process with tcmalloc preloaded"
    assert any(skipped in note for note in results["notes"])
    export = ["export", "fastervit_0_224", "--model-kwargs", BENCH_TINY, "--runtime", "openvino", "--out",
              str(tmp_path / "artifact")]
    run = subprocess.run([sys.executable, "-m", "fastvits.cli", "--allocator", str(fake), *export], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 2 and "without `fastvits --allocator`" in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "artifact").exists()


def test_names_are_looked_up_even_where_a_folder_has_that_name(monkeypatch, tmp_path):
    (tmp_path / "tcmalloc").mkdir()
    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    (lib_dir / "libtcmalloc.so.4").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(allocator, "_search_dirs", lambda: [lib_dir])
    assert find_allocator("tcmalloc") == ("tcmalloc", lib_dir / "libtcmalloc.so.4")
