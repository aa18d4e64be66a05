import pytest
import torch


@pytest.fixture
def single_thread():
    """One intra-op torch thread for the test: the tensors in these tests are small, and on a busy 2-core machine
    OpenMP threads spinning against each other made steps 5-100x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
