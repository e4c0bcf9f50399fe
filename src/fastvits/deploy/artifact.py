"""Deployable artifacts: a model exported for one runtime and precision, with what it was made from.

An artifact is a folder:

    model.onnx                  (runtime onnxruntime)   or   model.xml + model.bin (runtime openvino)
    fastvits-artifact.json      metadata (`METADATA_FILE`)

The metadata records the format version, the model (name, constructor arguments, classes, preprocessing), the
runtime and precision, the files and their SHA-256, the source weights' SHA-256 (`weights_sha256`), the calibration
set (source, split, count, selection, SHA-256 of the preprocessed images), the layers kept in float32, the input
size (batch dynamic, C x H x W fixed), the CPU it was made on (model name and ISA flags), the library versions, and
the drift measured at export. `export_artifact` writes it into a temporary sibling folder and renames it into place
only once the drift check has passed, so a failed export leaves no half-written artifact.

Drift: the artifact's logits against the float32 PyTorch model's on check images, as the largest absolute
difference over the largest float32 logit magnitude, and top-1 agreement; each precision states its tolerance
(`TOLERANCES`) and an export beyond it raises `DriftError`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..inference import optimize_for_inference
from ..inference.cpu_features import cpu_name, isa_flags
from .calibration import CalibrationSet, images_sha256
from .convert import runtime_model
from .runtimes import check_runtime, onnxruntime_session, openvino_session, runtime_version

__all__ = [
    "ARTIFACT_FORMAT", "METADATA_FILE", "PRECISIONS", "TOLERANCES", "Artifact", "ArtifactError", "Drift", "DriftError",
    "Tolerance", "export_artifact", "load_artifact", "measure_drift", "weights_sha256",
]

ARTIFACT_FORMAT = "fastvits-artifact/1"
METADATA_FILE = "fastvits-artifact.json"
PRECISIONS = ("fp32", "bf16", "int8")
_MODEL_FILES = {"onnxruntime": ("model.onnx",), "openvino": ("model.xml", "model.bin")}


class ArtifactError(UserError, ValueError):
    """An artifact folder is missing, incomplete, changed since export, or fed the wrong input."""


class DriftError(ArtifactError):
    """An exported model's outputs drift from its source model beyond its precision's tolerance."""


@dataclass(frozen=True)
class Tolerance:
    """How far a precision's logits may be from float32's: the largest absolute difference over the largest float32
    logit magnitude (`rel_logit`), and the least top-1 agreement (None: not checked, for precisions whose rounding
    can flip near-ties on untrained weights)."""

    rel_logit: float
    top1_agreement: float | None = None


TOLERANCES = {
    "fp32": Tolerance(1e-4),  # graph rewrites reorder float32 sums: measured about 1e-6
    # random weights: 2-3 bf16 unit roundoffs (2^-8); trained small LITv2 on Fashion-MNIST: 0.055 over 10,000 images
    # (engine), 0.054 over 256 (OpenVINO), so 25 unit roundoffs (top-1 agreement 0.996-0.999, not checked: the
    # default check images are random, on which near-tied logits flip)
    "bf16": Tolerance(0.1),
    # trained small FasterViT / LITv2 on Fashion-MNIST: 0.04-0.09 on 64 held-out images, up to 0.54 over 10,000
    # (LITv2 in OpenVINO); top-1 agreement 0.98-0.997
    "int8": Tolerance(0.5, 0.95),
}


@dataclass(frozen=True)
class Drift:
    count: int
    max_abs: float
    rel_logit: float
    top1_agreement: float
    tolerance: Tolerance

    @property
    def within(self) -> bool:
        t = self.tolerance
        return self.rel_logit <= t.rel_logit and (t.top1_agreement is None or self.top1_agreement >= t.top1_agreement)

    def __str__(self) -> str:
        t = self.tolerance
        agree = f", top-1 agreement {self.top1_agreement:.4f}" + (
            f" (at least {t.top1_agreement})" if t.top1_agreement is not None else "")
        return (f"largest logit difference {self.max_abs:.4g} = {self.rel_logit:.4g} of the logit scale (at most "
                f"{t.rel_logit:.4g}){agree}, on {self.count} images")


def measure_drift(reference: torch.Tensor, output: torch.Tensor, tolerance: Tolerance) -> Drift:
    """The drift of `output` logits from `reference` (float32) logits, both (N, classes)."""
    max_abs = (output.float() - reference).abs().max().item()
    scale = reference.abs().max().item()
    agree = (output.argmax(1) == reference.argmax(1)).float().mean().item()
    return Drift(len(reference), max_abs, max_abs / max(scale, 1e-30), agree, tolerance)


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over the model's state dict (names and raw values, in order): the source weights' identity."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions(runtime: str, precision: str) -> dict[str, str]:
    from .. import __version__

    versions = {"fastvits": __version__, "torch": torch.__version__, runtime: runtime_version(runtime)}
    if runtime == "openvino" and precision == "int8":
        import nncf

        versions["nncf"] = nncf.__version__
    return versions


class Artifact(nn.Module):
    """A loaded artifact, callable like the model: float32 (B, C, H, W) images in, float32 logits out (CPU).

    An `nn.Module` without parameters, so that evaluation loops take it as they take a model; `metadata` is the
    artifact's `fastvits-artifact.json`.
    """

    def __init__(self, folder: Path, metadata: dict[str, Any], threads: int | None = None) -> None:
        super().__init__()
        self.folder = folder
        self.metadata = metadata
        self.input_size = tuple(metadata["input"]["size"])  # (C, H, W)
        threads = threads or torch.get_num_threads()
        runtime, precision = metadata["runtime"], metadata["precision"]
        model_file = folder / _MODEL_FILES[runtime][0]
        self._session = (onnxruntime_session(model_file, threads) if runtime == "onnxruntime"
                         else openvino_session(model_file, precision, threads))
        self.eval()

    @property
    def precision(self) -> str:
        return self.metadata["precision"]

    @property
    def runtime(self) -> str:
        return self.metadata["runtime"]

    @property
    def data_config(self) -> dict[str, Any]:
        """timm's data config of the source model (input size, interpolation, mean, std, crop)."""
        return {k: tuple(v) if isinstance(v, list) else v for k, v in self.metadata["input"]["data_config"].items()}

    @property
    def class_names(self) -> list[str] | None:
        return self.metadata["model"].get("class_names")

    @property
    def num_classes(self) -> int:
        return int(self.metadata["model"]["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_size:
            c, h, w = self.input_size
            raise ArtifactError(
                f"the artifact in {self.folder} takes (B, {c}, {h}, {w}) images, got {tuple(x.shape)}: resize the "
                f"images to {h}x{w} (its data config does), or export another artifact for this size"
            )
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self._session(array))

    def extra_repr(self) -> str:
        m = self.metadata
        return f"{m['model']['name']}, runtime={m['runtime']}, precision={m['precision']}, input={self.input_size}"


def load_artifact(folder: str | os.PathLike, threads: int | None = None) -> Artifact:
    """Open the artifact in `folder`, checking its format, its files' hashes, and that this machine can run it."""
    folder = Path(folder)
    meta_path = folder / METADATA_FILE
    if not meta_path.is_file():
        raise ArtifactError(
            f"{folder} is not a fastvits artifact (no {METADATA_FILE}); make one with "
            "`fastvits export MODEL --precision ... --out FOLDER`"
        )
    try:
        metadata = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{meta_path} is not valid JSON ({e}); export the artifact again") from e
    if metadata.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(
            f"{folder} has artifact format {metadata.get('format')!r}, this fastvits reads {ARTIFACT_FORMAT!r}; "
            "export it again with this version"
        )
    for name, digest in metadata["files"].items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{path} is missing from the artifact; copy the whole folder, or export it again")
        if _file_sha256(path) != digest:
            raise ArtifactError(f"{path} changed since export (SHA-256 differs from {METADATA_FILE}); export again")
    check_runtime(metadata["runtime"], metadata["precision"])
    return Artifact(folder, metadata, threads)


def _random_images(input_size: Sequence[int], n: int = 8) -> torch.Tensor:
    return torch.randn(n, *input_size, generator=torch.Generator().manual_seed(0))


def _write_model(model: nn.Module, folder: Path, runtime: str, precision: str, input_size: Sequence[int],
                 calibration: CalibrationSet | None) -> list[str]:
    """The runtime's model files (`_MODEL_FILES`) in `folder`; returns the layers kept in float32."""
    example = torch.zeros(2, *input_size)  # batch 2: exporters specialise size-1 dimensions
    made = runtime_model(optimize_for_inference(model, runtime="export"), runtime, precision, example,
                         folder / "fp32.onnx", calibration)
    if runtime == "onnxruntime":
        made.model.rename(folder / "model.onnx")
        (folder / "fp32.onnx").unlink(missing_ok=True)  # the float32 graph an int8 model was quantized from
    else:
        import openvino as ov

        ov.save_model(made.model, str(folder / "model.xml"), compress_to_fp16=False)
    return made.kept_in_fp32


def _replaceable(out: Path) -> None:
    if out.exists() and not (out / METADATA_FILE).is_file() and any(out.iterdir()):
        raise ArtifactError(f"{out} exists and is not an artifact: pass a new or empty folder with --out")


def export_artifact(
    model: nn.Module,
    out: str | os.PathLike,
    *,
    precision: str = "fp32",
    runtime: str = "onnxruntime",
    input_size: Sequence[int],
    data_config: dict[str, Any],
    calibration: CalibrationSet | None = None,
    check_images: torch.Tensor | None = None,
    model_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    class_names: list[str] | None = None,
    check_drift: bool = True,
) -> Artifact:
    """Export `model` (float32, eval mode) to an artifact folder `out` for `runtime` in `precision`; returns it loaded.

    Args:
        input_size: (C, H, W) of the exported graph (the batch stays dynamic).
        data_config: timm's data config (preprocessing), recorded for `fastvits validate` and `predict`.
        calibration: int8's calibration images (`load_calibration`); required for int8.
        check_images: images for the drift check; default: for int8 the calibration images, else 8 seeded random
            images. Pass images the model did not calibrate on for an honest figure (`fastvits export` does).
        check_drift: raise DriftError (writing nothing) when the drift exceeds `TOLERANCES[precision]`; False writes
            the artifact anyway (its metadata still records the drift), e.g. to time untrained weights.
    """
    if precision not in PRECISIONS:
        raise ArtifactError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    check_runtime(runtime, precision)
    if precision == "int8" and calibration is None:
        raise ArtifactError("int8 needs calibration images: pass --calibration DATA (a folder of training images, "
                            "or fashion-mnist)")
    if model.training:
        raise ArtifactError("the model is in training mode; call .eval() before exporting it")
    out = Path(out)
    _replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporters' notes on traced shapes and deprecations
            kept = _write_model(model, staging, runtime, precision, input_size, calibration)
        files = {name: _file_sha256(staging / name) for name in _MODEL_FILES[runtime]}
        metadata: dict[str, Any] = {
            "format": ARTIFACT_FORMAT,
            "model": {"name": model_name or type(model).__name__, "kwargs": model_kwargs or {},
                      "num_classes": int(getattr(model, "num_classes", 0)), "class_names": class_names,
                      "param_count": sum(p.numel() for p in model.parameters())},
            "runtime": runtime,
            "precision": precision,
            "files": files,
            "input": {"size": list(input_size), "batch": "dynamic", "layout": "NCHW float32",
                      "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()}},
            "source_weights_sha256": weights_sha256(model),
            "calibration": calibration.describe() if calibration is not None else None,
            "kept_in_fp32": kept,
            "tuned_on": {"cpu": cpu_name(), "isa": isa_flags(), "threads": torch.get_num_threads()},
            "versions": _versions(runtime, precision),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        artifact = Artifact(staging, metadata)
        images = check_images if check_images is not None else (
            calibration.images if precision == "int8" else _random_images(input_size))
        with torch.inference_mode():
            reference = torch.cat([model(b) for b in images.split(32)])
            output = torch.cat([artifact(b) for b in images.split(32)])
        drift = measure_drift(reference, output, TOLERANCES[precision])
        metadata["drift"] = {**asdict(drift), "within_tolerance": drift.within,
                             "check_images": "given" if check_images is not None else (
                                 "calibration" if precision == "int8" else "random"),
                             "check_sha256": images_sha256(images)}
        if check_drift and not drift.within:
            raise DriftError(
                f"the {precision} {runtime} export drifts from the float32 model beyond its tolerance: {drift}. "
                + ("Untrained (random) weights quantize badly; export trained weights, calibrate on more images "
                   "like the deployment data, or use bf16/fp32. " if precision == "int8" else "")
                + "check_drift=False (--no-drift-check) writes it anyway"
            )
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=1))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    artifact.folder = out
    return artifact
