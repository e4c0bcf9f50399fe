"""The inference engine: `optimize_for_inference` computes what the plain model computes, with the kernels it says.

The parity tests (test_*_parity.py, test_hilo.py, test_layers_2d.py, the sweep) run both forms against the official
fixtures through the `model_form` fixture; this file covers what the engine does and refuses.
"""

import copy
import pickle

import pytest
import timm
import torch
from helpers import small_model
from torch import nn

import fastvits
from fastvits.inference.onednn import ONEDNN_AVAILABLE, ONEDNN_MAX_IN_FEATURES, PACKED_ROWS, PackedLinear
from fastvits.inference.position import SizeTable

MODELS = {
    "fastervit_0_any_res": dict(),
    "fastervit_4_224": dict(layer_scale_conv=0.5),  # layer scales everywhere, propagation, carrier tokens
    "litv2_s": dict(),
}
needs_onednn = pytest.mark.skipif(not ONEDNN_AVAILABLE, reason="this torch build has no oneDNN")


def randomize(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters and layer scales, so that folding has work to do."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.3)
                m.bias.normal_(0, 0.3)
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("gamma"):
                p.uniform_(0.5, 1.5)
    return model


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def ops_run(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def stage0(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_intermediates(x, indices=[0], intermediates_only=True)[0]


# ------------------------------------------------------------------------------------------- the copy
@pytest.mark.parametrize("name", list(MODELS))
def test_optimized_copy_matches_the_plain_model(name):
    """Folded, frozen and faster; the plain model itself is untouched and stays trainable."""
    model = randomize(small_model(name, **MODELS[name])).eval()
    before = count_batchnorms(model)
    fast = fastvits.optimize_for_inference(model)
    # FasterViT keeps its final BatchNorm (forward_features returns it); every BatchNorm after a conv is folded
    assert count_batchnorms(fast) == (1 if name.startswith("fastervit") else 0) < before
    assert count_batchnorms(model) == before and all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in fast.parameters())
    for size in [(72, 100), (128, 160)]:  # 128x160: 2x2 windows in stage 3, carrier tokens and propagation
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=1e-5)


def test_optimized_copy_owns_its_weights_and_says_so():
    model = small_model("fastervit_0_224").eval()
    fast = fastvits.optimize_for_inference(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = fast(x)
        for p in model.parameters():
            p.mul_(-1.0)
        torch.testing.assert_close(fast(x), before, atol=0, rtol=0)
    assert "InferenceOnly(runtime=eager" in repr(fast) and "frozen" in repr(fast)
    assert "inference-only copy" in fastvits.optimize_for_inference.__doc__.replace("\n", " ")
    with pytest.raises(RuntimeError, match="inference-only copy made by fastvits.optimize_for_inference"):
        fast.train()
    assert not any(m.training for m in fast.modules())  # the refusal came before any module changed mode


def test_optimize_a_training_model_copy_is_eval():
    model = small_model("litv2_s").train()
    fast = fastvits.optimize_for_inference(model)
    assert model.training and not fast.training


@pytest.mark.parametrize("name", ["fastervit_4_224", "litv2_s"])
@pytest.mark.parametrize(("first", "second"), [("eager", "export"), ("export", "export"), ("compile", "eager")])
def test_optimizing_twice_is_the_same_function(name, first, second):
    """An optimized model optimized again (export_onnx does so) keeps every conversion exactly once."""
    model = randomize(small_model(name, **MODELS[name])).eval()
    once = fastvits.optimize_for_inference(model, runtime=first)
    twice = fastvits.optimize_for_inference(once, runtime=second)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(twice(x), model(x), atol=1e-5, rtol=1e-5)
    assert repr(twice).count("InferenceOnly(") == 1 and f"runtime={second}" in repr(twice)


@pytest.mark.parametrize("name", ["fastervit_0_any_res", "litv2_s"])
def test_timm_reparameterize_model_gives_the_same_result(name):
    """`timm.utils.reparameterize_model` (timm's benchmark `--reparam`) reaches the engine through `fuse()`."""
    model = randomize(small_model(name)).eval()
    reparam = timm.utils.reparameterize_model(model)
    fast = fastvits.optimize_for_inference(model)
    assert count_batchnorms(reparam) == count_batchnorms(fast)
    assert [type(m) for m in reparam.stages.modules()] == [type(m) for m in fast.stages.modules()]
    x = torch.randn(2, 3, 72, 100)
    with torch.no_grad():
        torch.testing.assert_close(reparam(x), fast(x), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(reparam(x), model(x), atol=1e-5, rtol=1e-5)


def test_training_models_are_refused():
    model = small_model("fastervit_0_224").train()
    with pytest.raises(RuntimeError, match=r"call \.eval\(\) first"):
        timm.utils.reparameterize_model(model)


def test_unknown_runtime_is_refused():
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'; choose from eager, compile, export"):
        fastvits.optimize_for_inference(small_model("litv2_s"), runtime="tensorrt")


def test_deep_copy_and_pickle_after_a_forward():
    """Packed oneDNN weights have no storage: copies and pickles leave them out and pack again."""
    fast = fastvits.optimize_for_inference(small_model("fastervit_0_224"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = fast(x)
        for other in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
            torch.testing.assert_close(other(x), expected, atol=0, rtol=0)


def test_other_dtypes_take_plain_ops():
    model = randomize(small_model("fastervit_0_any_res")).eval().double()
    fast = fastvits.optimize_for_inference(model)
    x = torch.randn(2, 3, 72, 100, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), atol=1e-10, rtol=1e-10)
    assert "mkldnn::_convolution_pointwise" not in ops_run(lambda: fast(x))


# ----------------------------------------------------------------------------------- position encodings
def count_mlp_calls(model: nn.Module) -> list[int]:
    calls = [0]
    for name, m in model.named_modules():
        if name.endswith("cpb_mlp"):
            m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_position_encodings_once_per_size_in_a_bounded_table():
    """Carrier-token grids (stage 3, window 7) of 4x4, 6x6 and 8x8 for these inputs: the third does not fit."""
    fast = fastvits.optimize_for_inference(small_model("fastervit_3_224"), max_sizes=2)
    calls = count_mlp_calls(fast)
    tables = [m for m in fast.modules() if isinstance(m, SizeTable)]
    with torch.no_grad():
        fast(torch.randn(1, 3, 128, 160))
        first = calls[0]
        fast(torch.randn(1, 3, 128, 160))
        assert first > 0 and calls[0] == first, "the second forward recomputed position encodings"
        for size in [(256, 256), (384, 384)]:
            fast(torch.randn(1, 3, *size))
        after = calls[0]
        fast(torch.randn(1, 3, 384, 384))
    assert calls[0] > after, "sizes beyond max_sizes are computed per call"
    assert all(len(t.sizes) <= 2 for t in tables) and any(len(t.sizes) == 2 for t in tables)
    assert "max_sizes=2" in repr(tables[0])


def test_large_windows_keep_the_compact_bias_table():
    """21K-style windows (more than FULL_BIAS_LIMIT elements of bias) store the per-offset table, not the bias."""
    from fastvits.inference.position import FULL_BIAS_LIMIT, FrozenRelativeBias

    model = small_model("fastervit_4_21k_224", window_size=(7, 7, 32, 16)).eval()
    fast = fastvits.optimize_for_inference(model)
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=1e-5)
    biases = [m for m in fast.modules() if isinstance(m, FrozenRelativeBias)]
    stored = [b.numel() for m in biases for b in m.buffers()]
    assert stored and max(stored) <= FULL_BIAS_LIMIT
    # optimized again (what export_onnx does to an optimized model): one table over the plain bias MLP, not two
    again = fastvits.optimize_for_inference(fast, runtime="export")
    assert not any(isinstance(m.source, FrozenRelativeBias) for m in again.modules()
                   if isinstance(m, FrozenRelativeBias))
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ CPU kernels
@needs_onednn
@pytest.mark.parametrize("name", list(MODELS))
def test_cpu_kernels_run_on_the_optimized_copy_only(name):
    """FasterViT's convolutions and every linear run as oneDNN kernels on the optimized copy (channels-last maps in
    the conv stages); LITv2's token merging as a weighted gather and a GEMM; the plain model runs none of them."""
    model = randomize(small_model(name, **MODELS[name])).eval()
    fast = fastvits.optimize_for_inference(model)
    x = torch.randn(2, 3, 72, 100)
    with torch.no_grad():
        torch.testing.assert_close(stage0(fast, x), stage0(model, x), atol=1e-5, rtol=1e-5)
        fast_ops, plain_ops = ops_run(lambda: fast(x)), ops_run(lambda: model(x))
        kernels = {"mkldnn::_convolution_pointwise", "mkldnn::_linear_pointwise"}
        assert kernels <= fast_ops and not kernels & plain_ops
        if name.startswith("fastervit"):
            assert stage0(fast, x).is_contiguous(memory_format=torch.channels_last)
            assert not stage0(model, x).is_contiguous(memory_format=torch.channels_last)
        else:
            assert "aten::embedding_bag" in fast_ops and "torchvision::deform_conv2d" not in fast_ops
            assert "torchvision::deform_conv2d" in plain_ops


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "size"),
    [(2, 2, 0, (14, 14)), (2, 2, 0, (15, 9)), (3, 1, 1, (10, 13)), (3, 2, 1, (9, 9))],
)
def test_sampled_deform_conv_matches_torchvision(kernel, stride, padding, size):
    """The weighted-gather deformable conv equals torchvision's, offsets reaching past every border included."""
    from torchvision.ops import deform_conv2d

    from fastvits.inference.deform import deform_conv2d_sampled

    x = torch.randn(2, 8, *size)
    weight, bias = torch.randn(12, 8, kernel, kernel) * 0.2, torch.randn(12)
    ho, wo = ((n + 2 * padding - kernel) // stride + 1 for n in size)
    offset = torch.randn(2, 2 * kernel * kernel, ho, wo) * 3  # many samples fall partly or wholly off the map
    expected = deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding)
    torch.testing.assert_close(
        deform_conv2d_sampled(x, offset, weight, bias, stride, padding), expected, atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("name", ["fastervit_0_any_res", "litv2_s"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_inputs_stay_visible(name, value):
    """A NaN or Inf pixel gives a non-finite output on the optimized copy, as on the plain model (oneDNN's ReLU
    post-op alone would turn NaN into 0 and give plausible logits)."""
    fast = fastvits.optimize_for_inference(small_model(name))
    x = torch.randn(1, 3, 64, 64)
    x[0, 1, 10, 20] = value
    with torch.no_grad():
        assert not fast(x).isfinite().any()


@needs_onednn
@pytest.mark.parametrize("features", [64, 256])  # oneDNN on any rows up to ONEDNN_MAX_IN_FEATURES inputs
@pytest.mark.parametrize("rows", [49, 2000])  # packed weights up to PACKED_ROWS rows, MKL's GEMM beyond
@pytest.mark.parametrize("act", ["none", "gelu", "relu"])
def test_packed_linear_matches_nn_linear(features, rows, act):
    linear = nn.Linear(features, 96).eval()
    packed = PackedLinear(linear, act)
    x = torch.randn(1, rows, features)
    plain = {"none": lambda y: y, "gelu": torch.nn.functional.gelu, "relu": torch.relu}[act]
    with torch.no_grad():
        torch.testing.assert_close(packed(x), plain(linear(x)), atol=1e-5, rtol=1e-5)
        onednn = "mkldnn::_linear_pointwise" in ops_run(lambda: packed(x))
    assert onednn == (rows <= PACKED_ROWS or act != "none" or features <= ONEDNN_MAX_IN_FEATURES)


def test_packed_layers_refuse_unknown_activations():
    with pytest.raises(ValueError, match=r"act must be one of \('none', 'relu', 'gelu'\), got 'silu'"):
        PackedLinear(nn.Linear(4, 4), act="silu")


# ----------------------------------------------------------------------------------------- torch.compile
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
@pytest.mark.parametrize("runtime", ["plain", "compile"])
def test_compile_fullgraph(name, dynamic, runtime):
    """The whole model is one graph without breaks, for square, non-square and non-divisible inputs: the plain model
    and its inference form for torch.compile."""
    model = small_model(name).eval()
    target = model if runtime == "plain" else fastvits.optimize_for_inference(model, runtime="compile")
    compiled, _ = compile_counting_graphs(target, dynamic)
    with torch.no_grad():
        for size in [(64, 64), (96, 128), (72, 100)]:
            x = torch.randn(2, 3, *size)
            torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


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


def test_compiled_inference_form_reads_position_encodings_as_constants():
    """After one eager forward of the inference form, torch.compile's graph no longer runs the position MLPs (as the
    official deploy mode keeps its biases in buffers); the plain model's graph does."""
    model = small_model("fastervit_0_224").eval()
    frozen = fastvits.optimize_for_inference(model, runtime="compile")
    x = torch.randn(1, 3, 64, 64)
    position_linears = {}
    for name, m in (("plain", model), ("frozen", frozen)):
        with torch.no_grad():
            m(x)  # the eager forward that fills the tables
            compiled, graphs = compile_counting_graphs(m, dynamic=False)
            torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)
        (graph,) = graphs
        position_linears[name] = [
            n for n in graph.graph.nodes if "linear" in str(n.target) and "cpb_mlp" in str(n.args[1])
        ]
    assert position_linears["plain"] and not position_linears["frozen"]


@pytest.mark.parametrize("freezing", [False, True])
def test_compile_inductor_matches_eager(freezing):
    """Inductor, with and without freezing, on the inference form: 64x64 position biases read from the table filled
    by an eager forward, 96x128 computed in the graph."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    model = small_model("fastervit_0_any_res").eval()
    fast = fastvits.optimize_for_inference(model, runtime="compile")
    compiled = torch.compile(fast, fullgraph=True, dynamic=False)
    with torch.no_grad(), inductor_config.patch(freezing=freezing):
        fast(torch.randn(1, 3, 64, 64))
        for size in [(64, 64), (96, 128)]:
            x = torch.randn(2, 3, *size)
            torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)


# -------------------------------------------------------------------------------------------- precision
@pytest.mark.parametrize("name", ["fastervit_0_any_res", "litv2_s"])
@pytest.mark.parametrize("runtime", ["eager", "compile"])
def test_bf16_inference_form(name, runtime):
    """bfloat16 weights and activations, float32 in and out at the call; within 8 unit roundoffs of bf16 (2^-8) of
    the logits' scale (measured: about 2)."""
    model = randomize(small_model(name)).eval()
    fast = fastvits.optimize_for_inference(model, runtime=runtime, precision="bf16")
    assert {p.dtype for p in fast.parameters()} == {torch.bfloat16} and "precision=bf16" in repr(fast)
    x = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        ref, out = model(x), fast(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=8 * 2**-8 * ref.abs().max().item(), rtol=0)


@pytest.mark.parametrize("name", ["fastervit_0_any_res", "litv2_s"])
def test_bf16_compiled_with_inductor(name):
    """The bf16 form under torch.compile with inductor and freezing, as `fastvits bench --backend compile+freeze
    --precision bf16` runs it: one graph, still bfloat16 inside, within the eager bf16 tolerance."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    model = randomize(small_model(name)).eval()
    fast = fastvits.optimize_for_inference(model, runtime="compile", precision="bf16")
    compiled = torch.compile(fast, fullgraph=True, dynamic=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), inductor_config.patch(freezing=True):
        fast(x[:1])  # the position tables for this size, read by the graph as constants
        ref, out = model(x), compiled(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=8 * 2**-8 * ref.abs().max().item(), rtol=0)
    # bf16 rounding shows (about 2 unit roundoffs in eager); float32 throughout would stay near 1e-6
    assert (out - ref).abs().max() > 2**-8 * 0.1 * ref.abs().max(), "the compiled graph computed in float32"


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision 'int4'; choose from fp32, bf16"):
        fastvits.optimize_for_inference(small_model("litv2_s"), precision="int4")


def test_bf16_on_a_cpu_that_emulates_it_warns(monkeypatch):
    monkeypatch.setattr(fastvits.inference.engine, "native_bf16", lambda: None)
    with pytest.warns(UserWarning, match="no native bf16 .* about 10x slower than float32"):
        fastvits.optimize_for_inference(small_model("litv2_s"), precision="bf16")
