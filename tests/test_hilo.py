"""HiLo attention against fixtures produced by the official code, plus its layout and error contracts."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_same_rounding, load_fixture

from fastvits.layers import Attention, HiLo, hilo_head_split

HILO_FIXTURES = [
    "hilo_d64h8_a0.5_ws2_8x8",  # divisible square map (classification and dense variants agree)
    "hilo_d64h8_a0.5_ws2_7x9",  # non-divisible, non-square: zero padding to 8x10
    "hilo_d64h8_a0.0_ws2_7x9",  # Hi-Fi only
    "hilo_d64h8_a1.0_ws2_7x9",  # Lo-Fi only, pooled keys over a padded map
    "hilo_d64h8_a0.5_ws1_7x9",  # window 1: plain global attention
    "hilo_d64h8_a0.9_ws4_6x11",  # truncated split 7 Lo / 1 Hi, window 4, padding to 8x12
]


def build(meta: dict) -> HiLo:
    a = meta["constructor_args"]
    return HiLo(
        a["dim"], a["num_heads"], window_size=a["window_size"], alpha=a["alpha"],
        qkv_bias=a["qkv_bias"], qk_scale=a["qk_scale"],
    ).eval()


def load(name: str) -> tuple[HiLo, dict, tuple[int | None, int | None]]:
    meta, t = load_fixture("litv2", name)
    layer = build(meta)
    layer.load_state_dict({k.removeprefix("state_dict."): v for k, v in t.items() if k.startswith("state_dict.")})
    call = meta.get("call", {})
    return layer, t, (call.get("H"), call.get("W"))


@pytest.mark.parametrize("name", HILO_FIXTURES)
def test_fixture_parity(name, model_form):
    layer, t, (H, W) = load(name)
    with torch.no_grad():
        out = model_form(layer)(t["io.input"], H, W)
    torch.testing.assert_close(out, t["io.output"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", HILO_FIXTURES)
def test_fixture_bit_exact_and_float64(name):
    """The plain layer, as built, has the official op order: identical in float32, 1e-10 in float64."""
    layer, t, (H, W) = load(name)
    with torch.no_grad():
        assert_same_rounding(layer(t["io.input"], H, W), t["io.output"])
        out64 = layer.double()(t["io.input"].double(), H, W)
    torch.testing.assert_close(out64, t["io.output_f64"], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", HILO_FIXTURES)
def test_fixture_shapes_and_split(name):
    meta, t = load_fixture("litv2", name)
    layer = build(meta)
    d = meta["derived"]
    assert (layer.lofi_heads * layer.head_dim, layer.hifi_heads * layer.head_dim) == (d["lofi_dim"], d["hifi_dim"])
    ours = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    official = {k.removeprefix("state_dict."): tuple(v.shape) for k, v in t.items() if k.startswith("state_dict.")}
    assert ours == official


@pytest.mark.parametrize(
    "heads, alpha, ws, expected",
    [(12, 0.9, 2, 10), (12, 0.7, 2, 8), (12, 0.4, 2, 4), (12, 0.2, 2, 2), (4, 0.9, 2, 3), (8, 0.9, 2, 7),
     (16, 0.9, 2, 14), (3, 0.5, 2, 1), (8, 0.0, 2, 0), (8, 1.0, 2, 8), (8, 0.3, 1, 8)],
)
def test_head_split_truncates(heads, alpha, ws, expected):
    assert hilo_head_split(heads, alpha, ws) == (expected, heads - expected)
    assert hilo_head_split(heads, alpha, ws)[0] == (heads if ws == 1 else math.trunc(float(heads) * alpha))


def test_window_one_is_plain_attention(model_form):
    """s = 1: all heads Lo-Fi without pooling, i.e. multi-head attention with qkv = [l_q; l_kv]."""
    hilo = HiLo(32, 4, window_size=1, alpha=0.3, qkv_bias=True).eval()
    mha = Attention(32, 4, qkv_bias=True).eval()
    with torch.no_grad():
        mha.qkv.weight.copy_(torch.cat([hilo.l_q.weight, hilo.l_kv.weight]))
        mha.qkv.bias.copy_(torch.cat([hilo.l_q.bias, hilo.l_kv.bias]))
        mha.proj.load_state_dict(hilo.l_proj.state_dict())
        x = torch.randn(2, 5 * 7, 32)
        torch.testing.assert_close(model_form(hilo)(x, 5, 7), model_form(mha)(x), atol=1e-6, rtol=1e-6)


def test_padding_is_zeros_then_crop():
    """A non-divisible map gives the top-left crop of HiLo on the explicitly zero-padded map."""
    layer = HiLo(16, 4, window_size=3, alpha=0.5, qkv_bias=True).eval()
    x = torch.randn(2, 16, 7, 8)
    with torch.no_grad():
        padded = layer(F.pad(x, (0, 1, 0, 2)))  # 9 x 9, divisible
        torch.testing.assert_close(layer(x), padded[:, :, :7, :8], atol=0, rtol=0)


def test_layouts_agree():
    layer = HiLo(16, 4, window_size=2, alpha=0.5).eval()
    x = torch.randn(2, 16, 5, 6)
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C) row-major
    with torch.no_grad():
        out_map = layer(x)
        out_tokens = layer(tokens, 5, 6)
    assert out_map.shape == x.shape and out_tokens.shape == tokens.shape
    torch.testing.assert_close(out_map.flatten(2).transpose(1, 2), out_tokens, atol=0, rtol=0)
    with torch.no_grad():  # a square token map needs no H, W
        sq = torch.randn(2, 36, 16)
        torch.testing.assert_close(layer(sq), layer(sq, 6, 6), atol=0, rtol=0)


def test_gradients_reach_both_branches():
    layer = HiLo(16, 4, window_size=2, alpha=0.5, qkv_bias=True)
    x = torch.randn(1, 16, 5, 5, requires_grad=True)
    layer(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=30, num_heads=4), "multiple of num_heads"),
        (dict(dim=32, num_heads=4, window_size=0), "window_size"),
        (dict(dim=32, num_heads=4, alpha=1.5), "alpha"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HiLo(**kwargs)


@pytest.mark.parametrize(
    "x, hw, match",
    [
        (torch.randn(2, 30, 32), (), "not a square map"),
        (torch.randn(2, 30, 32), (5,), "both H and W"),
        (torch.randn(2, 30, 32), (5, 7), "30 tokens but H x W = 5 x 7 = 35"),
        (torch.randn(2, 30, 16), (5, 6), "16 channels"),
        (torch.randn(2, 16, 5, 6), (), "C=16"),
        (torch.randn(30, 32), (), "tokens \\(B, N, C\\) or a map"),
    ],
)
def test_bad_input(x, hw, match):
    layer = HiLo(32, 4)
    with pytest.raises(ValueError, match=match):
        layer(x, *hw)
