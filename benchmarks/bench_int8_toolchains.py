"""Which int8 toolchain: ONNX Runtime QDQ static, OpenVINO with NNCF, torchao PT2E, timed interleaved in one run.

For each model and batch size, with the same weights, calibration images and input:
- `fp32 eager`: `optimize_for_inference(model)` (the best fp32 mode of the earlier runs), the speed baseline;
- `fp32 onnxruntime`, `fp32 openvino`: fp32 artifacts (`fastvits.deploy.export_artifact`), OpenVINO told
  `INFERENCE_PRECISION_HINT=f32` (it computes in bf16 on CPUs that have it otherwise);
- `int8 onnxruntime`: the int8 artifact: `onnxruntime.quantization.quantize_static`, QDQ format, per-channel int8
  weights, uint8 activations, MinMax calibration, the image-reading conv in fp32 (`fastvits.deploy.int8`);
- `int8 openvino`: the int8 artifact: `nncf.quantize` (default preset) with the same layer kept in fp32;
- `int8 torchao`: `torchao.quantization.pt2e` with `X86InductorQuantizer`'s default static config, then
  `torch.compile` (freezing on), as the torchao docs run it.
Each int8 model is calibrated on the same `--calibration-images` Fashion-MNIST train images (random weights: only
the speed and the logit error mean something), and scored on `--eval-images` test images against fp32: largest logit
error over the fp32 logits' scale, and top-1 agreement.

    python benchmarks/bench_int8_toolchains.py --threads 2 --out results/int8_toolchains.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from timm.data import resolve_data_config

import fastvits
from fastvits.bench.measure import interleave, machine_info, paired_ratio
from fastvits.deploy import CalibrationSet, export_artifact, load_calibration

Forward = Callable[[torch.Tensor], torch.Tensor]


def artifact(model: torch.nn.Module, folder: Path, runtime: str, precision: str, size: int,
             calibration: CalibrationSet | None = None) -> Forward:
    """The library's artifact (random weights: no drift check)."""
    config = {**resolve_data_config(model=model), "input_size": (3, size, size), "crop_pct": 1.0}
    return export_artifact(model, folder, precision=precision, runtime=runtime, input_size=(3, size, size),
                           data_config=config, calibration=calibration, check_drift=False)


def torchao_int8(model: torch.nn.Module, calibration: CalibrationSet, example: torch.Tensor) -> Forward:
    import torch._inductor.config as inductor_config
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    form = fastvits.optimize_for_inference(model, runtime="export")
    batch = torch.export.Dim("batch", min=1, max=1024)
    graph = torch.export.export(form, (example,), dynamic_shapes=({0: batch},)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for b in calibration.batches(8):
            prepared(b)
    compiled = torch.compile(convert_pt2e(prepared))

    def forward(x: torch.Tensor) -> torch.Tensor:
        with inductor_config.patch(freezing=True):  # compilation happens at the first call of each shape
            return compiled(x)

    return forward


def rel_error(ref: torch.Tensor, out: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["fastervit_0_224", "litv2_s"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--eval-images", type=int, default=32)
    parser.add_argument("--toolchains", nargs="+", default=["onnxruntime", "openvino", "torchao"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    tmp = Path(tempfile.mkdtemp(prefix="int8-toolchains-"))
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = fastvits.create_model(name).eval()
        config = {**resolve_data_config(model=model), "input_size": (3, args.img_size, args.img_size), "crop_pct": 1.0}
        calibration = load_calibration("fashion-mnist", config, args.calibration_images)
        held_out = load_calibration("fashion-mnist", config, args.eval_images, split="test").images
        forms: dict[str, Forward] = {"fp32 eager": fastvits.optimize_for_inference(model)}
        build_s: dict[str, float] = {}
        for toolchain in args.toolchains:
            t0 = time.perf_counter()
            if toolchain in ("onnxruntime", "openvino"):
                for precision in ("fp32", "int8"):
                    forms[f"{precision} {toolchain}"] = artifact(
                        model, tmp / f"{name}-{toolchain}-{precision}", toolchain, precision, args.img_size,
                        calibration if precision == "int8" else None)
            elif toolchain == "torchao":
                forms["int8 torchao"] = torchao_int8(model, calibration, held_out[:2])
            build_s[toolchain] = time.perf_counter() - t0
            print(f"{name}: {toolchain} ready in {build_s[toolchain]:.0f} s", flush=True)
        with torch.inference_mode():
            ref = forms["fp32 eager"](held_out)
            errors = {}
            for form_name, form in forms.items():
                out = torch.cat([form(b) for b in held_out.split(8)])
                errors[form_name] = (rel_error(ref, out), (out.argmax(1) == ref.argmax(1)).float().mean().item())
            for bs in args.batch_sizes:
                x = held_out[:bs] if bs <= len(held_out) else held_out.repeat(-(-bs // len(held_out)), 1, 1, 1)[:bs]
                for form in forms.values():  # warm-up: compilation, position tables, packed weights
                    form(x)
                timings = interleave({k: (lambda f=f: f(x)) for k, f in forms.items()}, rounds=args.rounds)
                base = timings["fp32 eager"]
                for form_name, t in timings.items():
                    row = dict(model=name, batch_size=bs, form=form_name, img_s=bs / t.step_s,
                               vs_fp32_eager=paired_ratio(base, t), rel_logit_err=errors[form_name][0],
                               top1_agreement=errors[form_name][1], noisy=t.noisy)
                    rows.append(row)
                    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                          flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(machine=machine_info(), rows=rows), indent=1))


if __name__ == "__main__":
    main()
