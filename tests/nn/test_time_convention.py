import pytest
import torch
from torch import nn

from pynodeta.nn import (
    ConcatLinear,
    TimeSequential,
    call_with_time,
    is_time_aware,
    make_norm,
    time_as_tensor,
)


class _TakesT(nn.Module):
    def forward(self, t, x):
        return x + t


class _TakesTOnly(nn.Module):  # a single argument named t is not the (t, x) convention
    def forward(self, t):
        return t


def test_is_time_aware_from_signature_and_flag():
    assert is_time_aware(_TakesT())
    assert not is_time_aware(_TakesTOnly())
    assert not is_time_aware(nn.ReLU())
    assert is_time_aware(ConcatLinear(2, 3))
    for kind in ("tabn", "popti-bn", "minibatch-bn", "ln", "in", "none"):
        assert is_time_aware(make_norm(kind, 4))
    assert is_time_aware(make_norm("gn", 4, groups=2))


def test_time_sequential_passes_t_only_to_time_aware_children():
    seq = TimeSequential(_TakesT(), nn.ReLU(), _TakesT())
    x = torch.tensor([[-3.0, 1.0]])
    # (x + 2) -> relu -> + 2
    assert torch.equal(seq(2.0, x), torch.tensor([[2.0, 5.0]]))
    assert torch.equal(call_with_time(nn.ReLU(), 7.0, x), torch.relu(x))
    assert torch.equal(call_with_time(_TakesT(), 1.0, x), x + 1)


def test_time_as_tensor_shapes_and_error():
    x = torch.zeros(3, 2, dtype=torch.float64)
    assert time_as_tensor(0.5, x).shape == () and time_as_tensor(0.5, x).dtype == torch.float64
    assert time_as_tensor(torch.tensor([0.5]), x).shape == ()
    assert time_as_tensor(torch.rand(3), x).shape == (3,)
    with pytest.raises(ValueError, match=r"t must be .* batch=3, got shape \(2,\)"):
        time_as_tensor(torch.rand(2), x)


def _public_modules():
    import inspect

    import pynodeta.models
    import pynodeta.nn

    for package in (pynodeta.nn, pynodeta.models):
        for name in package.__all__:
            obj = getattr(package, name)
            if inspect.isclass(obj) and issubclass(obj, nn.Module):
                yield pytest.param(obj, id=name)


@pytest.mark.parametrize("cls", list(_public_modules()))
def test_every_public_time_aware_module_takes_time_first(cls):
    import inspect

    declared = getattr(cls, "time_aware", None)
    params = [p for p in list(inspect.signature(cls.forward).parameters.values())[1:]
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_time_first = len(params) >= 2 and params[0].name == "t"
    if declared is not None:  # the flag and the signature agree: time-aware means forward(t, x)
        assert bool(declared) == takes_time_first, f"{cls.__name__}: time_aware={declared}, forward{params}"
