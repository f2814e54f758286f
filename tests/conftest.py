import pytest
import torch

from compressai_feds import FEDSStudent, FEDSTeacher


@pytest.fixture(scope="session")
def student() -> FEDSStudent:
    torch.manual_seed(0)
    net = FEDSStudent().eval()
    net.update(force=True)
    return net


@pytest.fixture(scope="session")
def teacher() -> FEDSTeacher:
    torch.manual_seed(0)
    net = FEDSTeacher().eval()
    net.update(force=True)
    return net
