"""Artifacts for ONNX Runtime and OpenVINO in fp32 and int8: logits against the float32 model within each precision's
stated tolerance, int8 that really is int8, deterministic calibration, and every refusal.

int8 is judged on trained weights: untrained models have logits so close together that any rounding reorders them.
Each family's tiny model trains for `STEPS` AdamW steps on real Fashion-MNIST images (about 75% test top-1), and the
int8 logits are compared with float32 on test images that neither training nor calibration saw.
"""

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import fastvits
from fastvits.cli import main
from fastvits.deploy import (
    METADATA_FILE,
    TOLERANCES,
    ArtifactError,
    CalibrationError,
    DriftError,
    RuntimeUnavailable,
    export_artifact,
    load_artifact,
    load_calibration,
)
from fastvits.deploy import runtimes as runtimes_module
from fastvits.deploy.artifact import Tolerance
from fastvits.inference.cpu_features import native_bf16
from fastvits.train.data import eval_transform
from fastvits.train.fashion_mnist import FashionMNIST

TINY = {
    "fastervit_0_any_res": dict(dim=16, in_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)),
    "litv2_s": dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)),
}
STEPS = 150
CONFIG = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
          "std": (0.229, 0.224, 0.225), "crop_pct": 1.0, "crop_mode": "center"}
SIZE = CONFIG["input_size"]


def _images(split: str, indices: range) -> tuple[torch.Tensor, torch.Tensor]:
    data = FashionMNIST(split, transform=eval_transform(CONFIG))
    images, labels = zip(*(data[i] for i in indices), strict=True)
    return torch.stack(images), torch.tensor(labels)


@pytest.fixture(scope="module")
def test_images() -> tuple[torch.Tensor, torch.Tensor]:
    return _images("test", range(256))


@pytest.fixture(scope="module")
def calibration():
    return load_calibration("fashion-mnist", CONFIG, 32)


