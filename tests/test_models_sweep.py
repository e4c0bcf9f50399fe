"""The same checks over every registered model, in the spirit of timm's test_models.py.

Full-size variants are built at reduced width and depth (their structural settings — windows, carrier
tokens, layer scale, propagation — are kept), and their exact parameter counts are checked on the
meta device, so the sweep stays fast on a CPU.
"""

import pytest
import timm
import torch
from helpers import small_model

import fastvits

MODELS = fastvits.list_models()
INPUT = (2, 3, 128, 160)
# The costlier checks run once per structural kind: no layer scale / layer scale with propagation / no carrier tokens.
# The other names differ from these only in width, depth, heads or window size, which the cheap checks cover.
# non-square inputs; stage 3 gets a 2x2 window grid, so carrier tokens are active
KINDS = [n for n in MODELS if n in ("fastervit_0_224", "fastervit_3_224", "fastervit_4_21k_224", "litv2_s")]


def test_registry_has_all_official_variants():
    expected = {f"fastervit_{i}_224" for i in range(7)} | {f"fastervit_4_21k_{r}" for r in (224, 384, 512, 768)}
    expected |= {f"fastervit_{i}_any_res" for i in range(7)}
    expected |= {f"fastervit_4_21k_{r}_any_res" for r in (224, 384, 512, 768)}
    expected |= {"litv2_s", "litv2_m", "litv2_b", "litv2_b_384"}
    assert expected <= set(MODELS)
    assert set(MODELS) <= set(timm.list_models()), "import fastvits registers every model with timm"


@pytest.mark.parametrize("name", KINDS)
def test_empty_batch(name, model_form):
    """A batch of zero images (a detector's empty crop list) gives (0, classes) on both forms."""
    model = model_form(small_model(name, num_classes=7).eval())
    with torch.no_grad():
        assert model(torch.randn(0, *INPUT[1:])).shape == (0, 7)


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward(name):
    model = small_model(name, num_classes=7).train()
    out = model(torch.randn(INPUT))
    assert out.shape == (INPUT[0], 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters not reached by backward: {no_grad}"


@pytest.mark.parametrize("name", MODELS)
def test_features_and_intermediates(name, model_form):
    x = torch.randn(INPUT)
    torch.manual_seed(1)
    model = model_form(small_model(name).eval())
    torch.manual_seed(1)  # same initial weights
    feat_model = model_form(small_model(name, features_only=True).eval())
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), atol=0, rtol=0)
        feats = feat_model(x)
    info = feat_model.feature_info
    assert [f.shape[1] for f in feats] == info.channels() == [f.shape[1] for f in inter]
    for f, r in zip(feats, info.reduction()):
        assert f.shape[2:] == (-(-INPUT[2] // r), -(-INPUT[3] // r))
    for a, b in zip(feats, inter):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier_and_pre_logits(name):
    model = small_model(name).eval()
    x = torch.randn(INPUT)
    model.reset_classifier(5)
    assert model(x).shape == (INPUT[0], 5)
    model.reset_classifier(0)
    with torch.no_grad():
        pooled = model(x)
        assert pooled.shape == (INPUT[0], model.num_features)
        torch.testing.assert_close(pooled, model.forward_head(model.forward_features(x), pre_logits=True))


@pytest.mark.parametrize("name", ["fastervit_0_224", "litv2_s"])
def test_drop_path_rates_rise_linearly_over_all_blocks(name):
    from timm.layers import DropPath

    model = small_model(name, drop_path_rate=0.3)  # 5 blocks over the 4 stages; the first has rate 0 (no module)
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert rates == pytest.approx([0.075, 0.15, 0.225, 0.3])


@pytest.mark.parametrize("name", KINDS)
def test_grad_checkpointing_same_output(name):
    """Same outputs and gradients, and the blocks really are recomputed in the backward pass: every block runs twice
    per step with checkpointing, once without."""
    model = small_model(name, drop_path_rate=0.0).train()
    blocks = [blk for stage in model.stages for blk in stage.blocks]
    calls = [0]
    for blk in blocks:
        blk.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))  # recomputation stops early
    x = torch.randn(INPUT)
    ref = model(x)
    ref.sum().backward()
    plain_calls = calls[0]
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    assert plain_calls == len(blocks) and calls[0] - plain_calls == 2 * len(blocks)
    torch.testing.assert_close(out, ref)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], msg=n)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name", MODELS)
def test_jit_trace(name, model_form):
    """Traced at one input, checked at another of the same size (a trace that froze its example's values fails)."""
    model = model_form(small_model(name).eval())
    x, other = torch.randn(INPUT), torch.randn(INPUT)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        torch.testing.assert_close(traced(other), model(other))


@pytest.mark.parametrize("name", [n for n in MODELS if n.endswith(("0_224", "21k_224", "litv2_s"))])
def test_torch_export(name, model_form):
    """Exported at one input, checked at another of the same size."""
    model = model_form(small_model(name).eval())
    x, other = torch.randn(INPUT), torch.randn(INPUT)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(other), model(other))


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_cfg(name):
    model = small_model(name)
    cfg = model.pretrained_cfg
    source = (cfg["hf_hub_id"], cfg["hf_hub_filename"]) if name.startswith("fastervit") else cfg["url"]
    assert all(source) and cfg["license"] and cfg["mean"] and cfg["std"] and cfg["crop_pct"]
    sd = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in sd and f"{cfg['classifier']}.weight" in sd
    assert model.no_weight_decay() <= {n for n, _ in model.named_parameters()}
    groups = model.group_matcher()
    assert "stem" in groups and "blocks" in groups
