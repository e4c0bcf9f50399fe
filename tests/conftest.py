import pytest
import torch

from fastvits.layers import fused_attn


@pytest.fixture(params=[False, True], ids=["plain", "fused"])
def attn_path(request):
    """Run a test with the plain (official op order) and the fused attention path."""
    with fused_attn(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
