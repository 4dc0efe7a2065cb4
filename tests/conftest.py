"""Settings shared by every test."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # The tests use tiny tensors: on two shared cores a second thread only adds oversubscription stalls.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
