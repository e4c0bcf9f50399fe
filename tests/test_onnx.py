"""ONNX export (`fastvits.export`) run in onnxruntime and compared with PyTorch."""

import pytest
import torch

import fastvits
from fastvits.export import export_onnx, verify_onnx

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

LITV2_TINY = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
FASTERVIT_TINY = dict(dim=16, in_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))
SIZE = (3, 64, 96)  # non-square; LITv2 stage 3 is 4x6, stage 4 2x3


def randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Larger weights than the init (offset convs included), so that deformable sampling is exercised."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.3 if "conv_offset" in name else 0.2)
    return model.eval()


def op_types(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_litv2_onnx_matches_pytorch(dynamo, tmp_path):
    if dynamo:
        pytest.importorskip("onnxscript")
    model = randomized(fastvits.create_model("litv2_s", num_classes=10, **LITV2_TINY)).train()
    path = export_onnx(model, tmp_path / "litv2.onnx", SIZE, dynamic_batch=True, opset=19, dynamo=dynamo)
    assert model.training, "export_onnx exports in eval mode and restores the mode"
    assert "DeformConv" in op_types(path)
    for batch in (2, 3, 1):  # dynamic batch
        diff = verify_onnx(path, model, torch.randn(batch, *SIZE), atol=1e-4)
        assert diff < 1e-4


def test_litv2_features_only_onnx(tmp_path):
    """A dense-prediction backbone exports with its four maps as outputs."""
    model = randomized(fastvits.create_model("litv2_s", features_only=True, **LITV2_TINY))
    path = export_onnx(model, tmp_path / "litv2_features.onnx", SIZE, dynamo=False)
    session_outputs = [o.name for o in onnx.load(str(path)).graph.output]
    assert session_outputs == [f"output_{i}" for i in range(4)]
    verify_onnx(path, model, torch.randn(2, *SIZE), atol=1e-4)


def test_fastervit_onnx_matches_pytorch(tmp_path):
    model = randomized(fastvits.create_model("fastervit_0_224", num_classes=10, **FASTERVIT_TINY))
    path = export_onnx(model, tmp_path / "fastervit.onnx", SIZE, dynamo=False)
    for batch in (2, 3):
        verify_onnx(path, model, torch.randn(batch, *SIZE), atol=1e-4)


def test_deform_conv_needs_opset_19(tmp_path):
    model = fastvits.create_model("litv2_s", **LITV2_TINY)
    with pytest.raises(ValueError, match="opset 19"):
        export_onnx(model, tmp_path / "x.onnx", SIZE, opset=17, dynamo=False)


def test_input_size_from_pretrained_cfg_and_errors(tmp_path):
    model = fastvits.create_model("litv2_s", **LITV2_TINY)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        export_onnx(model, tmp_path / "x.onnx", (64, 96), dynamo=False)
    with pytest.raises(ValueError, match="input_size"):
        export_onnx(torch.nn.Conv2d(3, 4, 3), tmp_path / "x.onnx", dynamo=False)
