"""The live official FasterViT code as a test oracle (the `fastervit` package, installed by .ci/run next to fastvits;
never a dependency): same weights, same input, the plain model and its inference form against the official eager."""

import pytest
import torch
from helpers import BENCH_FAST, BENCH_TINY, assert_same_rounding, small_model

import fastvits
from fastvits.bench.backends import build_official, copy_weights_to_official

pytest.importorskip("fastervit", reason="the official package is not installed: pip install --no-deps fastervit")

SMALL = dict(dim=16, in_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))


@pytest.mark.parametrize(
    ("name", "size"),
    [("fastervit_0_224", (224, 224)), ("fastervit_3_224", (224, 224)), ("fastervit_0_any_res", (256, 256))],
)
def test_live_official_code_agrees(name, size):
    """Square window grids in stage 3 (2x2, 3x3: the official code scrambles non-square ones), so carrier tokens,
    their pooling and propagation (FasterViT-3) all run."""
    ours = small_model(name).eval()
    official = build_official(name, size, SMALL)
    copy_weights_to_official(ours, official)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = official(x)
        assert_same_rounding(ours(x), expected, 64)
        torch.testing.assert_close(fastvits.optimize_for_inference(ours)(x), expected, atol=1e-5, rtol=1e-5)


def test_bench_compare_official(tmp_path):
    from fastvits.cli import main

    code = main(["bench", "fastervit_0_224", "--model-kwargs", BENCH_TINY, "--img-size", "224", "-b", "1",
                 "--backend", "eager", "eager+plain", "--compare-official", "--no-memory", *BENCH_FAST,
                 "--out", str(tmp_path), "--name", "cmp"])
    assert code == 0
    rows = (tmp_path / "cmp.csv").read_text().splitlines()
    official = [r for r in rows if ",official," in r]
    assert len(official) == 2 and all(float(r.split(",")[rows[0].split(",").index("max_abs_diff")]) < 1e-4
                                       for r in official)


def test_bench_skips_the_official_frozen_compile_outside_its_deploy_mode(tmp_path):
    """The official model assigns new position-bias buffers at every forward, so a frozen graph of it recompiles at
    every call (30 s for FasterViT-0 at 224): the bench skips that runner with the reason and times fastvits' own,
    even when it is the only backend asked for."""
    from fastvits.cli import main

    code = main(["bench", "fastervit_0_224", "--model-kwargs", BENCH_TINY, "--img-size", "224", "-b", "1",
                 "--backend", "compile+freeze", "--compare-official", "--no-memory", *BENCH_FAST,
                 "--out", str(tmp_path), "--name", "cmp"])
    assert code == 0
    rows = (tmp_path / "cmp.csv").read_text().splitlines()[1:]
    assert len(rows) == 1 and ",fastvits," in rows[0]
    notes = (tmp_path / "cmp.json").read_text()
    assert "official compile+freeze fp32 skipped" in notes and "use compile+reparam+freeze" in notes
