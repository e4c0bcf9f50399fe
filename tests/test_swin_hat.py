"""Swin + HAT (`fastvits.hat_swin`): starts close to Swin, loads Swin weights strictly, trains, and its
carrier-token window attention matches an explicit reference."""

import math

import pytest
import timm
import torch
from reference_hat import relative_bias

from fastvits import CheckpointError
from fastvits.hat_swin import SwinHATBlock, load_swin_state_dict, swin_with_hat

# Swin-T's structure (patch 4, window 7, 224 input: 56, 28, 14, 7 token grids) at reduced width and depth
SMALL = {"embed_dim": 32, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 4, 8), "num_classes": 10}


def small_swin(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("swin_tiny_patch4_window7_224", **SMALL).eval()


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def test_starts_close_to_swin(image, model_form):
    swin = small_swin()
    hat = model_form(swin_with_hat(swin, stages=(1, 2)).eval())
    assert isinstance(hat.layers[2].blocks[1], SwinHATBlock) and not isinstance(hat.layers[0].blocks[0], SwinHATBlock)
    with torch.no_grad():
        ours, theirs = hat.forward_features(image), swin.forward_features(image)
    assert 0 < rel_diff(ours, theirs) < 1e-3  # the carrier-token key is live, with about e^-4 of a token's weight


def test_carrier_tokens_change_the_output_once_trained(image):
    swin = small_swin()
    hat = swin_with_hat(swin, stages=(2,)).eval()
    with torch.no_grad():
        for block in hat.layers[2].blocks:
            block.hat.gamma.fill_(1.0)
            block.hat.gamma_propagate.fill_(1.0)
            block.hat.key_bias.zero_()
        assert rel_diff(hat.forward_features(image), swin.forward_features(image)) > 1e-2


def test_original_model_untouched_and_bad_stages():
    swin = small_swin()
    keys = set(swin.state_dict())
    swin_with_hat(swin)
    assert set(swin.state_dict()) == keys and not any(isinstance(m, SwinHATBlock) for m in swin.modules())
    with pytest.raises(ValueError, match=r"stages \[4\]"):
        swin_with_hat(swin, stages=(3, 4))
    with pytest.raises(TypeError, match="SwinTransformer"):
        swin_with_hat(torch.nn.Linear(2, 2))


def test_loads_swin_weights_strictly(tmp_path, image):
    """A saved Swin state dict loads into a converted model built from other random weights: every Swin key."""
    swin = small_swin(seed=0)
    path = tmp_path / "swin.pth"
    torch.save(swin.state_dict(), path)
    hat = swin_with_hat(small_swin(seed=1))
    state = torch.load(path, weights_only=True)
    load_swin_state_dict(hat, state)
    hat_state = hat.state_dict()
    assert all(torch.equal(hat_state[k], v) for k, v in state.items())
    added = [k for k in hat_state if k not in state]
    assert added and all(".hat." in k for k in added)
    with torch.no_grad():
        assert rel_diff(hat.eval().forward_features(image), swin.forward_features(image)) < 1e-3
    with pytest.raises(CheckpointError, match="unexpected.*extra.weight"):
        load_swin_state_dict(hat, state | {"extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"missing \['head.fc.bias'\]"):
        load_swin_state_dict(hat, {k: v for k, v in state.items() if k != "head.fc.bias"})


def test_forward_backward_reaches_the_new_parameters(image):
    hat = swin_with_hat(small_swin(), stages=(1, 2)).train()
    hat(image[:1]).logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in hat.parameters())
    for block in hat.layers[2].blocks:  # zero-initialised scales still learn
        assert block.hat.gamma.grad.abs().sum() > 0 and block.hat.key_bias.grad.abs().sum() > 0
        assert block.hat.gamma_propagate.grad.abs().sum() > 0


def test_full_size_swin_t():
    swin = timm.create_model("swin_tiny_patch4_window7_224").eval()
    hat = swin_with_hat(swin).eval()
    extra = sum(p.numel() for p in hat.parameters()) - sum(p.numel() for p in swin.parameters())
    assert 0 < extra < 0.01 * sum(p.numel() for p in swin.parameters())  # no new projections
    with torch.no_grad():
        assert hat(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


# ---------------------------------------------------------------------------------- explicit reference
def explicit_attention(qkv, proj, tokens: torch.Tensor, heads: int, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v of one sequence (N, C), then the output projection."""
    N, C = tokens.shape
    q, k, v = qkv(tokens).view(N, 3, heads, C // heads).permute(1, 2, 0, 3)  # 3 x (heads, N, d)
    out = ((q @ k.transpose(-1, -2)) / math.sqrt(C // heads) + bias).softmax(-1) @ v  # (heads, N, d)
    return proj(out.transpose(0, 1).reshape(N, C))


def reference_hat_attention(block, x: torch.Tensor) -> torch.Tensor:
    """HAT window attention of an unshifted block with one carrier token per window, window by window.

    x: normalised (B, H, W, C) map with sides that are window multiples.
    """
    B, H, W, C = x.shape
    w = block.window_size[0]
    hat, attn, heads = block.hat, block.attn, block.attn.num_heads
    gh, gw = H // w, W // w
    conv = hat.tokenizer.pos_embed(x.permute(0, 3, 1, 2))  # (B, C, H, W)
    ct = conv.view(B, C, gh, w, gw, w).mean((3, 5)).permute(0, 2, 3, 1)  # (B, gh, gw, C): window means
    ct_bias = relative_bias(hat.rel_pos.cpb_mlp, gh, gw, x.dtype)  # the carrier-token grid's position bias
    ct = torch.stack([
        ct[b] + hat.gamma * explicit_attention(attn.qkv, attn.proj, hat.norm(ct[b]).view(-1, C), heads, ct_bias).view(
            gh, gw, C)
        for b in range(B)
    ])
    pos = [(r, c) for r in range(w) for c in range(w)]
    idx = [[(p[0] - q[0] + w - 1) * (2 * w - 1) + (p[1] - q[1] + w - 1) for q in pos] for p in pos]
    bias = torch.zeros(heads, w * w + 1, w * w + 1)
    bias[:, 1:, 1:] = attn.relative_position_bias_table[torch.tensor(idx)].permute(2, 0, 1)
    bias[:, :, 0] += hat.key_bias[:, None]  # the carrier token's key column
    out = torch.empty_like(x)
    for b in range(B):
        for i in range(gh):
            for j in range(gw):
                tokens = torch.cat([ct[b, i, j][None], x[b, i * w : (i + 1) * w, j * w : (j + 1) * w].reshape(-1, C)])
                y = explicit_attention(attn.qkv, attn.proj, tokens, heads, bias)
                y = y[1:] + hat.gamma_propagate * y[0]  # nearest upsampling of one carrier token: all of the window
                out[b, i * w : (i + 1) * w, j * w : (j + 1) * w] = y.view(w, w, C)
    return out


def test_hat_window_attention_matches_explicit_reference(model_form):
    hat = swin_with_hat(small_swin(), stages=(1,), ct_size=1).eval()
    block = hat.layers[1].blocks[0]  # 28 x 28 tokens, window 7, no shift
    assert not any(block.shift_size)
    for p in block.hat.parameters():  # a "trained" state: every term matters
        p.data.normal_(0, 0.3)
    x = torch.randn(2, 28, 28, block.dim)
    with torch.no_grad():
        expected = reference_hat_attention(block, x)
        ours = model_form(hat).layers[1].blocks[0]._attn(x)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
