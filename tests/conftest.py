import pytest
import torch

from fastvits.layers import fused_attn, fused_kernels


@pytest.fixture(params=[False, True], ids=["plain", "fused"])
def attn_path(request):
    """Run a test with the plain path (official op order) and with the fused attention and CPU kernels."""
    with fused_attn(request.param), fused_kernels(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