@pytest.fixture(scope="module", params=list(TINY))
def trained(request):
    """(name, a tiny model of the family trained for STEPS steps on Fashion-MNIST, in eval mode)."""
    name = request.param
    torch.manual_seed(0)
    model = fastvits.create_model(name, num_classes=10, **TINY[name])
    images, labels = _images("train", range(0, 60000, 60000 // (STEPS * 32)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for x, y in zip(images.split(32), labels.split(32), strict=False):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return name, model.eval()


def _reference(model, images):
    with torch.no_grad():
        return model(images)


def _rel(ref, out):
    return ((out - ref).abs().max() / ref.abs().max()).item()


def _has_int8_weights(artifact) -> bool:
    """Whether the artifact's model file stores int8 weights (a QDQ ONNX graph, or an OpenVINO IR with i8
    constants): a float32 model that merely calls itself int8 fails this."""
    if artifact.runtime == "onnxruntime":
        graph = onnx.load(str(artifact.folder / "model.onnx")).graph
        return any(init.data_type == onnx.TensorProto.INT8 for init in graph.initializer) and any(
            node.op_type == "DequantizeLinear" for node in graph.node)
    return 'element_type="i8"' in (artifact.folder / "model.xml").read_text()


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_int8_logits_agree_with_float32(trained, runtime, calibration, test_images, tmp_path):
    name, model = trained
    images, labels = test_images
    ref = _reference(model, images)
    assert (ref.argmax(1) == labels).float().mean() > 0.6, "the tiny model did not train"
    artifact = export_artifact(model, tmp_path / "int8", precision="int8", runtime=runtime, input_size=SIZE,
                               data_config=CONFIG, calibration=calibration)
    assert _has_int8_weights(artifact)
    out = artifact(images)
    tolerance = TOLERANCES["int8"]
    assert _rel(ref, out) <= tolerance.rel_logit
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= tolerance.top1_agreement
    # the layer that reads the image stays float32 (measured: int8 there costs the most accuracy)
    assert len(artifact.metadata["kept_in_fp32"]) == 1
    assert artifact.metadata["drift"]["within_tolerance"]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_fp32_artifact_matches_the_model(trained, runtime, test_images, tmp_path):
    name, model = trained
    images = test_images[0][:64]
    artifact = export_artifact(model, tmp_path / "fp32", runtime=runtime, input_size=SIZE, data_config=CONFIG)
    assert _rel(_reference(model, images), artifact(images)) <= 1e-5
    reloaded = load_artifact(tmp_path / "fp32")
    assert torch.equal(reloaded(images), artifact(images))


@pytest.mark.skipif(native_bf16() is None, reason="bf16 artifacts need a CPU with native bf16 (AMX or AVX512-BF16)")
def test_bf16_artifact_computes_in_bf16_within_tolerance(trained, test_images, tmp_path):
    name, model = trained
    images = test_images[0]
    artifact = export_artifact(model, tmp_path / "bf16", precision="bf16", runtime="openvino", input_size=SIZE,
                               data_config=CONFIG)
    ref, out = _reference(model, images), artifact(images)
    tolerance = TOLERANCES["bf16"]
    # above float32 rounding (OpenVINO really computes in bf16: measured 1e-2 to 3e-2), within the stated tolerance
    assert 1e-3 < _rel(ref, out) <= tolerance.rel_logit
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.98  # measured 0.996-0.999 on trained weights
    assert artifact.metadata["precision"] == "bf16" and artifact.metadata["drift"]["within_tolerance"]


def test_metadata_records_what_the_artifact_was_made_from(trained, calibration, tmp_path):
    name, model = trained
    artifact = export_artifact(model, tmp_path / "a", precision="int8", input_size=SIZE, data_config=CONFIG,
                               calibration=calibration, model_name=name, class_names=list(FashionMNIST.classes))
    meta = json.loads((tmp_path / "a" / METADATA_FILE).read_text())
    assert meta == artifact.metadata
    assert meta["precision"] == "int8" and meta["runtime"] == "onnxruntime"
    assert meta["input"]["size"] == [3, 32, 32] and meta["input"]["batch"] == "dynamic"
    assert meta["calibration"]["sha256"] == calibration.fingerprint and meta["calibration"]["count"] == 32
    assert meta["tuned_on"]["cpu"] and meta["tuned_on"]["isa"]
    digest = hashlib.sha256((tmp_path / "a" / "model.onnx").read_bytes()).hexdigest()
    assert meta["files"] == {"model.onnx": digest}
    # the source weights' hash changes with any weight
    other = fastvits.create_model(name, num_classes=10, **TINY[name]).eval()
    other.load_state_dict(model.state_dict())
    assert fastvits.deploy.weights_sha256(other) == meta["source_weights_sha256"]
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3
    assert fastvits.deploy.weights_sha256(other) != meta["source_weights_sha256"]


def test_calibration_is_deterministic(trained, tmp_path):
    name, model = trained
    first, second = (load_calibration("fashion-mnist", CONFIG, 16) for _ in range(2))
    assert first.fingerprint == second.fingerprint
    held_out = load_calibration("fashion-mnist", CONFIG, 16, between=16)
    assert not any(torch.equal(a, b) for a in held_out.images for b in first.images)
    files = []
    for k in range(2):
        export_artifact(model, tmp_path / str(k), precision="int8", input_size=SIZE, data_config=CONFIG,
                        calibration=load_calibration("fashion-mnist", CONFIG, 16), check_drift=False)
        files.append((tmp_path / str(k) / "model.onnx").read_bytes())
    assert files[0] == files[1]


def test_openvino_int8_is_deterministic(trained, tmp_path):
    name, model = trained
    calibration = load_calibration("fashion-mnist", CONFIG, 16)
    for k in range(2):
        export_artifact(model, tmp_path / str(k), precision="int8", runtime="openvino", input_size=SIZE,
                        data_config=CONFIG, calibration=calibration, check_drift=False)
    assert (tmp_path / "0" / "model.bin").read_bytes() == (tmp_path / "1" / "model.bin").read_bytes()


# ------------------------------------------------------------------------------------------------- refusals


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return fastvits.create_model("fastervit_0_any_res", num_classes=10, **TINY["fastervit_0_any_res"]).eval()


def test_int8_without_calibration_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="calibration"):
        export_artifact(_tiny(), tmp_path / "a", precision="int8", input_size=SIZE, data_config=CONFIG)


def test_calibration_refusals(tmp_path):
    with pytest.raises(CalibrationError, match="too few"):
        load_calibration("fashion-mnist", CONFIG, 8)
    with pytest.raises(CalibrationError, match="neither a folder"):
        load_calibration(str(tmp_path / "missing"), CONFIG, 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="no calibration images"):
        load_calibration(str(tmp_path / "empty"), CONFIG, 16)
    folder = tmp_path / "few" / "class_a"
    folder.mkdir(parents=True)
    for i in range(20):
        Image.fromarray(np.full((28, 28, 3), i * 10, np.uint8)).save(folder / f"{i}.png")
    with pytest.raises(CalibrationError, match="holds 20 images but 32"):
        load_calibration(str(tmp_path / "few"), CONFIG, 32)
    found = load_calibration(str(tmp_path / "few"), CONFIG, 16)  # an ImageFolder-like tree, searched recursively
    assert len(found) == 16 and found.available == 20
    with pytest.raises(CalibrationError, match="too few to hold out"):
        load_calibration(str(tmp_path / "few"), CONFIG, 16, between=16)


def test_drift_beyond_tolerance_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    # a tolerance no int8 model meets (untrained weights alone went beyond 0.5 on an AVX2 CPU, not on an AMX one)
    monkeypatch.setitem(TOLERANCES, "int8", Tolerance(1e-6, 0.95))
    calibration = load_calibration("fashion-mnist", CONFIG, 16)
    with pytest.raises(DriftError, match="beyond its tolerance"):
        export_artifact(_tiny(), tmp_path / "a", precision="int8", input_size=SIZE, data_config=CONFIG,
                        calibration=calibration, check_images=torch.randn(16, *SIZE))
    assert list(tmp_path.iterdir()) == []
    written = export_artifact(_tiny(), tmp_path / "a", precision="int8", input_size=SIZE, data_config=CONFIG,
                              calibration=calibration, check_images=torch.randn(16, *SIZE), check_drift=False)
    assert not written.metadata["drift"]["within_tolerance"]


def test_runtime_precision_refusals(tmp_path, monkeypatch):
    with pytest.raises(RuntimeUnavailable, match="onnxruntime cannot run bf16"):
        export_artifact(_tiny(), tmp_path / "a", precision="bf16", input_size=SIZE, data_config=CONFIG)
    monkeypatch.setattr(runtimes_module, "native_bf16", lambda: None)
    with pytest.raises(RuntimeUnavailable, match="no native bf16"):
        export_artifact(_tiny(), tmp_path / "a", precision="bf16", runtime="openvino", input_size=SIZE,
                        data_config=CONFIG)
    with pytest.raises(ArtifactError, match="unknown precision"):
        export_artifact(_tiny(), tmp_path / "a", precision="int4", input_size=SIZE, data_config=CONFIG)


def test_loading_refuses_what_it_cannot_trust(tmp_path):
    with pytest.raises(ArtifactError, match="not a fastvits artifact"):
        load_artifact(tmp_path)
    artifact = export_artifact(_tiny(), tmp_path / "a", input_size=SIZE, data_config=CONFIG)
    with pytest.raises(ArtifactError, match=r"takes \(B, 3, 32, 32\) images"):
        artifact(torch.randn(1, 3, 64, 64))
    with open(tmp_path / "a" / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="changed since export"):
        load_artifact(tmp_path / "a")
    shutil.rmtree(tmp_path / "a")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not an artifact"):
        export_artifact(_tiny(), tmp_path / "a", input_size=SIZE, data_config=CONFIG)


# ------------------------------------------------------------------------------------------------ command line


def test_export_then_validate_and_predict_the_artifact(trained, tmp_path, capsys):
    name, model = trained
    weights = tmp_path / "w.safetensors"
    save_file(model.state_dict(), weights)
    out = tmp_path / "int8"
    kwargs = json.dumps(TINY[name])
    assert main(["export", name, "--checkpoint", str(weights), "--model-kwargs", kwargs, "--num-classes", "10",
                 "--precision", "int8", "--calibration", "fashion-mnist", "--calibration-images", "32",
                 "--img-size", "32", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    meta = json.loads((out / METADATA_FILE).read_text())
    # calibrated on 32 evenly spaced train images, checked on the 32 midway between them
    config = load_artifact(out).data_config
    assert meta["calibration"]["sha256"] == load_calibration("fashion-mnist", config, 32).fingerprint
    assert meta["drift"]["check_images"] == "given" and meta["drift"]["count"] == 32
    assert meta["drift"]["check_sha256"] == load_calibration("fashion-mnist", config, 32, between=32).fingerprint
    results = tmp_path / "v.json"
    assert main(["validate", "--artifact", str(out), "--data", "fashion-mnist", "--limit", "256", "--no-progress",
                 "--workers", "0",
                 "--results-file", str(results)]) == 0
    row = json.loads(results.read_text())
    assert row["precision"] == "int8" and row["runtime"] == "onnxruntime" and row["top1"] > 60
    image = tmp_path / "x.png"
    FashionMNIST("test")[0][0].save(image)
    assert main(["predict", str(image), "--artifact", str(out), "--topk", "2"]) == 0
    assert "x.png" in capsys.readouterr().out
    assert main(["validate", "--artifact", str(out), "--precision", "bf16", "--limit", "16"]) == 2


def test_bench_times_precisions_interleaved():
    from fastvits.bench.backends import BackendSpec
    from fastvits.bench.suite import BenchSettings, bench_models

    settings = BenchSettings(
        models=["fastervit_0_any_res"], model_kwargs=TINY["fastervit_0_any_res"], batch_sizes=[2],
        img_sizes=[(64, 64)], precisions=["fp32", "int8"], backends=[BackendSpec("eager"), BackendSpec("onnxruntime")],
        rounds=1, max_rounds=1, warmup=1, sample_time=0, memory=False, roof=0, calibration_images=16,
    )
    results = bench_models(settings, log=lambda msg: None)
    assert [(r["backend"], r["precision"]) for r in results.rows] == [
        ("eager", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    assert any("eager int8 skipped" in n for n in results.notes)
    gains = [c for c in results.comparisons if c["kind"] == "precision vs fp32"]
    assert [c["precision"] for c in gains] == ["int8"]
    # "best" is the fastest runner of its precision (the rows' own throughput), the speedup their time ratio
    speed = {f"fastvits {r['backend']}" + ("" if r["precision"] == "fp32" else f" {r['precision']}"):
             r["infer_samples_per_sec"] for r in results.rows}
    fp32 = [name for name in speed if not name.endswith("int8")]
    assert gains[0]["best_fp32"] == max(fp32, key=speed.get) and gains[0]["best"] == "fastvits onnxruntime int8"
    assert gains[0]["speedup"] == pytest.approx(speed["fastvits onnxruntime int8"] / speed[gains[0]["best_fp32"]])
