"""The guide family: every posterior approximation behind one registry.

A guide entry is a factory ``factory(model, **options) -> guide`` plus the engine that trains
it, an optional ``post_fit`` step (the Laplace approximation turns a MAP fit into a
Gaussian) and an optional ``check(model)`` that says why the guide cannot serve a model.
Options are keyword arguments with defaults in the factory's signature.

========================  ======================================================================
``normal``                mean-field Gaussian (``AutoNormal``)
``lowrank_mvn``           Gaussian with low-rank plus diagonal covariance
``mvn``                   full-rank Gaussian
``delta``                 point mass at the MAP estimate
``laplace``               MAP, then a Gaussian from the Hessian at the mode
                          (:mod:`~pyro_models.guides.laplace`)
``last_layer_laplace``    MAP net, Gaussian last layer (:mod:`~pyro_models.guides.laplace`)
``iaf``                   inverse autoregressive flow (:mod:`~pyro_models.guides.flows`)
``spline``                neural spline flow (:mod:`~pyro_models.guides.flows`)
``structured``            globals jointly Gaussian, locals linear in the globals
                          (:mod:`~pyro_models.guides.structured`)
``amortized``             encoder network for models with local latents
                          (:mod:`~pyro_models.guides.amortized`)
``deep_ensemble``         M independently initialised MAP members (:mod:`~pyro_models.guides.baselines`)
``swag``                  Gaussian from the SGD trajectory (:mod:`~pyro_models.guides.baselines`)
``mc_dropout``            dropout kept on at prediction (:mod:`~pyro_models.guides.baselines`)
========================  ======================================================================

:func:`available` lists them all, with the baselines and any plug-ins.

Examples
--------
>>> from pyro_models import guides, models
>>> {"normal", "lowrank_mvn", "mvn", "iaf", "spline", "delta", "laplace", "structured"} <= set(guides.available())
True
>>> guides.entry("lowrank_mvn").options()
{'rank': None, 'init_scale': 0.1, 'init_loc': 'median'}
>>> guide = guides.get("lowrank_mvn")(models.get("linear_regression")(), rank=2)
>>> guides.incompatibility("amortized", models.get("linear_regression")()) is not None
True

Third-party guides arrive through the entry-point group ``pyro_models.guides``; the
entry-point object is a :class:`GuideEntry` or a plain factory (then trained with SVI).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyro.infer import autoguide

from ..init_strategies import INIT_STRATEGIES, get_init_strategy
from ..registry import Registry

__all__ = [
    "GuideEntry", "register", "get", "entry", "available", "unregister", "incompatibility",
    "needs_method", "REGISTRY",
]

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
    check : callable, optional
        ``check(model) -> str | None``: why the guide cannot be used with ``model`` (one
        human-readable reason, e.g. "it needs an encoder network ..."), or ``None`` when it
        can. Run by :func:`incompatibility`. ``None`` (the default) declares every model
        compatible.
    """

    name: str
    factory: Callable[..., Any]
    engine: str = "svi"
    post_fit: Callable[..., Any] | None = None
    description: str = ""
    check: Callable[[Any], str | None] | None = None

    def __post_init__(self) -> None:
        if not callable(self.factory):
            raise TypeError(f"guide {self.name!r}: factory must be callable, got {self.factory!r}")
        if self.engine not in _ENGINES:
            raise ValueError(f"guide {self.name!r}: engine must be one of {list(_ENGINES)}, got {self.engine!r}")
        if self.check is not None and not callable(self.check):
            raise TypeError(f"guide {self.name!r}: check must be callable or None, got {self.check!r}")

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
            return obj if obj.name == name else dataclasses.replace(obj, name=name)
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
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """Register a guide factory under ``name``; usable as a decorator.

    ``check(model) -> str | None`` declares the models the guide cannot serve (see
    :class:`GuideEntry` and :func:`incompatibility`). Raises ``ValueError`` on a duplicate
    name unless ``override=True``.
    """

    def do(f: Callable[..., Any]) -> Callable[..., Any]:
        desc = description or (f.__doc__ or "").strip().split("\n")[0]
        REGISTRY.register(name, GuideEntry(name, f, engine, post_fit, desc, check), override=override)
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


def _model_name(model: Any) -> str:
    name = getattr(model, "registered_name", None)
    if name:
        return name
    if inspect.isfunction(model) or inspect.ismethod(model):
        return model.__name__
    return type(model).__name__


def incompatibility(name: str, model: Any) -> str | None:
    """Why guide ``name`` cannot be used with ``model``, or ``None`` when it can.

    Runs the ``check`` declared in the guide's registry entry; :func:`pyro_models.fit` and
    the contract tests use it to refuse (or skip) an incompatible pair before any work.

    Parameters
    ----------
    name : str
        A registered guide name.
    model : str, BayesianModel or callable
        A model instance (or Pyro model callable), or a registered model name (then built
        with its default hyperparameters).

    Returns
    -------
    str or None
        A sentence naming the guide, the model and the reason, ending with what to use
        instead; ``None`` if the pair is compatible (or the guide declares no check).

    Raises
    ------
    KeyError
        Unknown guide (or model) name; the message lists the available ones.

    Examples
    --------
    >>> from pyro_models import guides
    >>> print(guides.incompatibility("amortized", "linear_regression"))  # doctest: +ELLIPSIS
    guide 'amortized' cannot be used with model 'linear_regression': it needs ...
    >>> guides.incompatibility("normal", "linear_regression") is None
    True
    """
    e = entry(name)
    if isinstance(model, str):
        from .. import models  # the model registry imports nothing from here; avoid a cycle at import

        model = models.get(model)()
    if e.check is None:
        return None
    reason = e.check(model)
    if reason is None:
        return None
    if not isinstance(reason, str) or not reason:
        raise TypeError(f"guide {name!r}: its check must return a non-empty str or None, got {reason!r}")
    return (f"guide {name!r} cannot be used with model {_model_name(model)!r}: {reason}; "
            f"use another guide (e.g. guide='normal'), see pyro_models.guides.available()")


def needs_method(method: str, what: str) -> Callable[[Any], str | None]:
    """A ``check`` for :func:`register`: the model must have a callable ``method``.

    Parameters
    ----------
    method : str
        Attribute the model must provide, e.g. ``"make_encoder"``.
    what : str
        What that attribute is, for the message ("an encoder network (a make_encoder method)").

    Returns
    -------
    callable
        ``check(model) -> str | None``.

    Examples
    --------
    >>> check = needs_method("make_encoder", "an encoder network")
    >>> check(object())
    'it needs an encoder network, and the model has no make_encoder'
    """

    def check(model: Any) -> str | None:
        if callable(getattr(model, method, None)):
            return None
        return f"it needs {what}, and the model has no {method}"

    check.__qualname__ = f"needs_method({method!r})"
    return check


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


# Guides that live in their own modules register themselves on import.
from . import amortized, baselines, flows, laplace, structured  # noqa: E402,F401
