"""Run a ``torch.nn.Module`` once per posterior draw, at the speed of a hand-written loop.

Predicting with a Bayesian net evaluates it under hundreds of parameter draws. Under
:func:`torch.func.vmap` every ``Linear`` becomes a batched matmul followed by separate bias and
activation passes over all draws' activations at once; with thousands of inputs these leave
the CPU caches, and a loop over draws (one draw's activations stay in cache) is 2-6x faster.
This module decides when the loop pays (:func:`loop_pays`) and runs it (:func:`run_per_draw`).

The loop calls the net as straight-line code where it can: :func:`torch.fx` traces the net
through its submodules once, each draw's parameters become the traced function's arguments,
and the ~15 us of ``nn.Module`` call overhead per draw and the per-draw parameter swaps
disappear. The traced function is checked against the module on the first draw of every call
and is not used for nets with hooks (they would not fire) or nets fx cannot trace (data-
dependent control flow); those run as the module itself, each draw's values copied into its
parameters.

Examples
--------
>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
>>> draws = {n: torch.randn((5,) + p.shape) for n, p in net.named_parameters()}
>>> x = torch.randn(100, 3)
>>> with torch.no_grad():
...     out = run_per_draw(net, {}, draws, x, 5)
>>> out.shape
torch.Size([5, 100, 1])
>>> ref = torch.func.functional_call(net, {k: v[2] for k, v in draws.items()}, (x,))
>>> torch.allclose(out[2], ref)
True
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn
from torch.nn.utils.stateless import _reparametrize_module

__all__ = ["LOOP_MIN_MACS", "enough_work", "loop_pays", "run_per_draw"]

#: Multiply-adds per posterior draw (data points x parameter numbers drawn) from which a CPU
#: prediction runs the net once per draw instead of once under ``vmap``. Measured with
#: ``benchmarks/predictive_crossover.py`` (500 draws, one thread; loop time / vmap time):
#: 1.36-1.40 at 2.4e4 (a 4-20-1 net at 200 points), 0.60-0.66 at 1.2e5 (the same at 1000
#: points), 0.47-0.85 at 3.0e4 (1-50-1 at 200 points, the one cell this threshold gets wrong).
LOOP_MIN_MACS = 2**15

# Straight-line versions of nets, per net, per combination of train/eval flags and per set of
# drawn parameters. Weak keys: a plan never keeps its net alive.
_PLANS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Any]] = weakref.WeakKeyDictionary()


def _no_transform_active() -> bool:
    """True outside every ``torch.func`` transform (vmap, grad, jacrev ...)."""
    level = getattr(torch._C._functorch, "maybe_current_level", None)
    return level is None or level() is None


def enough_work(x: Tensor, numbers_per_draw: int) -> bool:
    """Whether one draw at inputs ``x`` has enough work for the loop: a CPU tensor and at least
    :data:`LOOP_MIN_MACS` multiply-adds, estimated as ``len(x)`` times ``numbers_per_draw``
    (the numbers in one draw's parameters; exact for ``Linear`` layers, low for convolutions).

    Examples
    --------
    >>> enough_work(torch.zeros(2000, 50), 2500), enough_work(torch.zeros(5, 50), 2500)
    (True, False)
    """
    return x.dim() >= 1 and x.device.type == "cpu" and x.shape[0] * numbers_per_draw >= LOOP_MIN_MACS


def loop_pays(x: Tensor, draws: Mapping[str, Tensor], n: int) -> bool:
    """Whether ``n`` draws of a net at inputs ``x`` run faster as a loop than under ``vmap``.

    True without autograd or a ``torch.func`` transform (training and NUTS need the batched,
    differentiable form), for at least two draws that each have :func:`enough_work`.

    Parameters
    ----------
    x : Tensor (N, ...)
    draws : dict of str to Tensor ``(n, *shape)``
    n : int
        Number of draws.

    Examples
    --------
    >>> draws = {"w": torch.zeros(10, 50, 50)}
    >>> with torch.no_grad():
    ...     loop_pays(torch.zeros(2000, 50), draws, 10), loop_pays(torch.zeros(5, 50), draws, 10)
    (True, False)
    >>> loop_pays(torch.zeros(2000, 50), draws, 10)  # autograd on: vmap
    False
    """
    if n < 2 or torch.is_grad_enabled() or torch.jit.is_tracing() or not _no_transform_active():
        return False
    return enough_work(x, sum(v[0].numel() for v in draws.values()))


def run_per_draw(net: nn.Module, fixed: Mapping[str, Tensor], draws: Mapping[str, Tensor], x: Tensor,
                 n: int) -> Tensor:
    """The net's outputs for ``n`` parameter draws, ``(n, N, *out)``, one forward pass per draw.

    Parameters
    ----------
    net : nn.Module
    fixed : dict of str to Tensor
        Parameters and buffers used in place of the net's own for every draw (e.g. cast to
        the input's dtype), by their names in ``net``.
    draws : dict of str to Tensor ``(n, *shape)``
        Per-draw values of parameters, by their names in ``net.named_parameters()``.
    x : Tensor
        The input, the same for every draw.
    n : int
        Number of draws.

    Returns
    -------
    Tensor ``(n, *net(x).shape)``

    Raises
    ------
    TypeError
        The net returns something other than one Tensor.
    ValueError
        ``n`` is not a positive int, or a draw tensor's leading dim is not ``n``.
    KeyError
        A name in ``draws`` is not one of the net's parameters.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (the number of draws), got {n!r}")
    unknown = sorted(set(draws) - {k for k, _ in net.named_parameters()})
    if unknown:
        raise KeyError(f"{unknown} are not parameters of the net; its parameters are "
                       f"{[k for k, _ in net.named_parameters()]}")
    bad = {k: tuple(v.shape) for k, v in draws.items() if v.dim() == 0 or v.shape[0] != n}
    if bad:
        raise ValueError(f"every draw tensor needs a leading dim of n={n} draws; got shapes {bad}")
    plan = _plan(net, set(draws))
    with _reparametrize_module(net, dict(fixed), tie_weights=True):
        first = _eager(net, draws, x, 0)
        out = first.new_empty((n,) + tuple(first.shape))
        out[0] = first
        if plan is not None:
            fn, sources = plan
            args = _arguments(net, sources, draws, fixed)
            try:
                got = fn(x, *[a if isinstance(a, Tensor) else a[0] for a in args])
            except Exception:  # noqa: BLE001 - traced code the module does not agree with
                got = None
            if _same(got, first):
                for s in range(1, n):
                    out[s] = fn(x, *[a if isinstance(a, Tensor) else a[s] for a in args])
                return out
            _forget(net, set(draws))  # e.g. a random layer: the module itself is the reference
        _eager_rest(net, draws, x, out)
    return out


def _check(y: Any) -> Tensor:
    if not isinstance(y, Tensor):
        raise TypeError(f"the net must return one Tensor, got {type(y).__name__}")
    return y


def _eager(net: nn.Module, draws: Mapping[str, Tensor], x: Tensor, s: int) -> Tensor:
    """One draw through the module itself (``functional_call`` semantics: hooks fire)."""
    with _reparametrize_module(net, {k: v[s] for k, v in draws.items()}, tie_weights=True):
        return _check(net(x))


def _eager_rest(net: nn.Module, draws: Mapping[str, Tensor], x: Tensor, out: Tensor) -> None:
    """Draws 1.. through the module, each draw's values copied into one set of parameters
    (a few small copies per draw instead of a ``functional_call`` each, ~150 us)."""
    slots = {k: torch.empty_like(v[0], memory_format=torch.contiguous_format) for k, v in draws.items()}
    with _reparametrize_module(net, slots, tie_weights=True):
        for s in range(1, out.shape[0]):
            for k, v in draws.items():
                slots[k].copy_(v[s])
            out[s] = _check(net(x))


def _same(a: Any, b: Tensor) -> bool:
    return (isinstance(a, Tensor) and a.shape == b.shape and a.dtype == b.dtype
            and torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max().clamp_min(1.0)), equal_nan=True))


