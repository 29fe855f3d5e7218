"""Initialisation strategies that also work for improper priors.

Pyro's ``init_to_*`` strategies call ``site["fn"].sample()``, which ``ImproperUniform``
(a flat prior) cannot do. These wrappers fall back to a uniform draw in (-2, 2) in the
unconstrained space, with the shape taken from the distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide import initialization as init

__all__ = ["get_init_strategy", "INIT_STRATEGIES"]

INIT_STRATEGIES: dict[str, Callable[..., Any]] = {
    "uniform": init.init_to_uniform,
    "median": init.init_to_median,
    "mean": init.init_to_mean,
    "feasible": init.init_to_feasible,
    "sample": init.init_to_sample,
}


def _improper_safe(strategy: Callable[..., Any]) -> Callable[..., Any]:
    def init_fn(site: dict[str, Any] | None = None) -> Any:
        if site is None:
            return init_fn
        try:
            return strategy(site)
        except NotImplementedError:
            fn = site["fn"]
            shape = fn.batch_shape + fn.event_shape
            support = getattr(fn, "support", constraints.real)
            t = biject_to(support)
            device = getattr(site.get("value"), "device", None) or torch.device("cpu")
            u = torch.rand(shape, device=device) * 4 - 2
            return t(u).detach()

    init_fn.__name__ = getattr(strategy, "__name__", "init_fn")
    return init_fn


def get_init_strategy(name: str | Callable[..., Any]) -> Callable[..., Any]:
    """A Pyro init strategy by name ("uniform", "median", ...) or a callable, improper-prior safe."""
    if callable(name):
        return _improper_safe(name)
    if name not in INIT_STRATEGIES:
        raise ValueError(f"init strategy must be a callable or one of {sorted(INIT_STRATEGIES)}, got {name!r}")
    return _improper_safe(INIT_STRATEGIES[name])
