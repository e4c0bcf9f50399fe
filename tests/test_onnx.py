"""ONNX export (`fastvits.export`) run in onnxruntime and compared with PyTorch."""

import json

import pytest
import torch

import fastvits
from fastvits.export import SIZE_METADATA_KEY, check_onnx_input, export_onnx, min_dynamic_size, verify_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

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


@pytest.mark.parametrize("window_size", [(7, 7, 7, 7), (2, 2, 2, 2)], ids=["one_window", "carrier_tokens"])
def test_fastervit_onnx_matches_pytorch(window_size, tmp_path):
    """TorchScript exporter, dynamic batch; with 2x3 windows in stage 3 its carrier tokens are pooled in-graph."""
    model = fastvits.create_model("fastervit_0_224", num_classes=10, window_size=window_size, **FASTERVIT_TINY)
    model = randomized(model)
    path = export_onnx(model, tmp_path / "fastervit.onnx", SIZE, dynamo=False)
    assert ("AveragePool" in op_types(path)) == (window_size[2] == 2)
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


# ------------------------------------------------------------------------------- dynamic height and width
def _dynamic_export(model, path, size):
    pytest.importorskip("onnxscript")
    return export_onnx(model, path, size, dynamic_size=True, max_size=512)


def _size_metadata(path) -> dict:
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(meta[SIZE_METADATA_KEY])


def test_litv2_dynamic_size_onnx(tmp_path):
    """One graph for every multiple of 32, non-square too, each size exact against PyTorch."""
    model = randomized(fastvits.create_model("litv2_s", num_classes=10, **LITV2_TINY))
    path = _dynamic_export(model, tmp_path / "litv2_dyn.onnx", SIZE)
    assert _size_metadata(path) == {"multiple": 32, "min": 64, "max": 512}
    for shape in [(2, 3, 64, 96), (1, 3, 128, 64), (3, 3, 96, 160)]:
        assert verify_onnx(path, model, torch.randn(shape), atol=1e-4) < 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check_onnx_input(session, (4, 3, 512, 64))
    for bad in [(1, 3, 32, 64), (1, 3, 64, 70), (1, 3, 544, 64)]:  # below min, not a multiple, above max
        with pytest.raises(ValueError, match="multiples of 32 from 64 to 512"):
            check_onnx_input(session, bad)
        with pytest.raises(ValueError, match="multiples of 32 from 64 to 512"):
            verify_onnx(path, model, torch.randn(bad))


@pytest.mark.parametrize("head", ["classifier", "features_only"])
def test_fastervit_dynamic_size_onnx(head, tmp_path):
    """FasterViT's graph holds from the size at which its last stage (stride 32, 7x7 windows) has two windows per
    side: below, the exporter would fix the window count at 1 (and a one-window carrier-token stage is another
    graph). A detection backbone (features_only: four maps) exports the same way."""
    kwargs = dict(features_only=True) if head == "features_only" else dict(num_classes=10)
    model = randomized(fastvits.create_model("fastervit_0_224", **kwargs, **FASTERVIT_TINY))
    assert min_dynamic_size(model) == 256
    path = _dynamic_export(model, tmp_path / "fastervit_dyn.onnx", (3, 256, 288))
    assert _size_metadata(path) == {"multiple": 32, "min": 256, "max": 512}
    # stage 3 / stage 4 windows: 3x3 / 2x2 (both padded), 3x5 / 2x3, 4x2 / 2x1 ... 5x5 / 3x3 (448: no stage-3 padding)
    for shape in [(2, 3, 256, 256), (1, 3, 256, 480), (3, 3, 448, 256), (1, 3, 480, 448)]:
        assert verify_onnx(path, model, torch.randn(shape), atol=1e-4) < 1e-4


