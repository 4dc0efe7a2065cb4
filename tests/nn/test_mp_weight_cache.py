"""MPConv reuses its normalised weight where a call may (eval mode, no gradient through w), once per
version of the stored weight: every way of changing the weight recomputes it (fused optimisers included,
which do not bump autograd's version counter), and training mode still renormalises the stored weight in
place on every call."""

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

import pynodeta.nn.mp as mp
from pynodeta.nn.mp import MPConv


def expected(conv: MPConv, x: torch.Tensor, gain=1.0) -> torch.Tensor:
    """The released formula, from the weight as stored now: gain · normalize(W) / √fan_in, then conv
    (without normalize for weight_norm="none")."""
    w = conv.weight.detach().to(torch.float32)
    if conv.weight_norm != "none":
        norm = torch.linalg.vector_norm(w, dim=tuple(range(1, w.ndim)), keepdim=True)
        w = w / torch.add(1e-4, norm, alpha=math.sqrt(norm.numel() / w.numel()))
    w = (w * (gain / math.sqrt(w[0].numel()))).to(x.dtype)
    return F.conv2d(x, w, padding=(w.shape[-1] // 2,))


@pytest.fixture
def conv():
    torch.manual_seed(0)
    return MPConv(3, 4, kernel=(3, 3)).eval()


@pytest.fixture
def x():
    return torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def normalisations(monkeypatch):
    """How many times MPConv normalises a weight."""
    calls = []
    real = mp.normalize

    def counting(t, dim=None, eps=1e-4):
        if dim is None:
            calls.append(t.shape)
        return real(t, dim, eps)

    monkeypatch.setattr(mp, "normalize", counting)
    return calls


def assert_fresh(conv, x, gain=1.0):
    with torch.no_grad():
        torch.testing.assert_close(conv(x, gain), expected(conv, x, gain), rtol=1e-6, atol=1e-6)


def test_eval_calls_normalise_once_per_weight_version(conv, x, normalisations):
    with torch.no_grad():
        first = conv(x)
        for _ in range(3):
            assert torch.equal(conv(x), first)
    assert len(normalisations) == 1
    assert_fresh(conv, x)
    with torch.no_grad():
        conv.weight.mul_(-2)  # an in-place change bumps the version
    assert_fresh(conv, x)
    assert len(normalisations) == 2  # one more for the changed weight


def test_in_place_changes_under_no_grad_are_seen(conv, x):
    assert_fresh(conv, x)
    with torch.no_grad():
        conv.weight.copy_(torch.randn_like(conv.weight))
    assert_fresh(conv, x)
    with torch.no_grad():
        conv.weight[0].zero_()  # through a view: the view shares the version counter
    assert_fresh(conv, x)


def test_an_optimiser_step_is_seen(conv, x):
    assert_fresh(conv, x)
    optimizer = torch.optim.Adam(conv.parameters(), lr=0.1)
    for foreach in (False, True):
        optimizer.param_groups[0]["foreach"] = foreach
        conv(x).pow(2).sum().backward()  # eval mode with gradients: w is rebuilt, not cached
        optimizer.step()
        optimizer.zero_grad()
        assert_fresh(conv, x)


def fused_adam(conv: MPConv) -> torch.optim.Optimizer:
    # the fused kernel writes the weight without bumping autograd's version counter
    return torch.optim.Adam(conv.parameters(), lr=0.1, fused=True)


def train_step(conv: MPConv, optimizer: torch.optim.Optimizer, x: torch.Tensor, step: bool = True) -> None:
    optimizer.zero_grad()
    conv(x).pow(2).sum().backward()
    if step:
        optimizer.step()


@pytest.mark.parametrize("weight_norm", MPConv.WEIGHT_NORMS)
def test_a_fused_optimiser_step_after_training_mode_calls_is_seen(conv, x, weight_norm):
    conv.weight_norm = weight_norm
    assert_fresh(conv, x)  # fills the cache
    optimizer = fused_adam(conv)
    conv.train()
    for _ in range(3):
        train_step(conv, optimizer, x)
    conv.eval()
    assert_fresh(conv, x)


@pytest.mark.parametrize("weight_norm", MPConv.WEIGHT_NORMS)
def test_fine_tuning_in_eval_mode_with_a_fused_optimiser_is_seen(conv, x, weight_norm):
    conv.weight_norm = weight_norm
    assert_fresh(conv, x)
    optimizer = fused_adam(conv)
    for _ in range(3):
        train_step(conv, optimizer, x)  # eval mode, gradients enabled: w is built with autograd
        assert_fresh(conv, x)


@pytest.mark.parametrize("weight_norm", MPConv.WEIGHT_NORMS)
def test_a_fused_step_after_an_eval_call_between_backward_and_step_is_seen(conv, x, weight_norm):
    conv.weight_norm = weight_norm
    optimizer = fused_adam(conv)
    conv.train()
    train_step(conv, optimizer, x, step=False)
    conv.eval()
    assert_fresh(conv, x)  # caches the weight from before the step
    optimizer.step()
    assert_fresh(conv, x)


@pytest.mark.parametrize("weight_norm", MPConv.WEIGHT_NORMS)
def test_a_hand_written_update_through_data_after_a_backward_pass_is_seen(conv, x, weight_norm):
    conv.weight_norm = weight_norm
    assert_fresh(conv, x)
    conv.train()
    conv(x).pow(2).sum().backward()
    conv.weight.data.add_(conv.weight.grad, alpha=-0.1)  # no version bump, no optimiser step
    conv.eval()
    assert_fresh(conv, x)


def test_load_state_dict_to_and_assigned_data_are_seen(conv, x):
    assert_fresh(conv, x)
    other = MPConv(3, 4, kernel=(3, 3))
    conv.load_state_dict(other.state_dict())
    assert_fresh(conv, x)
    conv.load_state_dict(MPConv(3, 4, kernel=(3, 3)).state_dict(), assign=True)
    assert_fresh(conv, x)
    conv.weight.data = torch.randn_like(conv.weight)
    assert_fresh(conv, x)
    conv.to(torch.float64)
    assert_fresh(conv, x.double())
    with torch.no_grad():
        assert conv(x.double()).dtype == torch.float64


def test_a_tensor_gain_and_the_input_dtype_are_part_of_the_key(conv, x):
    gain = torch.nn.Parameter(torch.tensor(0.5))
    assert_fresh(conv, x, gain)
    with torch.no_grad():
        gain.fill_(-3.0)
    assert_fresh(conv, x, gain)
    assert_fresh(conv, x, 2.0)
    assert_fresh(conv, x.double())


def test_switching_the_weight_normalisation_is_seen(conv, x):
    assert_fresh(conv, x)
    conv.weight_norm = "none"  # as the ablations set it on a built network
    with torch.no_grad():
        unnormalised = F.conv2d(x, conv.weight / math.sqrt(conv.weight[0].numel()), padding=1)
        torch.testing.assert_close(conv(x), unnormalised, rtol=1e-6, atol=1e-6)


def test_a_reallocated_weight_at_the_same_address_is_not_mistaken_for_the_cached_one(conv, x):
    # functional_call swaps in a new tensor; once it is freed, the next one of its size tends to get its
    # address (and has version 0 too): the cache keeps the storage it was computed from alive
    reference = MPConv(3, 4, kernel=(3, 3)).eval()
    for seed in range(4):
        weight = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            reference.weight.copy_(weight)
            out = torch.func.functional_call(conv, {"weight": weight}, (x,))
        torch.testing.assert_close(out, expected(reference, x), rtol=1e-6, atol=1e-6)
        del weight, out  # freed before the next one is allocated


def test_gradients_flow_in_eval_mode_and_frozen_weights_reuse_the_cache(conv, x, normalisations):
    conv(x).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert len(normalisations) == 1
    conv.weight.requires_grad_(False)
    inputs = x.clone().requires_grad_(True)
    with torch.inference_mode():
        conv(x)  # cached under inference mode: must not be reused where autograd saves w
    grads = []
    for _ in range(2):
        (grad,) = torch.autograd.grad(conv(inputs).pow(2).sum(), inputs)
        grads.append(grad)
    assert torch.equal(grads[0], grads[1])
    assert len(normalisations) == 3  # the graph call, the inference-mode call, one for both grad-mode calls


def test_training_mode_still_renormalises_the_stored_weight_every_call(conv, x):
    conv.train()
    with torch.no_grad():
        conv.weight.mul_(5)
    for _ in range(2):
        before = conv.weight.detach().clone()
        norm = torch.linalg.vector_norm(before, dim=(1, 2, 3), keepdim=True)
        renormalised = before / torch.add(1e-4, norm, alpha=math.sqrt(1 / before[0].numel()))
        out = conv(x)
        torch.testing.assert_close(conv.weight.detach(), renormalised, rtol=0, atol=0)
        torch.testing.assert_close(out, expected(conv, x), rtol=1e-6, atol=1e-6)
        out.sum().backward()


def test_copies_and_pickles_start_without_a_cache(conv, x):
    with torch.no_grad():
        conv(x)
    assert conv._cache is not None
    assert copy.deepcopy(conv)._cache is None
    assert pickle.loads(pickle.dumps(conv))._cache is None
    assert_fresh(copy.deepcopy(conv), x)


def test_gradcheck_float64_through_weight_and_tensor_gain():
    conv = MPConv(2, 3, kernel=(3, 3)).double()
    inputs = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    gain = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    # forced weight normalisation overwrites W, which gradcheck cannot perturb; "standard" in training mode
    # is the same function of W without the overwrite
    for mode, weight_norm in (("eval", "forced"), ("train", "standard")):
        getattr(conv, mode)()
        conv.weight_norm = weight_norm
        assert torch.autograd.gradcheck(
            lambda v, w, g: torch.func.functional_call(conv, {"weight": w}, (v, g)),
            (inputs, conv.weight.detach().clone().requires_grad_(True), gain))
