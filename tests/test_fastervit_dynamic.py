"""One FasterViT instance serves every input size, and eval reuses input-independent work."""

import copy
import gc
import weakref

import pytest
import torch
from helpers import small_model

import fastvits


def count_mlp_calls(model: torch.nn.Module) -> list[int]:
    calls = [0]
    for name, m in model.named_modules():
        if name.endswith("cpb_mlp"):
            m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_many_sizes_one_instance():
    model = small_model("fastervit_2_224").eval()
    sizes = [(224, 224), (256, 320), (200, 333), (33, 97), (96, 96), (224, 224)]
    with torch.no_grad():
        outs = [model(torch.ones(1, 3, h, w)) for h, w in sizes]
        fresh = small_model("fastervit_2_224").eval()
        fresh.load_state_dict(model.state_dict())
        for (h, w), out in zip(sizes, outs):
            torch.testing.assert_close(out, fresh(torch.ones(1, 3, h, w)), atol=0, rtol=0)


def test_position_biases_computed_once_in_eval():
    model = small_model("fastervit_3_224").eval()
    calls = count_mlp_calls(model)
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        first = model(x)
        n_first = calls[0]
        second = model(x)
    assert n_first > 0 and calls[0] == n_first, "the second eval forward recomputed position biases"
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 96))  # a new size computes its own biases
    assert calls[0] > n_first


def test_cache_dropped_in_training_and_not_deep_copied():
    model = small_model("fastervit_3_224").eval()
    x = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        model(x)
    ema = copy.deepcopy(model)  # e.g. an EMA copy made after an eval pass
    assert all(not getattr(m, "_cache", {}) for m in ema.modules())
    model.train()
    calls = count_mlp_calls(model)
    model(x).sum().backward()
    assert calls[0] > 0
    copy.deepcopy(model)  # no graph-attached buffers after a training forward


def test_cache_follows_optimizer_steps():
    model = small_model("fastervit_0_224").eval()
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        model(x)
        for name, p in model.named_parameters():
            if "rel_pos" in name:
                p.add_(0.5)  # an in-place update, like an optimizer step
        updated = model(x)
        fresh = small_model("fastervit_0_224").eval()
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(updated, fresh(x), atol=0, rtol=0)


def _replace_cpb_weight(model: torch.nn.Module, other: torch.nn.Module) -> None:
    first = model.levels[2].blocks[0].attn.rel_pos.cpb_mlp[0]
    first.weight = torch.nn.Parameter(other.levels[2].blocks[0].attn.rel_pos.cpb_mlp[0].weight.clone())


def _replace_cpb_layer(model: torch.nn.Module, other: torch.nn.Module) -> None:
    model.levels[2].blocks[0].attn.rel_pos.cpb_mlp[0] = copy.deepcopy(other.levels[2].blocks[0].attn.rel_pos.cpb_mlp[0])


def _assign_all(model: torch.nn.Module, other: torch.nn.Module) -> None:
    model.load_state_dict(other.state_dict(), assign=True)


@pytest.mark.parametrize("replace", [_replace_cpb_weight, _replace_cpb_layer, _assign_all])
def test_cache_follows_replaced_weights_and_modules(replace):
    """New Parameter objects or submodules (not in-place writes) after an eval pass: the cached biases and packed
    weights are recomputed, and a later in-place write to the new tensors is seen too."""
    torch.manual_seed(0)
    model, other = small_model("fastervit_0_224").eval(), small_model("fastervit_0_224").eval()
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        before = model(x)
        replace(model, other)
        after = model(x)
        expected = copy.deepcopy(model).eval()(x)  # a copy carries no cache
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, expected, atol=0, rtol=0)
        for p in model.parameters():
            p.mul_(1.1)
        torch.testing.assert_close(model(x), copy.deepcopy(model)(x), atol=0, rtol=0)


def test_replaced_weights_are_not_kept_alive():
    """After an eval pass, weights replaced by an `assign=True` load are freed once the model goes back to training."""
    model = small_model("fastervit_0_224").eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 128, 160))
    old = weakref.ref(model.levels[2].blocks[0].attn.qkv.weight)
    model.load_state_dict(small_model("fastervit_0_224").state_dict(), assign=True)
    model.train()
    gc.collect()
    assert old() is None


def test_cache_follows_conversion_that_replaces_parameters():
    """`.to()` may put new Parameter objects in place without a registration (PyTorch's overwrite-on-conversion)."""
    model = small_model("fastervit_0_224").eval()
    x = torch.randn(1, 3, 128, 160, dtype=torch.float64)
    overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        with torch.no_grad():
            model(x.float())
            model.double()
            first = model(x)
            for p in model.parameters():
                p.mul_(1.1)
            torch.testing.assert_close(model(x), copy.deepcopy(model)(x), atol=0, rtol=0)
            assert not torch.allclose(first, model(x))
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(overwrite)


@pytest.mark.parametrize("name", ["fastervit_0_224", "fastervit_0_any_res"])
def test_official_names_and_cfg(name):
    model = fastvits.create_model(name.replace("fastervit_", "faster_vit_"), dim=16, in_dim=16, depths=(1, 1, 1, 1))
    assert model.pretrained_cfg["fixed_input_size"] is False
    assert model.pretrained_cfg["min_input_size"] == (3, 32, 32)
