"""A tiny model of each family learns a task a blind model cannot: which half of the image is brighter.

Every image has the same mean brightness whatever its label, so colour statistics pooled over the whole image say
nothing about it; the model has to keep where the brighter pixels are through its stem, attention and pooling.
Chance is 0.5. 40 AdamW steps reach 1.0 on fresh samples (seeds 0-7 of the model and the data, both families);
the test asks for 0.95.

The step is faint (0.3 against per-pixel noise of std 0.5): a classifier trained on top of the untrained body (the
body cut off from the gradient) reaches only 0.91 (both families) here, so the body has to learn too.
"""

import pytest
import torch
import torch.nn.functional as F

import fastvits

TINY = {
    "fastervit_0_any_res": dict(dim=16, in_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)),
    "litv2_s": dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)),
}


def bright_half(n: int, generator: torch.Generator, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, size, size) noise images with the left (label 0) or right (label 1) half brighter by 0.3, and labels."""
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = torch.randn(n, 3, size, size, generator=generator) * 0.5
    right = torch.arange(size) >= size // 2  # (size,) columns of the right half
    bright = right[None, :] == labels[:, None].bool()  # (n, size): columns lit for each image
    images += 0.3 * bright[:, None, None, :].float()
    return images, labels


@pytest.mark.parametrize("name", TINY)
def test_a_tiny_model_learns_which_half_is_bright(name):
    torch.manual_seed(0)
    model = fastvits.create_model(name, num_classes=2, **TINY[name])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    train_data = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(40):
        images, labels = bright_half(16, train_data)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, labels = bright_half(200, torch.Generator().manual_seed(2))  # fresh samples, never trained on
    model.eval()
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.95, f"accuracy {accuracy:.3f} on fresh samples (chance 0.5)"
