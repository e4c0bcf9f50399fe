"""LITv2 structure: official key layout, parameter counts and FLOPs, any input size, loading and errors."""

import ast

import pytest
import timm
import torch
import torch.nn as nn
from helpers import FIXTURES
from torch.utils.flop_counter import FlopCounterMode

import fastvits
from fastvits.bench.measure import count_gmacs, register_deform_conv2d_flops
from fastvits.models import LITv2
from fastvits.models.litv2 import ConvFFN, DeformableTokenMerging, DeformConv2dPack, checkpoint_filter_fn
from fastvits.models.litv2 import default_cfgs as LITV2_CFGS

TINY = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))


def tiny(**kwargs) -> LITv2:
    return fastvits.create_model("litv2_s", **{**TINY, **kwargs})


def official_litv2_s_keys() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official LITv2-S state dict (generated from the official class)."""
    lines = (FIXTURES / "litv2" / "litv2_s_keys.txt").read_text().splitlines()
    rows = [line.split("\t") for line in lines if line and not line.startswith("#")]
    return {key: tuple(ast.literal_eval(shape)) for key, shape, _ in rows}


# ------------------------------------------------------------------------------------- official layout
def test_registered():
    assert set(LITV2_CFGS) == {"litv2_s", "litv2_m", "litv2_b", "litv2_b_384"}
    assert set(LITV2_CFGS) <= set(fastvits.list_models("litv2*")) <= set(timm.list_models())
    cfg = fastvits.create_model("litv2_b_384", **TINY).pretrained_cfg
    assert cfg["url"] == "https://github.com/ziplab/LITv2/releases/download/v1.0/litv2_b_384.pth"
    assert cfg["input_size"] == (3, 384, 384) and cfg["license"] == "apache-2.0"


def test_official_litv2_s_keys_and_shapes():
    """The official LITv2-S state dict converts to exactly our keys and shapes (219 tensors)."""
    official = official_litv2_s_keys()
    assert len(official) == 219
    with torch.device("meta"):
        model = fastvits.create_model("litv2_s")
        converted = checkpoint_filter_fn({k: torch.empty(s) for k, s in official.items()}, model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected


# name -> (exact parameters, official analytic GFLOPs at the variant's resolution)
OFFICIAL = {
    "litv2_s": (27_844_000, 3.734),
    "litv2_m": (48_830_368, 7.479),
    "litv2_b": (86_520_704, 13.194),
    "litv2_b_384": (86_520_704, 39.709),
}


def official_convention_extras(model: nn.Module) -> dict[str, int]:
    """Forward hooks counting what the official analytic `flops()` adds to multiply-accumulates.

    The official count (a Swin-style formula) also charges one operation per output element of every
    LayerNorm, ConvFFN GELU, DTM BatchNorm and DTM GELU, counts the DTM offset conv with 12 output
    channels instead of 8, and charges the final norm as num_features * (H/4 * W/4) / 16, 4x its real
    H/32 x W/32 map (added by the caller).
    """
    counts = dict(elementwise=0, offset_conv_extra=0)
    hooks = []

    def elementwise(module, inp, out):
        counts["elementwise"] += out.numel()

    def offset_extra(module, inp, out):  # 4 phantom channels: Ho*Wo*4 outputs x (C_in * k * k) MACs
        counts["offset_conv_extra"] += out[:, :4].numel() * inp[0].shape[1] * module.weight[0, 0].numel()

    for m in model.modules():
        if isinstance(m, nn.LayerNorm) and m is not model.norm:
            hooks.append(m.register_forward_hook(elementwise))
        elif isinstance(m, ConvFFN):
            hooks.append(m.act.register_forward_hook(elementwise))
        elif isinstance(m, DeformableTokenMerging):
            hooks += [m.norm.register_forward_hook(elementwise), m.act.register_forward_hook(elementwise)]
        elif isinstance(m, DeformConv2dPack):
            hooks.append(m.conv_offset.register_forward_hook(offset_extra))
    return counts, hooks


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_parameters_and_flops_equal_official(name):
    """Exact parameter counts; MACs measured on the real forward (meta device) plus the official
    counting convention give the official GFLOPs to the published 3 decimals."""
    params, gflops = OFFICIAL[name]
    size = timm.models.get_pretrained_cfg(name).input_size
    with torch.device("meta"):
        model = fastvits.create_model(name).eval()
        x = torch.empty(1, *size)
    assert sum(p.numel() for p in model.parameters()) == params
    counts, hooks = official_convention_extras(model)
    register_deform_conv2d_flops()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    macs = counter.get_total_flops() // 2
    final_norm = model.num_features * (size[1] // 4) * (size[2] // 4) // 16
    official = macs + counts["elementwise"] + counts["offset_conv_extra"] + final_norm
    assert round(official / 1e9, 3) == gflops
    assert abs(macs / 1e9 - gflops) / gflops < 0.006  # the real MACs differ from the convention by < 0.6 %


def test_deform_conv_flops_counted():
    layer = DeformConv2dPack(8, 16, 2, stride=2)
    with torch.no_grad():
        gmacs = count_gmacs(lambda: layer(torch.randn(1, 8, 6, 10)), 1)
    offset_conv = 3 * 5 * 8 * 8 * 4
    assert round(gmacs * 1e9) == offset_conv + 3 * 5 * 16 * 8 * 4


# ---------------------------------------------------------------------------------------- any input size
@pytest.mark.parametrize("size", [(32, 32), (33, 47), (46, 78), (64, 160), (95, 61)])
def test_any_input_size(size):
    """Patch embedding pads to a multiple of 4; every DTM floors; HiLo pads to its window internally."""
    model = tiny(num_classes=3).eval()
    H, W = -(-size[0] // 4), -(-size[1] // 4)
    expected = [(H, W), (H // 2, W // 2), (H // 4, W // 4), (H // 8, W // 8)]
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
        out = model(torch.randn(2, 3, *size))
    assert [tuple(f.shape[2:]) for f in feats] == expected
    assert [f.shape[1] for f in feats] == [16, 32, 64, 128]
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_fused_and_plain_attention_agree():
    plain = tiny().eval()
    fused = tiny(fused_attn=True).eval()
    fused.load_state_dict(plain.state_dict())
    assert all(m.fused_attn for m in fused.modules() if isinstance(m, fastvits.layers.HiLo))
    x = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), atol=1e-5, rtol=1e-5)


def low_precision_tolerance(dtype: torch.dtype, ref: torch.Tensor) -> dict[str, float]:
    """8 unit roundoffs of the dtype (2^-8 for bf16's 8 significant bits, 2^-11 for fp16's 11) of the logits' scale:
    the measured error of these tiny models is about 2 units (1.65-2.18, three seeds, zero offsets); a wrong op in
    low precision (a deformable conv on truncated offsets, a norm in bf16 statistics) errs by far more."""
    unit = torch.finfo(dtype).eps / 2  # unit roundoff
    return dict(atol=8 * unit * ref.abs().max().item(), rtol=0.0)


def with_offsets(model: LITv2) -> LITv2:
    """Live sampling offsets (an untrained DTM's offset conv is zero, so its sampling would be a plain conv)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DeformConv2dPack):
                m.conv_offset.weight.normal_(0, 0.3)
    return model


def test_bf16_autocast_on_cpu():
    """Under CPU bf16 autocast (`fastvits bench --precision bf16`) the deformable conv, whose torchvision CPU kernel
    has no bf16 path, runs in float32; the output stays close to the float32 model's."""
    model = with_offsets(tiny()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, **low_precision_tolerance(torch.bfloat16, ref))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_model_on_cpu(dtype):
    """A model converted with .bfloat16() / .half() runs on the CPU without autocast: the deformable conv computes
    in float32 (torchvision's CPU kernel has no bf16 path) and hands back the model's dtype."""
    model = with_offsets(tiny()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = model.to(dtype)(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, **low_precision_tolerance(dtype, ref))


def test_features_only_and_stop_early():
    model = tiny(features_only=True, out_indices=(1, 2)).eval()
    assert model.feature_info.channels() == [32, 64] and model.feature_info.reduction() == [8, 16]
    full = tiny().eval()
    full.load_state_dict(model.model.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model(x)
        ref = full.forward_intermediates(x, indices=[1, 2], stop_early=True, intermediates_only=True)
    assert not hasattr(model.model.layers, "3") and model.model.layers[2].downsample is None
    for a, b in zip(feats, ref):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_init_matches_official_scheme():
    model = tiny()
    offsets = [m.conv_offset for m in model.modules() if isinstance(m, DeformConv2dPack)]
    assert len(offsets) == 3 and all(not o.weight.any() and not o.bias.any() for o in offsets)
    dw = model.layers[0].blocks[0].mlp.dwconv
    assert not dw.bias.any() and 0.3 < dw.weight.std() < 0.6  # N(0, sqrt(2/9))
    assert model.head.weight.std() < 0.03 and not model.head.bias.any()


def test_torch_export():
    model = tiny().eval()
    x = torch.randn(2, 3, 64, 96)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


# ----------------------------------------------------------------------------------------- checkpoints
def official_state_dict(model: LITv2) -> dict[str, torch.Tensor]:
    """Our weights in the official key layout (what the released .pth files hold)."""
    renames = ((".mlp.dwconv.", ".mlp.dwconv.dwconv."), (".downsample.norm.", ".downsample.norm_layer."))
    out = {}
    for k, v in model.state_dict().items():
        for ours, official in renames:
            k = k.replace(ours, official)
        out[k] = v.clone()
    return out


def test_official_pth_through_timm_pretrained(tmp_path):
    """A release-style .pth ({'model': state_dict}) loads strictly through timm's pretrained path.

    timm resets `custom_load` when the overlay names a file; setting it keeps fastvits' strict loader.
    """
    src = tiny(num_classes=10).eval()
    path = tmp_path / "litv2_tiny.pth"
    torch.save({"model": official_state_dict(src), "epoch": 299}, path)
    overlay = dict(file=str(path), custom_load=True)
    model = fastvits.create_model("litv2_s", pretrained=True, pretrained_cfg_overlay=overlay, num_classes=10, **TINY)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))
    # another number of classes keeps a fresh head (fine-tuning); the body must still match exactly
    fresh = tiny(num_classes=3)
    head = {k: v.clone() for k, v in fresh.head.state_dict().items()}
    loaded = fastvits.load_checkpoint(fresh, path).eval()
    trained, state = src.state_dict(), loaded.state_dict()
    body = [k for k in trained if not k.startswith("head.")]
    assert len(body) == len(state) - len(head)  # every body entry is compared
    assert [k for k in body if not torch.equal(state[k], trained[k])] == []
    assert loaded.head.out_features == 3 and all(torch.equal(loaded.head.state_dict()[k], v) for k, v in head.items())
    with torch.no_grad():
        assert torch.equal(loaded.forward_features(x), src.forward_features(x))


def test_mismatched_checkpoint_errors(tmp_path):
    path = tmp_path / "official.pth"
    torch.save({"model": official_state_dict(tiny())}, path)
    with pytest.raises(fastvits.CheckpointError, match="missing in checkpoint") as e:
        fastvits.load_checkpoint(tiny(depths=(1, 1, 3, 1)), path)  # deeper model
    assert "layers.2.blocks.2.attn.l_q.weight" in str(e.value) and "fastvits.list_models" in str(e.value)
    with pytest.raises(fastvits.CheckpointError, match="shape mismatch") as e:
        fastvits.load_checkpoint(tiny(num_heads=(1, 2, 4, 4)), path)  # 3 Lo-Fi heads of 16 channels, not 1 of 32
    assert "layers.2.blocks.0.attn.l_q.weight: checkpoint (32, 64) vs model (48, 64)" in str(e.value)
    with pytest.raises(fastvits.CheckpointError, match="unexpected in checkpoint"):
        fastvits.load_checkpoint(tiny(depths=(1, 1, 1, 1)), path)
    with pytest.raises(fastvits.CheckpointError, match="does not fit LITv2"):
        fastvits.load_checkpoint(tiny(embed_dim=8, num_heads=(1, 1, 2, 4)), path)  # narrower model


def test_fastervit_checkpoint_into_litv2_is_refused(tmp_path):
    path = tmp_path / "fastervit.safetensors"
    fastvits.save_safetensors(
        fastvits.create_model("fastervit_0_224", dim=16, in_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))
        .state_dict(), path,
    )
    with pytest.raises(fastvits.CheckpointError, match="does not fit LITv2"):
        fastvits.load_checkpoint(tiny(), path)


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "x, error, match",
    [
        (torch.randn(3, 64, 64), ValueError, "unsqueeze"),
        (torch.randn(1, 1, 64, 64), ValueError, "3 input channels but got 1"),
        (torch.randn(1, 64, 64, 3), ValueError, "channels-last"),
        (torch.randn(1, 3, 31, 64), ValueError, "at least 32x32"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, "floating-point"),
        ([1, 2, 3], TypeError, "torch.Tensor"),
    ],
)
def test_bad_input(x, error, match):
    model = tiny().eval()
    with pytest.raises(error, match=match):
        model(x)
    with pytest.raises(error, match=match):
        model.forward_intermediates(x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(depths=(1, 1, 1)), "one entry per stage"),
        (dict(global_pool="max"), "global_pool"),
        (dict(num_heads=(1, 2, 3, 4)), "multiple of num_heads"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)