def test_dynamic_size_export_errors(tmp_path):
    model = fastvits.create_model("fastervit_0_224", num_classes=10, **FASTERVIT_TINY).eval()
    with pytest.raises(ValueError, match=r"e\.g\. \(C, 256, 320\)"):  # one stage-4 window; not a multiple of 32
        export_onnx(model, tmp_path / "x.onnx", (3, 224, 300), dynamic_size=True)
    with pytest.raises(ValueError, match="max_size=64 is below"):
        export_onnx(model, tmp_path / "x.onnx", (3, 256, 256), dynamic_size=True, max_size=64)
    with pytest.raises(ValueError, match="dynamo=True"):
        export_onnx(model, tmp_path / "x.onnx", (3, 256, 256), dynamic_size=True, dynamo=False)
    with pytest.raises(ValueError, match="feature_info"):
        export_onnx(torch.nn.Conv2d(3, 4, 3), tmp_path / "x.onnx", (3, 64, 64), dynamic_size=True)


class _RowsPlusColumns(torch.nn.Module):
    """Adds per-64-px-block means of rows and of columns: at a 64-px example both block counts are 1 and
    broadcasting fixes them there."""

    feature_info = [dict(reduction=32)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        rows = x.reshape(B, C, H // 64, -1).mean(3, keepdim=True)  # (B, C, H/64, 1)
        cols = x.transpose(2, 3).reshape(B, C, W // 64, -1).mean(3, keepdim=True)  # (B, C, W/64, 1)
        return (rows + cols).mean(dim=(2, 3))  # (B, C)


def test_dynamic_size_export_refuses_a_narrowed_range(tmp_path):
    pytest.importorskip("onnxscript")
    with pytest.raises(ValueError, match="serves heights from 64 to"):
        export_onnx(_RowsPlusColumns(), tmp_path / "x.onnx", (3, 64, 64), dynamic_size=True, max_size=512)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fastervit_0_224", "litv2_s"])
def test_full_model_dynamic_size_onnx(name, tmp_path):
    """The released architectures (random weights) in one dynamic-size file each, from the smallest size to a
    detection-style non-square one (about a minute each)."""
    model = fastvits.create_model(name).eval()
    lo = min_dynamic_size(model)
    path = _dynamic_export(model, tmp_path / f"{name}.onnx", (3, max(lo, 224), max(lo, 224)))
    for shape in [(1, 3, lo, lo), (2, 3, lo, lo + 96), (1, 3, 480, 320)]:
        assert verify_onnx(path, model, torch.randn(shape), atol=1e-4) < 1e-4


@pytest.mark.parametrize("name", ["fastervit_0_224", "litv2_s"])
def test_optimized_model_exports_the_same_graph(name, tmp_path):
    """`export_onnx` takes the plain model or `optimize_for_inference(model)` (its oneDNN modules export as plain
    ops): both files compute the plain model's function, with BatchNorm folded out of the graph."""
    kwargs = FASTERVIT_TINY if name.startswith("fastervit") else LITV2_TINY
    model = randomized(fastvits.create_model(name, num_classes=10, **kwargs))
    x = torch.randn(2, *SIZE)
    for form in (model, fastvits.optimize_for_inference(model)):
        path = export_onnx(form, tmp_path / f"{name}.onnx", SIZE, dynamo=False)
        assert "BatchNormalization" not in op_types(path) or name.startswith("fastervit")  # FasterViT's final norm
        assert verify_onnx(path, model, x, atol=1e-4) < 1e-4


def test_litv2_graph_runs_its_ffn_on_the_map(tmp_path):
    """In the exported graph each ConvFFN's depthwise conv reads a 1x1 conv's output and feeds another: the tokens
    become a map and back once per block on C channels, not around the depthwise conv on the 4C hidden channels
    (each such transpose is a copy in ONNX Runtime and OpenVINO; it took half of OpenVINO's int8 LITv2-S time)."""
    model = randomized(fastvits.create_model("litv2_s", num_classes=10, **LITV2_TINY))
    graph = onnx.load(str(export_onnx(model, tmp_path / "litv2.onnx", SIZE, dynamo=False))).graph
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    depthwise = [n for n in graph.node
                 if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(depthwise) == sum(LITV2_TINY["depths"])
    for conv in depthwise:
        assert producer[conv.input[0]].op_type == "Conv"
        assert not {n.op_type for n in readers[conv.output[0]]} & {"Transpose", "Reshape"}  # GELU's ops read it
