"""The per-draw loop behind CPU predictions: the same outputs as the module itself, whichever
way it runs (straight-line fx code or the module with each draw's parameters copied in)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from pyro_models.models import per_draw


def _draws(net, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn((n,) + p.shape, generator=g) for k, p in net.named_parameters()}


def _reference(net, draws, x):
    n = next(iter(draws.values())).shape[0]
    return torch.stack([functional_call(net, {k: v[s] for k, v in draws.items()}, (x,)) for s in range(n)])


def _plan(net, drawn=None):
    drawn = {k for k, _ in net.named_parameters()} if drawn is None else drawn
    return per_draw._PLANS.get(net, {}).get(per_draw._key(net, drawn), "absent")


class _Branchy(nn.Module):
    """Python control flow on a tensor's value: fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        h = self.lin(x)
        return h if float(h.sum()) > 0 else -h


class _Normed(nn.Module):
    """A batch norm (its forward branches on the input's rank) between Bayesian layers."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 6)
        self.norm = nn.BatchNorm1d(6)
        self.b = nn.Linear(6, 1)

    def forward(self, x):
        return self.b(torch.relu(self.norm(self.a(x))))


def test_an_mlp_runs_as_straight_line_code_with_the_modules_results():
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    draws, x = _draws(net, 7), torch.randn(50, 3)
    with torch.no_grad():
        out = per_draw.run_per_draw(net, {}, draws, x, 7)
        ref = _reference(net, draws, x)
    plan = _plan(net)
    assert plan is not None and plan != "absent"
    fn, sources = plan
    assert sources == [k for k, _ in net.named_parameters()]
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    # The module keeps its own parameters.
    assert all(isinstance(p, nn.Parameter) for p in net.parameters())


def test_a_net_fx_cannot_trace_runs_as_the_module():
    net = _Branchy()
    draws, x = _draws(net, 6), torch.randn(20, 3)
    with torch.no_grad():
        out = per_draw.run_per_draw(net, {}, draws, x, 6)
        ref = _reference(net, draws, x)
    assert _plan(net) is None
    torch.testing.assert_close(out, ref)


def test_a_module_without_drawn_parameters_is_kept_whole_when_it_cannot_be_inlined():
    net = _Normed().eval()
    with torch.no_grad():
        net.norm.running_mean.uniform_(-1, 1)
        net.norm.running_var.uniform_(0.5, 2.0)
    draws = {k: v for k, v in _draws(net, 5).items() if not k.startswith("norm.")}
    x = torch.randn(30, 3)
    with torch.no_grad():
        out = per_draw.run_per_draw(net, {}, draws, x, 5)
        ref = _reference(net, draws, x)
    plan = _plan(net, set(draws))
    assert plan is not None and plan != "absent"
    assert not any(s.startswith("norm.") for s in plan[1])  # the batch norm ran whole
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_hooks_fire_once_per_draw():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    calls = []
    net[0].register_forward_hook(lambda *_: calls.append(1))
    draws, x = _draws(net, 9), torch.randn(10, 3)
    with torch.no_grad():
        out = per_draw.run_per_draw(net, {}, draws, x, 9)
    assert len(calls) == 9
    calls.clear()
    torch.testing.assert_close(out, _reference(net, draws, x))


def test_a_random_layer_fails_the_first_draw_check_and_runs_as_the_module():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 64), nn.Dropout(0.5), nn.Linear(64, 1)).train()
    draws, x = _draws(net, 4), torch.randn(40, 3)
    with torch.no_grad():
        out = per_draw.run_per_draw(net, {}, draws, x, 4)
    assert _plan(net) is None  # the traced code and the module drew different masks
    assert out.shape == (4, 40, 1) and bool(torch.isfinite(out).all())


def test_fixed_tensors_replace_the_modules_own():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    draws = {k: v for k, v in _draws(net, 3).items() if k.startswith("0.")}
    fixed = {"2.weight": torch.ones(1, 4), "2.bias": torch.full((1,), 5.0)}
    x = torch.randn(8, 3)
    with torch.no_grad():
        out = per_draw.run_per_draw(net, fixed, draws, x, 3)
        ref = torch.stack([functional_call(net, {**fixed, **{k: v[s] for k, v in draws.items()}}, (x,))
                           for s in range(3)])
    torch.testing.assert_close(out, ref)


def test_a_net_returning_a_tuple_is_refused():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            return self.lin(x), x

    net = Pair()
    with torch.no_grad(), pytest.raises(TypeError, match="must return one Tensor"):
        per_draw.run_per_draw(net, {}, _draws(net, 3), torch.randn(4, 2), 3)


def test_each_set_of_drawn_parameters_gets_its_own_plan():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.randn(8, 3)
    everything = _draws(net, 3)
    first_layer = {k: v for k, v in _draws(net, 3, seed=1).items() if k.startswith("0.")}
    with torch.no_grad():
        for draws in (everything, first_layer):
            torch.testing.assert_close(per_draw.run_per_draw(net, {}, draws, x, 3), _reference(net, draws, x))
    for drawn in (set(everything), set(first_layer)):
        plan = _plan(net, drawn)
        assert plan not in (None, "absent")


def test_bad_draws_are_refused_with_the_expected_names_and_shapes():
    net = nn.Sequential(nn.Linear(2, 2))
    draws, x = _draws(net, 3), torch.randn(4, 2)
    with torch.no_grad():
        with pytest.raises(ValueError, match="n must be a positive int"):
            per_draw.run_per_draw(net, {}, draws, x, 0)
        with pytest.raises(ValueError, match=r"leading dim of n=4 draws.*'0.weight': \(3, 2, 2\)"):
            per_draw.run_per_draw(net, {}, draws, x, 4)
        with pytest.raises(KeyError, match=r"\['0.wieght'\] are not parameters.*'0.weight', '0.bias'"):
            per_draw.run_per_draw(net, {}, {"0.wieght": draws["0.weight"]}, x, 3)


def test_traced_code_that_fails_on_the_first_draw_gives_way_to_the_module(monkeypatch):
    def broken(*_):
        raise RuntimeError("traced code that does not run")

    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    monkeypatch.setattr(per_draw, "_trace", lambda net, drawn: (broken, [k for k, _ in net.named_parameters()]))
    draws, x = _draws(net, 4), torch.randn(6, 3)
    with torch.no_grad():
        out = per_draw.run_per_draw(net, {}, draws, x, 4)
    torch.testing.assert_close(out, _reference(net, draws, x))
    assert _plan(net) is None
