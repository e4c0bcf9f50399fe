"""The 2-D attention layers: one interface (any H x W, both layouts), and each layer against a reference.

HAT and HiLo are also checked against the official fixtures through the models that use them
(test_fastervit_parity.py, test_hilo.py, test_litv2_parity.py).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock

from fastvits.layers import (
    ATTENTION_2D,
    GlobalAttention2d,
    HAT2d,
    SpatialReductionAttention2d,
    WindowAttention2d,
    create_attention2d,
)

# small configurations whose windows / pooling do not divide the test sizes
KWARGS = {
    "global": {},
    "window": {"window_size": 4, "shift_size": 2},
    "sra": {"sr_ratio": 2},
    "hilo": {"window_size": 2, "alpha": 0.5},
    "hat": {"window_size": 4, "ct_size": 2},
}
SIZES = [(9, 13), (14, 6), (3, 5)]  # non-square and non-divisible; the last fits in a single window


def build(kind: str, channels_last: bool = False, dim: int = 16) -> torch.nn.Module:
    return create_attention2d(kind, dim, 4, channels_last=channels_last, **KWARGS[kind])


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", list(ATTENTION_2D))
def test_any_size_both_layouts(kind, size, model_form):
    """Same shape out, and channels-first and channels-last give the same map up to the permutation."""
    first, last = build(kind).eval(), build(kind, channels_last=True).eval()
    last.load_state_dict(first.state_dict())
    first, last = model_form(first), model_form(last)
    x = torch.randn(2, 16, *size)
    with torch.no_grad():
        y_first = first(x)
        y_last = last(x.permute(0, 2, 3, 1).contiguous())
    assert y_first.shape == x.shape and y_last.shape == (2, *size, 16)
    assert torch.isfinite(y_first).all()
    torch.testing.assert_close(y_last.permute(0, 3, 1, 2), y_first, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", list(ATTENTION_2D))
def test_gradients_reach_every_parameter(kind):
    layer = build(kind)
    x = torch.randn(2, 16, 9, 13, requires_grad=True)
    layer(x).square().sum().backward()
    dead = [n for n, p in layer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient for {dead}"
    assert x.grad.abs().sum() > 0


def test_factory():
    assert set(ATTENTION_2D) == {"global", "window", "sra", "hilo", "hat"}
    assert [k for k, cls in ATTENTION_2D.items() if cls.residual] == ["hat"]
    assert isinstance(create_attention2d("window", 32, 4, window_size=7), WindowAttention2d)
    with pytest.raises(ValueError, match="unknown attention kind 'swin'.*global, window"):
        create_attention2d("swin", 32, 4)


def test_bad_input_names_the_layout():
    layer = GlobalAttention2d(16, 4)
    with pytest.raises(ValueError, match=r"C=5,.*channels_last=True"):
        layer(torch.randn(2, 5, 7, 16))  # a channels-last map given to a channels-first layer
    with pytest.raises(ValueError, match=r"expects a map \(B, C, H, W\)"):
        layer(torch.randn(2, 49, 16))


# ------------------------------------------------------------------------------- window attention
def reference_window_attention(layer: WindowAttention2d, x: torch.Tensor) -> torch.Tensor:
    """Written from the definition, token by token, on a (B, H, W, C) map.

    The map is padded to window multiples and shifted up-left by s (cyclically). A token attends to the
    real tokens of its shifted window that are on its side of the wrap (rows < s and columns < s wrap
    around), with the bias of their relative offset in the shifted map.
    """
    B, H, W, C = x.shape
    w, s = layer.window_size, layer.shift_size
    Hp, Wp = math.ceil(H / w) * w, math.ceil(W / w) * w
    heads = layer.attn.num_heads
    d = C // heads
    q, k, v = layer.attn.qkv(x).view(B, H, W, 3, heads, d).unbind(3)  # 3 x (B, H, W, heads, d)

    def shifted(r: int, c: int) -> tuple[int, int]:
        return (r - s) % Hp, (c - s) % Wp

    out = torch.zeros(B, H, W, heads, d, dtype=x.dtype)
    for r in range(H):
        for c in range(W):
            pr, pc = shifted(r, c)
            keys = [
                (r2, c2)
                for r2 in range(H)
                for c2 in range(W)
                if shifted(r2, c2)[0] // w == pr // w
                and shifted(r2, c2)[1] // w == pc // w
                and (r2 < s) == (r < s)
                and (c2 < s) == (c < s)
            ]
            idx = [(pr - shifted(*key)[0] + w - 1) * (2 * w - 1) + (pc - shifted(*key)[1] + w - 1) for key in keys]
            bias = layer.relative_position_bias_table[idx].T  # (heads, K)
            kk = torch.stack([k[:, a, b] for a, b in keys], dim=2)  # (B, heads, K, d)
            vv = torch.stack([v[:, a, b] for a, b in keys], dim=2)
            logits = (q[:, r, c, :, None, :] * kk).sum(-1) * d**-0.5 + bias  # (B, heads, K)
            out[:, r, c] = (logits.softmax(-1)[..., None] * vv).sum(2)
    return layer.attn.proj(out.reshape(B, H, W, C))


@pytest.mark.parametrize(
    "size, window, shift", [((9, 13), 4, 2), ((8, 8), 4, 2), ((10, 6), 3, 1), ((5, 7), 4, 0)]
)
def test_window_attention_matches_reference(size, window, shift, model_form):
    layer = WindowAttention2d(8, 2, window_size=window, shift_size=shift, channels_last=True).double().eval()
    for p in layer.parameters():
        p.data.normal_(0, 0.5)
    x = torch.randn(2, *size, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = reference_window_attention(layer, x)
        torch.testing.assert_close(model_form(layer)(x), expected, atol=1e-10, rtol=1e-10)


def test_shifted_window_attention_matches_timm_swin_block(model_form):
    """On a divisible map the layer is Swin's SW-MSA (timm's block masks with -100 instead of -inf)."""
    block = SwinTransformerBlock(16, (8, 8), num_heads=2, window_size=4, shift_size=2).eval()
    layer = WindowAttention2d(16, 2, window_size=4, shift_size=2, channels_last=True).eval()
    layer.load_state_dict({f"attn.{k}": v for k, v in block.attn.state_dict().items() if "bias_table" not in k}
                          | {"relative_position_bias_table": block.attn.relative_position_bias_table}, strict=True)
    with torch.no_grad():
        layer.relative_position_bias_table.normal_(0, 1)
        block.attn.relative_position_bias_table.copy_(layer.relative_position_bias_table)
        x = torch.randn(2, 8, 8, 16)
        torch.testing.assert_close(model_form(layer)(x), block._attn(x), atol=1e-5, rtol=1e-5)


def test_bad_shift():
    with pytest.raises(ValueError, match="shift_size"):
        WindowAttention2d(16, 2, window_size=4, shift_size=4)


# ------------------------------------------------------------------------------ spatial reduction
def test_sra_ratio_one_is_global_attention(model_form):
    sra = SpatialReductionAttention2d(16, 4, sr_ratio=1).eval()
    msa = GlobalAttention2d(16, 4).eval()
    with torch.no_grad():
        msa.attn.qkv.weight.copy_(torch.cat([sra.q.weight, sra.kv.weight]))
        msa.attn.qkv.bias.copy_(torch.cat([sra.q.bias, sra.kv.bias]))
        msa.attn.proj.load_state_dict(sra.proj.state_dict())
        x = torch.randn(2, 16, 5, 7)
        torch.testing.assert_close(model_form(sra)(x), model_form(msa)(x), atol=1e-6, rtol=1e-6)


def test_sra_pads_before_reducing():
    """A non-divisible map gives the crop of SRA on the explicitly zero-padded map (padded queries aside)."""
    layer = SpatialReductionAttention2d(16, 4, sr_ratio=3).eval()
    x = torch.randn(2, 16, 7, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer(F.pad(x, (0, 1, 0, 2)))[:, :, :7, :8], atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------------- HAT
def test_hat_layer_is_attention_only_by_default():
    layer = HAT2d(16, 4)
    assert len(layer.blocks) == 1 and layer.blocks[0].mlp is None and layer.blocks[0].hat_mlp is None
    assert layer.blocks[0].propagate and layer.blocks[0].pos_embed is None and layer.blocks[0].hat_pos_embed is None
    full = HAT2d(16, 4, depth=3, mlp_ratio=4.0, pos_embed=True)
    assert [b.propagate for b in full.blocks] == [False, False, True] and full.blocks[0].mlp is not None
    assert all(b.pos_embed is not None and b.hat_pos_embed is not None for b in full.blocks)


def test_hat_carrier_tokens_carry_information_across_windows():
    """A change in one window reaches a window far away through the carrier tokens (and only through them)."""
    x = torch.randn(1, 16, 12, 12)
    far = torch.zeros_like(x)
    far[:, :, :4, :4] = 1.0  # top-left window
    for carrier_tokens, moves in [(True, True), (False, False)]:
        layer = HAT2d(16, 4, window_size=4, ct_size=1, carrier_tokens=carrier_tokens).eval()
        with torch.no_grad():
            delta = (layer(x + far) - layer(x))[:, :, 8:, 8:]  # bottom-right window
        assert (delta.abs().max() > 1e-4) == moves
