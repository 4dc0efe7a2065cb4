import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    # The tests run beside other jobs on two cores; one thread avoids oversubscription stalls.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
