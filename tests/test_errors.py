"""Bad input gets an exception whose message names the problem and the fix."""

import pytest
import torch
from helpers import small_model

import fastvits

FAMILIES = ["fastervit_0_224", "litv2_s"]


@pytest.fixture(params=FAMILIES)
def model(request):
    return small_model(request.param).eval()


def test_wrong_channel_count(model):
    with pytest.raises(ValueError, match=r"3 input channels but got 1.*in_chans=1"):
        model(torch.randn(1, 1, 64, 64))


def test_channels_last_input_hint(model):
    with pytest.raises(ValueError, match="permute"):
        model(torch.randn(1, 64, 64, 3))


def test_missing_batch_dimension(model):
    with pytest.raises(ValueError, match=r"4-D image batch.*unsqueeze\(0\)"):
        model(torch.randn(3, 64, 64))


def test_too_small(model):
    with pytest.raises(ValueError, match="at least 32x32 pixels, got 16x64"):
        model(torch.randn(1, 3, 16, 64))


def test_integer_images(model):
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_features_only_checks_too(model):
    feats = small_model(FAMILIES[0], features_only=True)
    with pytest.raises(ValueError, match="input channels"):
        feats(torch.randn(1, 4, 64, 64))


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown fastvits model 'fastervit_9'.*available"):
        fastvits.create_model("fastervit_9")


def test_minimum_size_runs(model):
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 32, 33))).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_unknown_global_pool(name):
    with pytest.raises(ValueError, match="global_pool must be 'avg' or '', got 'max'"):
        small_model(name, global_pool="max")
    model = small_model(name)
    with pytest.raises(ValueError, match="global_pool must be 'avg' or ''"):
        model.reset_classifier(10, "max")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_input_dtype_differs_from_weights(model, dtype):
    with pytest.raises(TypeError, match=rf"torch.float32 weights but got a {dtype} input.*x.to\(torch.float32\)"):
        model(torch.randn(1, 3, 64, 64, dtype=dtype))
    # Mixed precision: the weights stay float32, and under autocast a float32 or a bfloat16 input is taken
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = [model(x), model(x.to(torch.bfloat16))]
    for out in outputs:
        assert out.dtype == torch.bfloat16 and out.shape == expected.shape  # autocast reached the classifier
        # bfloat16 keeps 8 bits of mantissa: measured within 1% of the logits' range, allowed 5%
        assert (out.float() - expected).abs().max() <= 0.05 * expected.abs().max()


@pytest.mark.parametrize("name", FAMILIES)
def test_no_pooling_needs_no_classifier(name):
    with pytest.raises(ValueError, match=r"global_pool='' \(no pooling\) needs num_classes=0"):
        small_model(name, global_pool="")
    model = small_model(name, num_classes=0, global_pool="")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).dim() == 4  # the unpooled feature map
    with pytest.raises(ValueError, match="needs num_classes=0"):
        model.reset_classifier(10)
    model.reset_classifier(10, "avg")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_window_sizes_are_checked():
    with pytest.raises(ValueError, match="HAT: window_size and ct_size must be at least 1, got 0 and 2"):
        small_model("fastervit_0_224", window_size=[7, 7, 0, 7])
    with pytest.raises(ValueError, match="window_size and ct_size must be at least 1, got -1"):
        fastvits.layers.create_attention2d("hat", 32, 2, window_size=-1)
    with pytest.raises(ValueError, match="window_size must be at least 1, got 0"):
        fastvits.layers.create_attention2d("window", 48, 4, window_size=0)
    one_side = small_model("fastervit_0_224", window_size=4)  # one side for every stage
    assert [stage.blocks[0].window_size for stage in one_side.levels[2:]] == [4, 4]


def test_float64_under_autocast_is_named():
    model = small_model("fastervit_0_224").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(TypeError, match="float64 input under autocast.*x.float"):
            model(torch.randn(1, 3, 64, 64, dtype=torch.float64))
