"""FasterViT against fixtures produced by the official implementation (random weights, float32)."""

import pytest
import torch
from helpers import assert_same_rounding, fixture_checkpoint, load_fixture
from reference_hat import hat_stage

import fastvits
from fastvits.models import FasterViT

TOL = dict(atol=1e-5, rtol=1e-5)


def build(meta: dict) -> FasterViT:
    kw = dict(meta["constructor"]["kwargs"])
    kw.pop("resolution")
    ws = kw["window_size"]
    kw["window_size"] = tuple(ws) if isinstance(ws, list) else (ws,) * 4
    return FasterViT(**kw).eval()


def run_with_features(model: FasterViT, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits plus the fixture's named intermediates, collected with forward hooks."""
    feats: dict[str, torch.Tensor] = {}
    hooks = [model.patch_embed.register_forward_hook(lambda m, i, o: feats.__setitem__("features.patch_embed", o))]
    for i, level in enumerate(model.levels):
        def level_hook(m, inp, out, i=i):
            feats[f"features.levels.{i}.pre_downsample"], feats[f"features.levels.{i}.out"] = out
        hooks.append(level.register_forward_hook(level_hook))
        if i < 2:
            continue
        if level.global_tokenizer is not None:
            hooks.append(level.global_tokenizer.register_forward_hook(
                lambda m, inp, out, i=i: feats.__setitem__(f"features.levels.{i}.carrier_tokens_init", out)))
        for j, blk in enumerate(level.blocks):
            def block_hook(m, inp, out, i=i, j=j):
                feats[f"features.levels.{i}.blocks.{j}.x"], ct = out
                if ct is not None:
                    feats[f"features.levels.{i}.blocks.{j}.ct"] = ct
            hooks.append(blk.register_forward_hook(block_hook))
    with torch.no_grad():
        features = model.forward_features(x)
        feats["features.norm"] = features
        feats["features.pooled"] = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
    for h in hooks:
        h.remove()
    return logits, feats


@pytest.mark.parametrize("name", ["tiny", "tiny_nols", "tiny_anyres_sqgrid"])
def test_fixture_parity(name, tmp_path, model_form):
    meta, t = load_fixture("fastervit", name)
    model = fastvits.load_checkpoint(build(meta), fixture_checkpoint(t, tmp_path / "official.safetensors"))
    model = model_form(model)
    logits, feats = run_with_features(model, t["inputs.x"])
    torch.testing.assert_close(logits, t["outputs.logits"], **TOL)
    expected = [k for k in t if k.startswith("features.")]
    assert len(expected) >= 12
    for key in expected:
        torch.testing.assert_close(feats[key], t[key], **TOL, msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("name", ["tiny_nols", "tiny_anyres_sqgrid"])
def test_fixture_same_rounding(name, tmp_path):
    """The plain model, as built, has the official op order: equal up to BLAS kernel rounding."""
    meta, t = load_fixture("fastervit", name)
    model = fastvits.load_checkpoint(build(meta), fixture_checkpoint(t, tmp_path / "official.safetensors"))
    logits, _ = run_with_features(model, t["inputs.x"])
    assert_same_rounding(logits, t["outputs.logits"])


def test_non_square_grid_fixture(tmp_path):
    """tiny_anyres has a 2x3 window grid, where the official code scrambles carrier tokens.

    Everything the scramble does not touch matches the official outputs: the conv stages, the carrier
    token initialisation, and stage 4 run on the official stage-3 output. The HAT stage itself is checked
    against the explicit reference. The official file has no `hat_pos_embed` weights (the official
    any-res model drops them on non-square grids), so those are the only missing keys.
    """
    meta, t = load_fixture("fastervit", "tiny_anyres")
    model = build(meta)
    sd = {k.removeprefix("state_dict."): v for k, v in t.items() if k.startswith("state_dict.")}
    with pytest.raises(fastvits.CheckpointError, match="hat_pos_embed"):
        fastvits.checkpoint.convert_state_dict(sd, model)
    sd = fastvits.checkpoint.convert_state_dict(sd, model, strict=False)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all(".hat_pos_embed." in k for k in missing)
    _, feats = run_with_features(model, t["inputs.x"])
    for key in ["features.patch_embed", "features.levels.1.out", "features.levels.2.carrier_tokens_init"]:
        torch.testing.assert_close(feats[key], t[key], **TOL)
    with torch.no_grad():
        pre, _ = model.levels[3](t["features.levels.2.out"])
    torch.testing.assert_close(pre, t["features.levels.3.out"], **TOL)
    with torch.no_grad():
        stage3 = hat_stage(model.levels[2], t["features.levels.1.out"])
        torch.testing.assert_close(feats["features.levels.2.pre_downsample"], stage3, **TOL)


@pytest.mark.parametrize("size", [(24, 36), (30, 42), (21, 13), (9, 9)])
def test_hat_stage_matches_explicit_reference(size, model_form):
    """Square, non-square, non-divisible and single-window maps, in float64, with propagation."""
    model = FasterViT(dim=8, in_dim=8, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), window_size=(3, 3, 5, 3),
                      hat=(False, False, True, False), layer_scale=0.5, do_propagation=True).double().eval()
    for p in model.parameters():  # larger weights than the init so that every term matters
        p.data.normal_(0, 0.5)
    x = torch.randn(2, 32, *size, dtype=torch.float64)
    with torch.no_grad():
        ref = hat_stage(model.levels[2], x)
        ours, _ = model_form(model).levels[2](x)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)
