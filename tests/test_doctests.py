"""Doctests of modules pytest cannot collect by path (``guides/`` installs as ``pyro_models.guides``).

Everything under ``pyro_models/`` is collected by ``--doctest-modules`` (see pyproject.toml).
"""

from __future__ import annotations

import doctest

import pyro_models.guides


def test_guides_doctests():
    result = doctest.testmod(pyro_models.guides, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
