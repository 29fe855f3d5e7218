"""Doctests of modules pytest cannot collect by path (``guides/`` installs as ``pyro_models.guides``)
and of the documentation pages under ``docs/``.

Everything under ``pyro_models/`` is collected by ``--doctest-modules`` (see pyproject.toml).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import pyro_models.guides


# Every module of the package, found on disk, so a new guide module is doctested with no edit.
GUIDE_MODULES = [""] + ["." + m.name for m in pkgutil.iter_modules(pyro_models.guides.__path__)]


@pytest.mark.parametrize("name", GUIDE_MODULES)
def test_guides_doctests(name):
    module = importlib.import_module("pyro_models.guides" + name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_writing_a_guide_page():
    """docs/writing_a_guide.md: its complete example (register, fit, check, unregister) runs."""
    page = Path(__file__).resolve().parents[1] / "docs" / "writing_a_guide.md"
    if not page.exists():
        pytest.skip("not running from a source checkout")
    before = set(pyro_models.guides.available())
    try:
        result = doctest.testfile(str(page), module_relative=False, optionflags=doctest.ELLIPSIS,
                                  raise_on_error=False, verbose=False)
    finally:  # a failed example must not leave the page's guides registered for other tests
        for name in set(pyro_models.guides.available()) - before:
            pyro_models.guides.unregister(name)
    assert result.attempted > 10 and result.failed == 0, f"{result.failed} example(s) failed (output above)"
