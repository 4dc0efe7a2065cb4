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


@pytest.fixture
def graph_stand_in(monkeypatch):
    """Solves with backend_options={"cuda_graph": True} record and replay with RerunCapture, the CPU stand-in
    for a CUDA graph; the list holds one stand-in per solve, to read its warm-up, capture and replay counts."""
    from pynodeta.ode.backends import graphed_step

    made = []
    monkeypatch.setattr(graphed_step, "graph_capture", lambda device: made.append(graphed_step.RerunCapture())
                        or made[-1])
    return made
