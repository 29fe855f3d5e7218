"""The guide family: every posterior approximation behind one registry.

A guide entry is a factory ``factory(model, **options) -> guide`` plus the engine that trains
it and an optional ``post_fit`` step (the Laplace approximation turns a MAP fit into a
Gaussian). Options are keyword arguments with defaults in the factory's signature::

    >>> from pyro_models import guides
    >>> {"normal", "lowrank_mvn", "mvn", "delta", "laplace"} <= set(guides.available())
    True
    >>> make = guides.get("lowrank_mvn")        # doctest: +SKIP
    >>> guide = make(model, rank=10)            # doctest: +SKIP

Third-party guides arrive through the entry-point group ``pyro_models.guides``; the
entry-point object is a :class:`GuideEntry` or a plain factory (then trained with SVI).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyro.infer import autoguide

from ..init_strategies import INIT_STRATEGIES, get_init_strategy
from ..registry import Registry

__all__ = ["GuideEntry", "register", "get", "entry", "available", "unregister", "REGISTRY"]

_ENGINES = ("svi",)


@dataclass(frozen=True)
class GuideEntry:
    """A registered guide.

    Parameters
    ----------
    name : str
    factory : callable
        ``factory(model, **options)`` returning a Pyro guide (usually an ``AutoGuide``).
    engine : str
        The loop that trains it (``"svi"``).
    post_fit : callable, optional
        ``post_fit(guide, model, data) -> guide`` run once after training.
    description : str
    """

    name: str
    factory: Callable[..., Any]
    engine: str = "svi"
    post_fit: Callable[..., Any] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not callable(self.factory):
            raise TypeError(f"guide {self.name!r}: factory must be callable, got {self.factory!r}")
        if self.engine not in _ENGINES:
            raise ValueError(f"guide {self.name!r}: engine must be one of {list(_ENGINES)}, got {self.engine!r}")

    def options(self) -> dict[str, Any]:
        """Keyword options of the factory with their defaults."""
        sig = inspect.signature(self.factory)
        return {
            k: p.default for k, p in list(sig.parameters.items())[1:]
            if p.kind is inspect.Parameter.KEYWORD_ONLY or p.default is not inspect.Parameter.empty
        }


class _GuideRegistry(Registry[GuideEntry]):
    def _coerce_plugin(self, name: str, obj: Any) -> GuideEntry:
        if isinstance(obj, GuideEntry):
            return obj if obj.name == name else GuideEntry(name, obj.factory, obj.engine, obj.post_fit, obj.description)
        if callable(obj):
            return GuideEntry(name, obj, description=(obj.__doc__ or "").strip().split("\n")[0])
        raise TypeError(f"entry point object must be a GuideEntry or a factory, got {type(obj).__name__}")


REGISTRY = _GuideRegistry(
    "guide",
    group="pyro_models.guides",
    how_to_register="pyro_models.guides.register('name', factory) where factory(model, **options) "
    "returns a guide, or an entry point in group 'pyro_models.guides'",
)


def register(
    name: str,
    factory: Callable[..., Any] | None = None,
    *,
    engine: str = "svi",
    post_fit: Callable[..., Any] | None = None,
    description: str = "",
    override: bool = False,
) -> Any:
    """Register a guide factory under ``name``; usable as a decorator.

    Raises ``ValueError`` on a duplicate name unless ``override=True``.
    """

    def do(f: Callable[..., Any]) -> Callable[..., Any]:
        desc = description or (f.__doc__ or "").strip().split("\n")[0]
        REGISTRY.register(name, GuideEntry(name, f, engine, post_fit, desc), override=override)
        return f

    return do if factory is None else do(factory)


def entry(name: str) -> GuideEntry:
    """The full :class:`GuideEntry` for ``name`` (``KeyError`` lists the options)."""
    return REGISTRY.get(name)


def get(name: str) -> Callable[..., Any]:
    """The guide factory registered as ``name``: ``get("lowrank_mvn")(model, rank=10)``."""
    return REGISTRY.get(name).factory


def available() -> list[str]:
    """Sorted names of all registered guides, plug-ins included."""
    return REGISTRY.available()


def unregister(name: str) -> None:
    REGISTRY.unregister(name)


def _init_fn(init_loc: str | Callable[..., Any]) -> Callable[..., Any]:
    try:
        return get_init_strategy(init_loc)
    except ValueError:
        raise ValueError(f"init_loc must be a callable or one of {sorted(INIT_STRATEGIES)}, got {init_loc!r}") from None


def _check_scale(init_scale: float) -> None:
    if not (isinstance(init_scale, (int, float)) and init_scale > 0):
        raise ValueError(f"init_scale must be a positive number, got {init_scale!r}")


@register("normal", description="Mean-field Gaussian in the unconstrained space (AutoNormal).")
def normal(model: Callable[..., Any], *, init_scale: float = 0.1, init_loc: str | Callable[..., Any] = "median") -> autoguide.AutoNormal:
    """Mean-field Gaussian in the unconstrained space (AutoNormal)."""
    _check_scale(init_scale)
    return autoguide.AutoNormal(model, init_loc_fn=_init_fn(init_loc), init_scale=init_scale)


@register("lowrank_mvn", description="Gaussian with low-rank plus diagonal covariance.")
def lowrank_mvn(model: Callable[..., Any], *, rank: int | None = None, init_scale: float = 0.1,
                init_loc: str | Callable[..., Any] = "median") -> autoguide.AutoLowRankMultivariateNormal:
    """Gaussian with low-rank plus diagonal covariance; ``rank=None`` uses ``ceil(sqrt(D))``."""
    _check_scale(init_scale)
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive int or None, got {rank!r}")
    return autoguide.AutoLowRankMultivariateNormal(
        model, rank=rank, init_loc_fn=_init_fn(init_loc), init_scale=init_scale
    )


@register("mvn", description="Full-rank Gaussian (exact on linear-Gaussian models).")
def mvn(model: Callable[..., Any], *, init_scale: float = 0.1, init_loc: str | Callable[..., Any] = "median") -> autoguide.AutoMultivariateNormal:
    """Full-rank Gaussian in the unconstrained space (AutoMultivariateNormal)."""
    _check_scale(init_scale)
    return autoguide.AutoMultivariateNormal(model, init_loc_fn=_init_fn(init_loc), init_scale=init_scale)


@register("delta", description="Point mass at the MAP estimate (AutoDelta).")
def delta(model: Callable[..., Any], *, init_loc: str | Callable[..., Any] = "median") -> autoguide.AutoDelta:
    """Point mass: trains to the maximum a posteriori (MAP) estimate."""
    return autoguide.AutoDelta(model, init_loc_fn=_init_fn(init_loc))


def _laplace_post_fit(guide: Any, model: Callable[..., Any], data: dict[str, Any]) -> Any:
    # The Hessian at the MAP point turns the delta fit into a Gaussian.
    return guide.laplace_approximation(**data)


@register("laplace", post_fit=_laplace_post_fit,
          description="MAP then a Gaussian from the Hessian at the mode (Laplace approximation).")
def laplace(model: Callable[..., Any], *, init_loc: str | Callable[..., Any] = "median") -> autoguide.AutoLaplaceApproximation:
    """Laplace approximation: MAP by SVI, then a Gaussian with the inverse Hessian as covariance."""
    return autoguide.AutoLaplaceApproximation(model, init_loc_fn=_init_fn(init_loc))

# Guides that live in their own modules register themselves on import.
from . import amortized  # noqa: E402,F401
