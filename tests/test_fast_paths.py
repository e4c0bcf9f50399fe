"""Every inference fast path computes what the plain model computes.

Fused attention (SDPA) and the cached position biases are covered by the `attn_path` fixture and
test_fastervit_dynamic.py; this file covers the fused CPU kernels, BatchNorm folding and `torch.compile` graphs.
"""

import pytest
import timm
import torch
from helpers import small_model
from torch import nn

import fastvits

MODELS = {
    "fastervit_0_any_res": dict(),
    "fastervit_4_224": dict(layer_scale_conv=0.5),  # conv-block layer scale folds into conv2 as well
    "litv2_s": dict(),
}


def randomize_batchnorms(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so that folding has something to fold."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_(1, 0.3)
            m.bias.data.normal_(0, 0.3)
    return model


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _ops_run(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def _stage0(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_intermediates(x, indices=[0], intermediates_only=True)[0]


@pytest.mark.parametrize("name", ["fastervit_0_any_res", "fastervit_4_224", "litv2_s"])
def test_fused_kernels_match_plain_path(name):
    """Eval-mode CPU inference runs convolutions as fused oneDNN kernels (BatchNorm and layer scale folded,
    GELU/ReLU and residual adds fused; FasterViT's conv stages on channels-last maps) and the linears with their
    activation and residual add as one kernel, on packed weights for few rows."""
    model = randomize_batchnorms(small_model(name, **MODELS[name])).eval()
    for size in [(64, 64), (72, 100)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad(), fastvits.layers.fused_kernels(False):
            plain, plain_map = model(x), _stage0(model, x)
            plain_ops = _ops_run(lambda: model(x))
        with torch.no_grad():
            fused, fused_map = model(x), _stage0(model, x)
            fused_ops = _ops_run(lambda: model(x))
        torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fused_map, plain_map, atol=1e-5, rtol=1e-5)
        fused_kernels = {"mkldnn::_convolution_pointwise", "mkldnn::_linear_pointwise"}
        assert fused_kernels <= fused_ops and not fused_kernels & plain_ops
        if name.startswith("fastervit"):  # conv stages: channels-last maps on the fused path only
            assert fused_map.is_contiguous(memory_format=torch.channels_last)
            assert not plain_map.is_contiguous(memory_format=torch.channels_last)
        else:  # token merging: a weighted gather + GEMM instead of torchvision's deformable conv
            assert "aten::embedding_bag" in fused_ops and "torchvision::deform_conv2d" not in fused_ops
            assert "torchvision::deform_conv2d" in plain_ops


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "size"),
    [(2, 2, 0, (14, 14)), (2, 2, 0, (15, 9)), (3, 1, 1, (10, 13)), (3, 2, 1, (9, 9))],
)
def test_sampled_deform_conv_matches_torchvision(kernel, stride, padding, size):
    """The weighted-gather deformable conv equals torchvision's, offsets reaching past every border included."""
    from torchvision.ops import deform_conv2d

    from fastvits.layers.deform import deform_conv2d_sampled

    torch.manual_seed(0)
    x = torch.randn(2, 8, *size)
    weight, bias = torch.randn(12, 8, kernel, kernel) * 0.2, torch.randn(12)
    ho, wo = ((n + 2 * padding - kernel) // stride + 1 for n in size)
    offset = torch.randn(2, 2 * kernel * kernel, ho, wo) * 3  # many samples fall partly or wholly off the map
    expected = deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding)
    torch.testing.assert_close(
        deform_conv2d_sampled(x, offset, weight, bias, stride, padding), expected, atol=1e-5, rtol=1e-5
    )


def test_fused_kernels_follow_weight_changes():
    """The folded weights are cached; changing a BatchNorm statistic or a conv weight in place refreshes them."""
    model = randomize_batchnorms(small_model("fastervit_0_any_res")).eval()
    x = torch.randn(1, 3, 64, 64)
    block = model.levels[0].blocks[0]
    with torch.no_grad():
        for change in (lambda: block.norm1.running_var.mul_(3.0), lambda: block.conv2.weight.mul_(-1.0)):
            before = model(x)
            change()
            after = model(x)
            with fastvits.layers.fused_kernels(False):
                plain = model(x)
            assert not torch.allclose(after, before, atol=1e-3)
            torch.testing.assert_close(after, plain, atol=1e-5, rtol=1e-5)


def test_writes_through_data_are_picked_up_by_eval():
    """Writes through `.data` bypass PyTorch's version counters, so the caches cannot see them (documented);
    calling `.eval()` again drops every cache."""
    model = randomize_batchnorms(small_model("fastervit_0_any_res")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
        model.levels[0].blocks[0].conv2.weight.data.mul_(-1.0)
        model.eval()
        with fastvits.layers.fused_kernels(False):
            plain = model(x)
        torch.testing.assert_close(model(x), plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["fastervit_0_any_res", "litv2_s"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_fused_path_keeps_non_finite_inputs_visible(name, value):
    """A NaN or Inf pixel gives a non-finite output on the fused path, as on the plain path (oneDNN's ReLU post-op
    alone would turn NaN into 0 and give plausible logits)."""
    model = small_model(name).eval()
    x = torch.randn(1, 3, 64, 64)
    x[0, 1, 10, 20] = value
    with torch.no_grad():
        assert not model(x).isfinite().any()


@pytest.mark.parametrize("features", [64, 256])  # oneDNN on any rows up to ONEDNN_MAX_IN_FEATURES inputs
@pytest.mark.parametrize("rows", [49, 2000])  # packed weights up to PACKED_ROWS rows, MKL's GEMM beyond
@pytest.mark.parametrize(("act", "with_residual"), [("none", False), ("gelu", False), ("relu", False), ("none", True)])
def test_fused_linear_matches_plain_path(features, rows, act, with_residual):
    """`fastvits.layers.fused.Linear`: act(x W^T + b) + residual as one oneDNN kernel at inference, on a weight
    packed once for few rows; it follows in-place weight changes."""
    from fastvits.layers.fused import ONEDNN_MAX_IN_FEATURES, PACKED_ROWS, Linear

    layer = Linear(features, 96).eval()
    x = torch.randn(1, rows, features)
    residual = torch.randn(1, rows, 96) if with_residual else None
    with torch.no_grad():
        for _ in range(2):  # the second round runs on the refreshed packed weight
            with fastvits.layers.fused_kernels(False):
                plain = layer(x, act, residual)
            fused = layer(x, act, residual)
            torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
            layer.weight.mul_(-0.5)
        fused_kernel = "mkldnn::_linear_pointwise" in _ops_run(lambda: layer(x, act, residual))
    assert fused_kernel == (
        rows <= PACKED_ROWS or act != "none" or with_residual or features <= ONEDNN_MAX_IN_FEATURES
    )
    assert "mkldnn::_linear_pointwise" not in _ops_run(lambda: layer(x, act, residual))  # autograd: plain path


def test_fused_linear_rejects_unknown_activation():
    from fastvits.layers.fused import Linear

    with pytest.raises(ValueError, match=r"act must be one of \['gelu', 'none', 'relu'\], got 'silu'"):
        Linear(4, 4)(torch.randn(2, 4), act="silu")


def test_training_and_autograd_take_the_plain_path():
    """With autograd on, or in training mode, the output is bit-for-bit the plain path's."""
    model = randomize_batchnorms(small_model("fastervit_0_any_res")).eval()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.requires_grad
    with fastvits.layers.fused_kernels(False):
        assert torch.equal(out, model(x))
    model.train()
    with torch.no_grad():  # training-mode BatchNorm uses batch statistics: never folded
        torch.manual_seed(1)
        train_out = model(x)
        with fastvits.layers.fused_kernels(False):
            torch.manual_seed(1)
            assert torch.equal(train_out, model(x))


@pytest.mark.parametrize("name", list(MODELS))
def test_optimize_for_inference_matches_plain_model(name, attn_path):
    model = randomize_batchnorms(small_model(name, **MODELS[name])).eval()
    before = count_batchnorms(model)
    fast = fastvits.optimize_for_inference(model)
    # FasterViT keeps its final BatchNorm (forward_features returns it); everything after a conv is folded
    assert count_batchnorms(fast) == (1 if name.startswith("fastervit") else 0) < before
    assert count_batchnorms(model) == before  # the original is untouched
    for size in [(64, 64), (72, 100)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=1e-5)


def test_timm_reparameterize_folds_fastvits_models():
    """`timm.utils.reparameterize_model` (what `fastvits bench +reparam` uses) finds our fuse() methods."""
    model = randomize_batchnorms(small_model("fastervit_0_224")).eval()
    fused = timm.utils.reparameterize_model(model)
    assert count_batchnorms(fused) == 1
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-5, rtol=1e-5)


def test_folding_a_training_model_is_refused():
    model = small_model("fastervit_0_224").train()
    with pytest.raises(RuntimeError, match=r"call \.eval\(\)"):
        timm.utils.reparameterize_model(model)


def compile_counting_graphs(model: torch.nn.Module, dynamic: bool | None) -> tuple[torch.nn.Module, list]:
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    return torch.compile(model, fullgraph=True, dynamic=dynamic, backend=backend), graphs


@pytest.mark.parametrize(
    ("name", "dynamic"), [("fastervit_0_any_res", False), ("fastervit_0_any_res", True), ("litv2_s", True)]
)
def test_compile_fullgraph(name, dynamic, attn_path):
    """The whole model is one graph without breaks, for square, non-square and non-divisible inputs."""
    model = small_model(name).eval()
    compiled, _ = compile_counting_graphs(model, dynamic)
    with torch.no_grad():
        for size in [(64, 64), (96, 128), (72, 100)]:
            x = torch.randn(2, 3, *size)
            torch.testing.assert_close(compiled(x), model(x), atol=1e-6, rtol=1e-6)


def test_dynamic_compile_one_graph_for_many_sizes():
    """With dynamic shapes, FasterViT compiles one graph for all input sizes of the same structure, none per size.

    Structure here: several windows in both transformer stages (padded or not), and maps large enough that PyTorch
    picks the same convolution backend (its choice depends on the size). The first size is not square: PyTorch would
    otherwise assume H == W ("duck sizing") and compile again for the first non-square size.
    """
    model = small_model("fastervit_0_any_res").eval()
    compiled, graphs = compile_counting_graphs(model, dynamic=True)
    with torch.no_grad():
        for size in [(320, 480), (400, 333), (448, 448), (353, 390)]:
            x = torch.randn(1, 3, *size)
            torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)
    assert len(graphs) == 1


def test_compiled_inference_model_reads_cached_position_biases():
    """After reparameterisation (inference-only) and one eager forward, torch.compile's graph no longer runs the
    position-bias MLPs (as the official deploy mode keeps its biases in buffers); a plain model's graph does."""
    model = small_model("fastervit_0_224").eval()
    frozen = timm.utils.reparameterize_model(model)
    x = torch.randn(1, 3, 64, 64)
    position_linears = {}
    for name, m in (("plain", model), ("frozen", frozen)):
        graphs = []

        def backend(gm, inputs, graphs=graphs):
            graphs.append(gm)
            return gm.forward

        torch._dynamo.reset()
        with torch.no_grad():
            m(x)  # the eager forward that fills the caches
            out = torch.compile(m, fullgraph=True, dynamic=False, backend=backend)(x)
            torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)
        (graph,) = graphs
        position_linears[name] = [
            n for n in graph.graph.nodes if "linear" in str(n.target) and "cpb_mlp" in str(n.args[1])
        ]
    assert position_linears["plain"] and not position_linears["frozen"]


@pytest.mark.slow
@pytest.mark.parametrize("freezing", [False, True])
def test_compile_inductor_matches_eager(freezing):
    """Inductor, with and without freezing, on an inference-only model: 64x64 biases cached by an eager forward
    (read by the graph), 96x128 computed in-graph."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    model = fastvits.optimize_for_inference(small_model("fastervit_0_any_res"))
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    with torch.no_grad(), inductor_config.patch(freezing=freezing):
        model(torch.randn(1, 3, 64, 64))
        for size in [(64, 64), (96, 128)]:
            x = torch.randn(2, 3, *size)
            torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)
