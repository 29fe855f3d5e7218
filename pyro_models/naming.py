"""Unique Pyro names for modules the package builds.

Outside ``module_local_params`` mode, Pyro mirrors a ``PyroModule``'s parameters in the global
param store under ``<module name>.<param>``. Two guides of the same class would share (and
silently reuse) each other's values, so every guide and model instance the package builds
gets a name of its own.
"""

from __future__ import annotations

import itertools
from typing import Any

from pyro.nn import PyroModule

__all__ = ["give_unique_pyro_name"]

_counter = itertools.count()


def give_unique_pyro_name(module: Any, base: str | None = None) -> Any:
    """Rename ``module`` (and its PyroModule children) to ``<base>#<n>``; returns ``module``."""
    if isinstance(module, PyroModule):
        base = base or type(module).__name__
        module._pyro_set_supermodule(f"{base}#{next(_counter)}", module._pyro_context)
    return module
