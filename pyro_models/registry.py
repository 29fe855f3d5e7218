"""Plain-dict registries behind ``register`` / ``get`` / ``available``.

Both the model and the guide registries are instances of :class:`Registry`. Third-party
entries arrive through a Python entry-point group, loaded once on first lookup; a broken
plug-in is reported with a warning naming it and never breaks ``import pyro_models``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")

__all__ = ["Registry", "PluginWarning"]


class PluginWarning(UserWarning):
    """A third-party plug-in failed to load; the rest of the package is unaffected."""


class Registry(Generic[T]):
    """A named collection of entries with duplicate protection and entry-point plug-ins.

    Parameters
    ----------
    kind : str
        What the entries are ("model", "guide"), used in messages.
    group : str
        The entry-point group third-party packages use to add entries.
    how_to_register : str
        One line telling a user how to add an entry, shown when a lookup fails.

    Examples
    --------
    >>> reg = Registry("widget", group="example.widgets", how_to_register="reg.register(name, obj)")
    >>> _ = reg.register("a", object())
    >>> reg.available()
    ['a']
    """

    def __init__(self, kind: str, group: str, how_to_register: str) -> None:
        self.kind = kind
        self.group = group
        self.how_to_register = how_to_register
        self._entries: dict[str, T] = {}
        self._plugins_loaded = False
        self._loading = False

    def register(self, name: str, entry: T, *, override: bool = False) -> T:
        """Add ``entry`` under ``name``; a duplicate raises ``ValueError`` unless ``override``."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} name must be a non-empty str, got {name!r}")
        if name in self._entries and not override:
            raise ValueError(
                f"a {self.kind} named {name!r} is already registered; "
                f"pass override=True to replace it"
            )
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (mainly for tests and interactive sessions)."""
        self._load_plugins()
        if name not in self._entries:
            raise self._unknown(name)
        del self._entries[name]

    def get(self, name: str) -> T:
        """Return the entry for ``name``; an unknown name raises ``KeyError`` listing the options."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a str, got {type(name).__name__}")
        self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise self._unknown(name) from None

    def available(self) -> list[str]:
        """Sorted names of every registered entry, plug-ins included."""
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def _unknown(self, name: str) -> UnknownNameError:
        names = ", ".join(sorted(self._entries)) or "(none)"
        return UnknownNameError(
            f"unknown {self.kind} {name!r}; available {self.kind}s: {names}. "
            f"To add one: {self.how_to_register}"
        )

    def _load_plugins(self) -> None:
        if self._plugins_loaded or self._loading:
            return
        self._loading = True
        try:
            for ep in entry_points(group=self.group):
                try:
                    obj = ep.load()
                    self._accept_plugin(ep.name, obj)
                except Exception as exc:  # a broken plug-in must not break the package
                    warnings.warn(
                        f"{self.kind} plug-in {ep.name!r} ({ep.value}) from entry-point group "
                        f"{self.group!r} failed to load and was skipped: "
                        f"{type(exc).__name__}: {exc}",
                        PluginWarning,
                        stacklevel=2,
                    )
        finally:
            self._loading = False
            self._plugins_loaded = True

    # Subclasses decide what an entry-point object means (an entry, or a factory of one).
    def _accept_plugin(self, name: str, obj: Any) -> None:
        if name in self._entries:
            raise ValueError(f"name {name!r} clashes with an already registered {self.kind}")
        self._entries[name] = self._coerce_plugin(name, obj)

    def _coerce_plugin(self, name: str, obj: Any) -> T:
        return obj


def decorator_or_call(
    registry: Registry[Any], name: str, entry: Any, wrap: Callable[[Any], Any], override: bool
) -> Any:
    """Support both ``register(name, obj)`` and ``@register(name)`` forms."""
    if entry is None:

        def deco(obj: Any) -> Any:
            registry.register(name, wrap(obj), override=override)
            return obj

        return deco
    registry.register(name, wrap(entry), override=override)
    return entry
