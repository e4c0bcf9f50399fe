"""Full-size variants have exactly the official parameter counts (built on the meta device: no memory, no time)."""

import pytest
import torch

import fastvits

# measured on the official implementation (millions, two decimals); see docs/fastervit.md
OFFICIAL_PARAMS_M = {
    "fastervit_0_224": 31.40,
    "fastervit_1_224": 53.37,
    "fastervit_2_224": 75.92,
    "fastervit_3_224": 159.55,
    "fastervit_4_224": 365.56,
    "fastervit_5_224": 957.52,
    "fastervit_6_224": 1360.33,
    "fastervit_4_21k_224": 271.94,
    "fastervit_4_21k_384": 271.94,
    "fastervit_4_21k_512": 271.94,
    "fastervit_4_21k_768": 271.94,
}
EXACT = {"fastervit_0_224": 31_404_840}  # from the official state-dict listing


def count(name: str) -> int:
    with torch.device("meta"):
        model = fastvits.create_model(name)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS_M))
def test_parameter_count(name):
    n = count(name)
    assert round(n / 1e6, 2) == OFFICIAL_PARAMS_M[name]
    if name in EXACT:
        assert n == EXACT[name]
    # the any-resolution name loads the same checkpoint, so it has the same parameters
    anyres = f"{name}_any_res" if "_21k_" in name else name.replace("_224", "_any_res")
    assert count(anyres) == n
