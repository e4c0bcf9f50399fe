"""`fastvits export`: a deployable artifact (ONNX Runtime or OpenVINO; fp32, bf16 or int8) with metadata.

Examples:
  fastvits export runs/fashion-mnist/fastervit --precision int8 --calibration fashion-mnist --out artifacts/fv-int8
  fastvits export fastervit_0_224 --checkpoint fastervit_0_224_1k.pth.tar --precision int8 \\
      --calibration /data/imagenet/train --out artifacts/fv0-int8
  fastvits export fastervit_0_224 --runtime openvino --precision bf16 --out artifacts/fv0-bf16
  fastvits validate --artifact artifacts/fv-int8      # top-1 of the artifact, in its runtime
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..argtypes import json_object, positive_int
from ..train.inference import ModelSource, load_for_inference
from ..train.modeling import RUN_FILE
from .artifact import PRECISIONS, export_artifact
from .calibration import DEFAULT_CALIBRATION_IMAGES, load_calibration
from .runtimes import RUNTIMES

__all__ = ["register"]

CHECK_IMAGES = 64


def _source(model: str, args: argparse.Namespace) -> ModelSource:
    if (Path(model) / RUN_FILE).is_file():
        return ModelSource(run=Path(model), ema=args.ema)
    return ModelSource(model=model, checkpoint=args.checkpoint, num_classes=args.num_classes,
                       model_kwargs=args.model_kwargs)


def _export(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    model, spec = load_for_inference(_source(args.model, args), torch.device("cpu"))
    config = dict(spec.data_config)
    if args.img_size:
        h, w = (args.img_size * 2)[:2]
        config["input_size"] = (config["input_size"][0], h, w)
    calibration = check = None
    if args.calibration:
        calibration = load_calibration(args.calibration, config, args.calibration_images, args.calibration_split)
        check = load_calibration(args.calibration, config, min(CHECK_IMAGES, len(calibration)),
                                 args.calibration_split, between=len(calibration)).images
    artifact = export_artifact(
        model, args.out, precision=args.precision, runtime=args.runtime, input_size=config["input_size"],
        data_config=config, calibration=calibration, check_images=check, model_name=spec.name,
        model_kwargs=spec.kwargs, class_names=spec.class_names, check_drift=not args.no_drift_check,
    )
    drift = artifact.metadata["drift"]
    print(f"wrote {args.out}: {spec.name} for {args.runtime} in {args.precision}, input {tuple(config['input_size'])}"
          f"; drift on {drift['count']} {drift['check_images']} images: {drift['rel_logit']:.4g} of the logit scale, "
          f"top-1 agreement {drift['top1_agreement']:.4f}"
          + ("" if drift["within_tolerance"] else " (BEYOND TOLERANCE: written because of --no-drift-check)"))
    if artifact.metadata["kept_in_fp32"]:
        print(f"kept in float32: {', '.join(artifact.metadata['kept_in_fp32'])}")
    if args.print_metadata:
        json.dump(artifact.metadata, sys.stdout, indent=1)
        print()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="a deployable ONNX Runtime / OpenVINO artifact in fp32, bf16 or int8, with metadata",
        description=__doc__.split("\n\n", 1)[0], epilog=__doc__.split("Examples:", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="a fastvits or timm model name, or a `fastvits train` run folder")
    p.add_argument("--out", type=Path, required=True, help="artifact folder to write (replaced if it is one)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                   help="onnxruntime (fp32, int8) or openvino (fp32, bf16 on CPUs with native bf16, int8)")
    w = p.add_argument_group("weights (for a model name)")
    w.add_argument("--checkpoint", help="weights file (.safetensors, official .pth/.pth.tar)")
    w.add_argument("--num-classes", type=positive_int, help="classifier width (default: the model's)")
    w.add_argument("--model-kwargs", type=json_object, default={}, help="constructor arguments as JSON")
    w.add_argument("--ema", action="store_true", help="for a run folder: its EMA weights")
    c = p.add_argument_group("calibration (int8; for the other precisions it also gives the drift check real images)")
    c.add_argument("--calibration", metavar="DATA",
                   help="fashion-mnist[:FOLDER], or a folder of images searched recursively (use training images)")
    c.add_argument("--calibration-split", default="train", help="Fashion-MNIST split (default train)")
    c.add_argument("--calibration-images", type=positive_int, default=DEFAULT_CALIBRATION_IMAGES,
                   help=f"images to calibrate on, evenly spaced over the source (default {DEFAULT_CALIBRATION_IMAGES})")
    p.add_argument("--img-size", type=positive_int, nargs="+", metavar="N",
                   help="H [W] of the exported graph (default: the model's input size)")
    p.add_argument("--threads", type=positive_int, help="threads for export and the drift check")
    p.add_argument("--no-drift-check", action="store_true",
                   help="write the artifact even when its outputs drift beyond the precision's tolerance")
    p.add_argument("--print-metadata", action="store_true", help="print the artifact's metadata as JSON")
    p.set_defaults(func=_export)
