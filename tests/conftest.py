import pytest
import torch

import fastvits


@pytest.fixture(params=["plain", "optimized"])
def model_form(request):
    """Run a test on the plain model (the official op order) and on `optimize_for_inference(model)`: a function
    that turns an eval-mode model into the form under test."""
    if request.param == "plain":
        return lambda model: model.eval()
    return fastvits.optimize_for_inference


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(items):
    """The OpenVINO tests (`test_deploy.py`) last: once OpenVINO's CPU plugin has run in a process, a process forked
    from it later (torchrun, DataLoader workers, `uname`) crashed the test process with SIGSEGV (seen twice, at
    different tests). The order of everything else is kept."""
    items.sort(key=lambda item: item.path.name == "test_deploy.py")
