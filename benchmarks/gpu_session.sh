#!/usr/bin/env bash
# Issue 4's GPU figures in two short runs, for a session that is lent an H100/H200 (device tool, ~15 min in all).
#
#   benchmarks/gpu_session.sh eager     # FasterViT-0..3 vs the official code, LITv2-S/M/B: eager, batch 256, bf16
#   benchmarks/gpu_session.sh compile   # the same with torch.compile (inductor) on both sides
#
# Runs from the repository root with the machine's own PyTorch (no install: fastvits from src/). The official
# `fastervit` wheel travels in .whl/ (ignored by git; `pip download fastervit==1.0.0 --no-deps -d .whl`, then
# `carry: [".whl"]`, with `.whl/` in .git/info/exclude). Results go to $OUT (the device tool's folder; 7 files per
# mode, plots dropped) or results/gpu. Smoke test of the plumbing on a CPU, with a venv's python first on PATH:
#   DEVICE=cpu BATCH=1 MODELS=fastervit_0_224 LITV2=litv2_s OUT=/tmp/gpu benchmarks/gpu_session.sh eager
set -euo pipefail
mode=${1:?usage: gpu_session.sh eager|compile}
out=${OUT:-results/gpu}
device=${DEVICE:-cuda}
batch=${BATCH:-256}
read -r -a fastervit <<<"${MODELS:-fastervit_0_224 fastervit_1_224 fastervit_2_224 fastervit_3_224}"
read -r -a litv2 <<<"${LITV2:-litv2_s litv2_m litv2_b}"
mkdir -p "$out"
if compgen -G ".whl/fastervit-*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fastervit_site .whl/fastervit-*.whl
    export PYTHONPATH=/tmp/fastervit_site:${PYTHONPATH:-}
fi
export PYTHONPATH=src:${PYTHONPATH:-} PYTHONUNBUFFERED=1

{
    date -u
    if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; fi
    python3 -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)"
} | tee "$out/machine_$mode.txt"

case $mode in
    eager) backends=(eager eager+reparam) ;;
    compile) backends=(compile+reparam) ;;
    *) echo "gpu_session.sh: mode must be eager or compile, got '$mode'" >&2; exit 2 ;;
esac
if [[ $mode == eager && $device == cuda ]]; then
    python3 benchmarks/gemm_roof.py --device cuda --dtype bf16 --out "$out/gemm_roof_cuda.json"
fi
python3 benchmarks/bench_cpu_vs_official.py --device "$device" --precision bf16 --batch-sizes "$batch" \
    --models "${fastervit[@]}" --backends "${backends[@]}" --rounds 5 --threads 8 --out "$out/fastervit_$mode"
python3 -m fastvits.cli bench "${litv2[@]}" --device "$device" --precision bf16 -b "$batch" \
    --backend "${backends[@]}" --threads 8 --out "$out" --name "litv2_$mode"
# the device tool brings back at most 8 files: drop the plots (`fastvits.bench.report.plot_pareto` redraws them from the JSON rows)
rm -f "$out"/*.png "$out"/*/*.png
