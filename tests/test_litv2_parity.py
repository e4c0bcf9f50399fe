"""LITv2 against fixtures produced by the official code (random weights; float32 and float64).

`litv2_tiny_cls` is the official classifier; `litv2_tiny_det` the official detection backbone on a
46x78 input (patch padding, HiLo padding of a 3x5 map, DTM flooring 3x5 -> 1x2). The detection
backbone's per-output LayerNorms (`norm1..norm3`, none on output 0) belong to the detector, not to
LITv2: the backbone maps come from `forward_intermediates` and the test applies the fixture's norms.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import LITV2_ULPS, assert_same_rounding, fixture_checkpoint, load_fixture

import fastvits
from fastvits.models import LITv2

TOL32 = dict(atol=1e-5, rtol=1e-5)
TOL64 = dict(atol=1e-10, rtol=1e-10)


def build(meta: dict, **overrides) -> LITv2:
    a = meta["constructor_args"]
    assert a["has_msa"] == [0, 0, 1, 1] and a["patch_size"] == 4 and a["mlp_ratio"] == 4.0
    kwargs = dict(
        embed_dim=a["embed_dim"], depths=tuple(a["depths"]), num_heads=tuple(a["num_heads"]),
        local_ws=tuple(a["local_ws"]), alpha=a["alpha"], qkv_bias=a["qkv_bias"],
        drop_path_rate=a["drop_path_rate"], num_classes=a.get("num_classes", 0),
    )
    return LITv2(**{**kwargs, **overrides}).eval()


def run_cls(model: LITv2, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits plus the fixture's named intermediates (as official (B, N, C) tokens)."""
    tokens = lambda m: m.flatten(2).transpose(1, 2)
    feats: dict[str, torch.Tensor] = {}
    hooks = [model.patch_embed.register_forward_hook(lambda m, i, o: feats.__setitem__("patch_embed", tokens(o)))]
    for i, layer in enumerate(model.layers):
        def hook(m, inp, out, i=i):
            feats[f"stage{i}.blocks"] = tokens(out[0])
            if m.downsample is not None:
                feats[f"stage{i}.downsample"] = tokens(out[1])
        hooks.append(layer.register_forward_hook(hook))
    with torch.no_grad():
        final = model.forward_features(x)
        feats["final_norm"] = tokens(final)
        feats["pre_logits"] = model.forward_head(final, pre_logits=True)
        logits = model.forward_head(final)
    for h in hooks:
        h.remove()
    return logits, feats


@pytest.fixture(scope="module")
def cls_fixture(tmp_path_factory):
    meta, t = load_fixture("litv2", "litv2_tiny_cls")
    path = fixture_checkpoint(t, tmp_path_factory.mktemp("litv2") / "official_cls.safetensors")
    return meta, t, fastvits.load_checkpoint(build(meta), path)  # strict: every official key used


def test_cls_parity(cls_fixture, model_form):
    _, t, model = cls_fixture
    logits, feats = run_cls(model_form(model), t["io.input"])
    torch.testing.assert_close(logits, t["io.output"], **TOL32)
    expected = [k for k in t if k.startswith("features.")]
    assert len(expected) == 10
    for key in expected:
        torch.testing.assert_close(
            feats[key.removeprefix("features.")], t[key], **TOL32, msg=lambda m, key=key: f"{key}: {m}"
        )


def test_cls_rounding_and_float64(cls_fixture):
    """The plain model, as built, has the official op order: identical logits in float32, 1e-10 in float64."""
    meta, t, model = cls_fixture
    logits, feats = run_cls(model, t["io.input"])
    assert_same_rounding(logits, t["io.output"], LITV2_ULPS)
    for k in [k for k in t if k.startswith("features.")]:
        assert_same_rounding(feats[k.removeprefix("features.")], t[k], LITV2_ULPS)
    model64 = build(meta).double()
    model64.load_state_dict(model.state_dict())
    with torch.no_grad():
        logits64 = model64(t["io.input"].double())
    torch.testing.assert_close(logits64, t["io.output_f64"], **TOL64)


def dense_outputs(model: LITv2, x: torch.Tensor, norms: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The official detection backbone's outputs: our stage maps, then its LayerNorms on outputs 1-3."""
    maps = model.forward_intermediates(x, intermediates_only=True)
    out = [maps[0]]
    for i in (1, 2, 3):
        w, b = norms[f"norm{i}.weight"].to(x.dtype), norms[f"norm{i}.bias"].to(x.dtype)
        out.append(F.layer_norm(maps[i].permute(0, 2, 3, 1), w.shape, w, b, 1e-5).permute(0, 3, 1, 2))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("form", ["plain", "optimized"])
def test_det_backbone_parity(dtype, form):
    meta, t = load_fixture("litv2", "litv2_tiny_det")
    sd = {k.removeprefix("state_dict."): v for k, v in t.items() if k.startswith("state_dict.")}
    norms = {k: sd.pop(k) for k in list(sd) if k.startswith("norm")}
    assert sorted(norms) == [f"norm{i}.{p}" for i in (1, 2, 3) for p in ("bias", "weight")]
    model = build(meta, num_classes=0)
    model.prune_intermediate_layers(3, prune_norm=True)  # a backbone: no final norm, no head
    sd = fastvits.checkpoint.convert_state_dict(sd, model)  # strict: the rest is exactly our backbone
    model.load_state_dict(sd, strict=True)
    model.to(dtype)
    if form == "optimized":
        model = fastvits.optimize_for_inference(model)
    with torch.no_grad():
        outs = dense_outputs(model, t["io.input"].to(dtype), norms)
    assert [tuple(o.shape[2:]) for o in outs] == [tuple(s) for s in meta["derived"]["stage_hw"]]
    for i, out in enumerate(outs):
        if dtype == torch.float32:
            torch.testing.assert_close(out, t[f"io.output.{i}"], **TOL32)
            if form == "plain":
                assert_same_rounding(out, t[f"io.output.{i}"], LITV2_ULPS)
        else:
            torch.testing.assert_close(out, t[f"io.output_f64.{i}"], **TOL64)
