"""Deployment outside PyTorch: artifacts for ONNX Runtime and OpenVINO in fp32, bf16 and int8.

`export_artifact` writes a model (and, for int8, its calibration) into an artifact folder with metadata and a drift
check; `load_artifact` opens one as a callable module; `load_calibration` makes the calibration set. The command line
is `fastvits export`, and `fastvits validate` / `predict` take `--artifact FOLDER`.
"""

from .artifact import (
    ARTIFACT_FORMAT,
    METADATA_FILE,
    PRECISIONS,
    TOLERANCES,
    Artifact,
    ArtifactError,
    Drift,
    DriftError,
    Tolerance,
    export_artifact,
    load_artifact,
    measure_drift,
    weights_sha256,
)
from .calibration import (
    DEFAULT_CALIBRATION_IMAGES,
    MIN_CALIBRATION_IMAGES,
    CalibrationError,
    CalibrationSet,
    load_calibration,
)
from .runtimes import RUNTIMES, RuntimeUnavailable

__all__ = [
    "ARTIFACT_FORMAT", "DEFAULT_CALIBRATION_IMAGES", "METADATA_FILE", "MIN_CALIBRATION_IMAGES", "PRECISIONS",
    "RUNTIMES", "TOLERANCES", "Artifact", "ArtifactError", "CalibrationError", "CalibrationSet", "Drift", "DriftError",
    "RuntimeUnavailable", "Tolerance", "export_artifact", "load_artifact", "load_calibration", "measure_drift",
    "weights_sha256",
]
