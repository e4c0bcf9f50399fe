"""One FasterViT instance serves every input size; the plain model keeps nothing between calls."""

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


def test_many_sizes_one_instance(model_form):
    model = model_form(small_model("fastervit_2_224").eval())
    sizes = [(224, 224), (256, 320), (200, 333), (33, 97), (96, 96), (224, 224)]
    with torch.no_grad():
        outs = [model(torch.ones(1, 3, h, w)) for h, w in sizes]
        fresh = model_form(small_model("fastervit_2_224").eval())
        fresh.load_state_dict(model.state_dict())
        for (h, w), out in zip(sizes, outs):
            torch.testing.assert_close(out, fresh(torch.ones(1, 3, h, w)), atol=0, rtol=0)


def test_plain_model_computes_position_encodings_in_every_forward():
    """As the official code: the plain model keeps nothing between calls."""
    model = small_model("fastervit_3_224").eval()
    calls = count_mlp_calls(model)
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        first = model(x)
        n_first = calls[0]
        second = model(x)
    assert n_first > 0 and calls[0] == 2 * n_first
    torch.testing.assert_close(first, second, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["fastervit_0_224", "fastervit_0_any_res"])
def test_official_names_and_cfg(name):
    model = fastvits.create_model(name.replace("fastervit_", "faster_vit_"), dim=16, in_dim=16, depths=(1, 1, 1, 1))
    assert model.pretrained_cfg["fixed_input_size"] is False
    assert model.pretrained_cfg["min_input_size"] == (3, 32, 32)
