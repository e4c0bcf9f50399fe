"""`fastvits bench attention`: a tiny configuration end to end, the work budget, and the defaults.

No timing is asserted, only what was measured and written.
"""

import csv
import json

from fastvits.bench.attention import layer_specs
from fastvits.cli import build_parser, main

FAST = ["--rounds", "1", "--max-rounds", "1", "--warmup", "1", "--sample-time", "0", "--threads", "1"]
TINY = ["--dim", "16", "--heads", "2", "-b", "2", "--window", "4"]


def run(tmp_path, *extra: str) -> tuple[list[dict], dict]:
    assert main(["bench", "attention", *TINY, *FAST, "--out", str(tmp_path), *extra]) == 0
    with open(tmp_path / "attention.csv") as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads((tmp_path / "attention.json").read_text())


def test_tiny_sweep_writes_csv_json_png(tmp_path):
    rows, saved = run(tmp_path, "--sizes", "8", "6x10", "--no-memory")  # the memory probe is slow in pytest
    labels = [s.label for s in layer_specs(["hilo", "global", "window", "sra", "hat"], window=4)]
    assert [(r["model"], r["infer_img_size"]) for r in rows] == [(m, s) for s in ("8", "6x10") for m in labels]
    assert all(float(r["infer_samples_per_sec"]) > 0 for r in rows)
    assert all(r["infer_gmacs"] > 0 and r["infer_mem_mb"] is None for r in saved["rows"])
    assert all(r["speedup_vs"] == (labels[0] if r["model"] != labels[0] else "") for r in rows)
    assert [r["tokens"] for r in saved["rows"]] == [64] * 5 + [60] * 5
    assert len(saved["summary"]) == 8 and saved["machine"]["torch_threads"] == 1
    assert (tmp_path / "attention.png").stat().st_size > 10_000


def test_configs_over_the_budget_are_skipped_with_a_note(tmp_path):
    rows, saved = run(tmp_path, "--sizes", "4", "12", "--kinds", "hilo", "global", "--max-gflop", "0.002")
    skipped = [(r["model"], r["infer_img_size"]) for r in rows if r["backend"] == "skipped >max-gflop"]
    assert skipped == [("global (MSA)", "12")]
    assert len(saved["notes"]) == 1 and "--max-gflop" in saved["notes"][0]
    assert all(r["infer_mem_mb"] is not None for r in saved["rows"] if r["backend"] == "eager")
    assert (tmp_path / "attention.png").exists()


def test_defaults_are_the_litv2_setting():
    args = build_parser().parse_args(["bench", "attention"])
    assert (args.dim, args.heads, args.sizes, args.batch_size) == (768, 12, [(14, 14)], 64)
    assert args.baseline == "hilo" and args.kinds == ["global", "window", "sra", "hilo", "hat"]
