"""Model registry and the built-in models.

``register`` / ``get`` / ``available`` over a plain dict; third-party models arrive through
the entry-point group ``pyro_models.models`` (the entry-point object is a
:class:`BayesianModel` subclass or a factory returning one).

Examples
--------
>>> from pyro_models import models
>>> "beta_binomial" in models.available()
True
>>> model = models.get("linear_regression")(weight_scale=10.0)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..registry import Registry, decorator_or_call
from .base import BayesianModel

__all__ = ["BayesianModel", "register", "get", "available", "unregister", "REGISTRY"]

class _ModelRegistry(Registry[Callable[..., BayesianModel]]):
    def _coerce_plugin(self, name: str, obj: Any) -> Callable[..., BayesianModel]:
        # A plug-in class learns its registered name too, so its saved results reload by name.
        obj = _check_model_factory(obj)
        if isinstance(obj, type) and issubclass(obj, BayesianModel) and "registered_name" not in obj.__dict__:
            obj.registered_name = name
        return obj


REGISTRY: Registry[Callable[..., BayesianModel]] = _ModelRegistry(
    "model",
    group="pyro_models.models",
    how_to_register="pyro_models.models.register('name', MyModel) with a BayesianModel subclass, "
    "or an entry point in group 'pyro_models.models'",
)


def _check_model_factory(obj: Any) -> Any:
    if not callable(obj):
        raise TypeError(f"a model entry must be a BayesianModel subclass or factory, got {obj!r}")
    return obj


def register(
    name: str, model: Callable[..., BayesianModel] | None = None, *, override: bool = False
) -> Any:
    """Register a model class (or factory) under ``name``; usable as a decorator.

    Raises ``ValueError`` on a duplicate name unless ``override=True``.
    """

    def wrap(obj: Any) -> Any:
        obj = _check_model_factory(obj)
        if isinstance(obj, type) and issubclass(obj, BayesianModel) and "registered_name" not in obj.__dict__:
            obj.registered_name = name
        return obj

    return decorator_or_call(REGISTRY, name, model, wrap, override)


def get(name: str) -> Callable[..., BayesianModel]:
    """Return the model class/factory registered as ``name`` (``KeyError`` lists the options)."""
    return REGISTRY.get(name)


def available() -> list[str]:
    """Sorted names of all registered models, plug-ins included."""
    return REGISTRY.available()


def unregister(name: str) -> None:
    """Remove a registered model."""
    REGISTRY.unregister(name)


# Built-in families register themselves on import.
from . import bnn, conjugate, gp, hierarchical, radon, regression, vae  # noqa: E402,F401
