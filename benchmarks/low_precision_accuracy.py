"""Logits of every low-precision form against float32, side by side on Fashion-MNIST test images.

Each source is a training run folder (`benchmarks/train_fashion_mnist.py` makes them; its trained weights and input
size) or a fastvits model name (seeded random weights at the model's own input size, 224 for FasterViT-0 and LITv2-S,
the 28-px images resized by the model's evaluation transform). Forms: the float32 inference form
(`optimize_for_inference`), its bf16 form (`precision="bf16"`), a bf16 OpenVINO artifact where the CPU has native
bf16, and int8 artifacts for ONNX Runtime and OpenVINO (`fastvits.deploy.export_artifact`, calibrated on
`--calibration-images` Fashion-MNIST *train* images, evenly spaced), all fed the same preprocessed test images. Per
form: top-1 and its change against float32 in points (trained runs only: random weights have no classes to be right
about), top-1 agreement with float32, and the largest logit difference over the largest float32 logit. Random
weights put the logits of all classes close together, so their agreement is a pessimistic figure, and their int8
artifacts are exported without the drift check (which they fail for that reason). Writes a Markdown table and JSON.

    python benchmarks/train_fashion_mnist.py --only fastervit litv2
    python benchmarks/low_precision_accuracy.py runs/fashion-mnist/fastervit runs/fashion-mnist/litv2 \\
        --out runs/fashion-mnist/low_precision
    python benchmarks/low_precision_accuracy.py fastervit_0_224 litv2_s --test-images 500 --out results/accuracy_224
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

import fastvits
from fastvits.bench.measure import machine_info
from fastvits.deploy import export_artifact, load_calibration
from fastvits.inference.cpu_features import native_bf16
from fastvits.train.data import eval_transform
from fastvits.train.fashion_mnist import FashionMNIST
from fastvits.train.modeling import load_run


def load_source(source: str) -> tuple[str, nn.Module, dict[str, Any], bool]:
    """(model name, model in eval mode, data config, trained on Fashion-MNIST) of a run folder or a model name."""
    if Path(source).is_dir():
        model, spec = load_run(Path(source), "model")
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.data_config.items()}
        return spec.name, model.eval(), config, True
    torch.manual_seed(0)
    model = fastvits.create_model(source).eval()
    return source, model, timm.data.resolve_data_config({}, model=model), False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", help="training run folders or fastvits model names")
    parser.add_argument("--calibration-images", type=int, default=128)
    parser.add_argument("--test-images", type=int, default=None, help="the first N test images (default all 10k)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/fashion-mnist/low_precision"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    artifacts = [("int8", "onnxruntime"), ("int8", "openvino")]
    if native_bf16() is not None:
        artifacts.insert(0, ("bf16", "openvino"))
    rows = []
    for source in args.sources:
        name, model, config, trained = load_source(source)
        test = FashionMNIST("test", transform=eval_transform(config))
        count = min(args.test_images or len(test), len(test))
        images = torch.stack([test[i][0] for i in range(count)])
        labels = torch.as_tensor(test.targets[:count])
        calibration = load_calibration("fashion-mnist", config, args.calibration_images)
        tmp = Path(tempfile.mkdtemp(prefix="low-precision-"))
        forms = {
            "fp32": fastvits.optimize_for_inference(model),
            "bf16": fastvits.optimize_for_inference(model, precision="bf16"),
        }
        for precision, runtime in artifacts:
            forms[f"{precision} {runtime}"] = export_artifact(
                model, tmp / f"{precision}-{runtime}", precision=precision, runtime=runtime,
                input_size=config["input_size"], data_config=config, calibration=calibration, check_drift=trained)
        with torch.inference_mode():
            logits = {form: torch.cat([run(b) for b in images.split(250)]) for form, run in forms.items()}
        ref = logits["fp32"]
        ref_top1 = (ref.argmax(1) == labels).float().mean().item() * 100
        for form, out in logits.items():
            top1 = (out.argmax(1) == labels).float().mean().item() * 100 if trained else None
            rows.append(dict(
                source=source, model=name, form=form, images=count, top1=top1,
                delta=top1 - ref_top1 if trained else None,
                agreement=(out.argmax(1) == ref.argmax(1)).float().mean().item(),
                rel_logit_err=((out - ref).abs().max() / ref.abs().max()).item(),
                kept_in_fp32=getattr(forms[form], "metadata", {}).get("kept_in_fp32"),
            ))
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.json").write_text(json.dumps(dict(machine=machine_info(), rows=rows), indent=1))
    lines = ["| source | form | test images | top-1 | change (points) | agreement with fp32 | max logit err / scale |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {Path(r['source']).name} | {r['form']} | {r['images']} | "
              f"{'-' if r['top1'] is None else format(r['top1'], '.2f')} | "
              f"{'-' if r['delta'] is None else format(r['delta'], '+.2f')} | {r['agreement']:.4f} | "
              f"{r['rel_logit_err']:.4f} |" for r in rows]
    (args.out / "accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
