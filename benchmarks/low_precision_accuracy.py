"""Fashion-MNIST test top-1 of trained models in float32, bf16 and int8, side by side on the 10k test images.

For each training run folder (`benchmarks/train_fashion_mnist.py` makes them): the float32 inference form
(`optimize_for_inference`), its bf16 form (`precision="bf16"`), and int8 artifacts for ONNX Runtime and OpenVINO
(`fastvits.deploy.export_artifact`, calibrated on `--calibration-images` Fashion-MNIST *train* images, evenly spaced),
all fed the same preprocessed test images. Per form: top-1, the change against float32 in points, top-1 agreement
with float32, and the largest logit difference over the largest float32 logit. Writes a Markdown table and JSON.

    python benchmarks/train_fashion_mnist.py --only fastervit litv2
    python benchmarks/low_precision_accuracy.py runs/fashion-mnist/fastervit runs/fashion-mnist/litv2 \\
        --out runs/fashion-mnist/low_precision
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import torch

import fastvits
from fastvits.bench.measure import machine_info
from fastvits.deploy import export_artifact, load_calibration
from fastvits.train.data import eval_transform
from fastvits.train.fashion_mnist import FashionMNIST
from fastvits.train.modeling import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--calibration-images", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/fashion-mnist/low_precision"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    rows = []
    for run in args.runs:
        model, spec = load_run(run, "model")
        model.eval()
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.data_config.items()}
        test = FashionMNIST("test", transform=eval_transform(config))
        images = torch.stack([test[i][0] for i in range(len(test))])
        labels = torch.as_tensor(test.targets)
        calibration = load_calibration("fashion-mnist", config, args.calibration_images)
        tmp = Path(tempfile.mkdtemp(prefix="low-precision-"))
        forms = {
            "fp32": fastvits.optimize_for_inference(model),
            "bf16": fastvits.optimize_for_inference(model, precision="bf16"),
        }
        for runtime in ("onnxruntime", "openvino"):
            forms[f"int8 {runtime}"] = export_artifact(
                model, tmp / runtime, precision="int8", runtime=runtime, input_size=config["input_size"],
                data_config=config, calibration=calibration)
        with torch.inference_mode():
            logits = {name: torch.cat([form(b) for b in images.split(250)]) for name, form in forms.items()}
        ref = logits["fp32"]
        for name, out in logits.items():
            top1 = (out.argmax(1) == labels).float().mean().item() * 100
            rows.append(dict(
                run=str(run), model=spec.name, form=name, top1=top1,
                delta=top1 - (ref.argmax(1) == labels).float().mean().item() * 100,
                agreement=(out.argmax(1) == ref.argmax(1)).float().mean().item(),
                rel_logit_err=((out - ref).abs().max() / ref.abs().max()).item(),
                kept_in_fp32=getattr(forms[name], "metadata", {}).get("kept_in_fp32"),
            ))
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.json").write_text(json.dumps(dict(machine=machine_info(), rows=rows), indent=1))
    lines = ["| run | form | top-1 | change (points) | agreement with fp32 | max logit err / scale |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {Path(r['run']).name} | {r['form']} | {r['top1']:.2f} | {r['delta']:+.2f} | {r['agreement']:.4f} | "
              f"{r['rel_logit_err']:.4f} |" for r in rows]
    (args.out / "accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