def _arguments(net: nn.Module, sources: list[str], draws: Mapping[str, Tensor],
               fixed: Mapping[str, Tensor]) -> list[Any]:
    """Per traced input: a tuple of per-draw views, or one tensor for every draw."""
    args: list[Any] = []
    for name in sources:
        if name in draws:
            args.append(draws[name].unbind(0))
        elif name in fixed:
            args.append(fixed[name])
        else:
            args.append(_tensor_at(net, name))
    return args


def _tensor_at(net: nn.Module, name: str) -> Tensor:
    owner, _, attr = name.rpartition(".")
    return getattr(net.get_submodule(owner) if owner else net, attr)


def _has_hooks(net: nn.Module) -> bool:
    from torch.nn.modules import module as module_mod

    if any(getattr(module_mod, g, None) for g in ("_global_forward_hooks", "_global_forward_pre_hooks")):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def _key(net: nn.Module, drawn: set[str]) -> tuple:
    return tuple(m.training for m in net.modules()), frozenset(drawn)


def _forget(net: nn.Module, drawn: set[str]) -> None:
    _PLANS.setdefault(net, {})[_key(net, drawn)] = None


def _plan(net: nn.Module, drawn: set[str]) -> tuple[Callable[..., Any], list[str]] | None:
    """The net as ``fn(x, *tensors)`` plus the name of each tensor, or None (use the module)."""
    if _has_hooks(net):
        return None
    plans = _PLANS.setdefault(net, {})
    key = _key(net, drawn)
    if key not in plans:
        plans[key] = _trace(net, drawn)
    return plans[key]


class _Inline(torch.fx.Tracer):
    """Traces into every module except ``leaves``, so parameters show up as attribute reads."""

    def __init__(self, leaves: set[int]) -> None:
        super().__init__()
        self._leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return id(m) in self._leaves


def _trace(net: nn.Module, drawn: set[str]) -> tuple[Callable[..., Any], list[str]] | None:
    """Trace through every module; failing that, keep whole the submodules without drawn
    parameters (e.g. a batch norm, whose forward branches on the input's rank)."""
    params = dict(net.named_parameters())
    drawn_ids = {id(params[k]) for k in drawn if k in params}
    whole = {id(m) for m in net.modules()
             if m is not net and not any(id(p) in drawn_ids for p in m.parameters())}
    for leaves in (set(), whole):
        try:
            graph = _Inline(leaves).trace(net)
        except Exception:  # data-dependent control flow, unsupported Python: use the module
            continue
        return _as_function(net, graph)
    return None


def _as_function(net: nn.Module, graph: torch.fx.Graph) -> tuple[Callable[..., Any], list[str]] | None:
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    if len(placeholders) != 1:
        return None  # more than the input (extra forward arguments): use the module
    sources: list[str] = []
    last = placeholders[0]
    for node in list(graph.nodes):
        if node.op != "get_attr":
            continue
        try:
            value = _tensor_at(net, node.target)
        except AttributeError:
            return None
        if not isinstance(value, Tensor):
            continue
        with graph.inserting_after(last):
            last = graph.placeholder(f"_tensor_{len(sources)}")
        node.replace_all_uses_with(last)
        graph.erase_node(node)
        sources.append(node.target)
    graph.lint()
    module = torch.fx.GraphModule(net, graph)
    return module.forward, sources
