"""Tutorial notebooks: every one listed, public API only, and each executes in smoke mode.

The listing and public-API checks run in the default suite; the smoke executions carry the
``tutorials`` marker and run with ``pytest -m tutorials`` (the README's test command and CI
run both). The notebooks and their runner live in ``tutorials/``
(``tutorials/run_notebooks.py`` holds the list ``NOTEBOOKS``). Each listed notebook is its
own test, so pytest-xdist spreads them over the cores; a smoke run sets ``PYRO_MODELS_SMOKE=1`` and the notebook shrinks its budgets
(and asserts only what holds at those budgets).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNNER_PATH = REPO / "tutorials" / "run_notebooks.py"

if not RUNNER_PATH.exists():  # an installed package without the source tree
    pytest.skip("tutorials/ is not present (not running from a source checkout)", allow_module_level=True)

pytest.importorskip("nbclient", reason="the tutorials need the test extra (nbclient, nbformat, ipykernel)")


def _load_runner():
    spec = importlib.util.spec_from_file_location("pyro_models_tutorial_runner", RUNNER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = _load_runner()


def test_every_notebook_is_listed():
    """A notebook added to tutorials/ must be added to NOTEBOOKS (and so to the smoke tests)."""
    assert runner.unlisted() == [], (
        f"notebooks not listed in NOTEBOOKS in {RUNNER_PATH}: {runner.unlisted()}; add them there "
        f"(in reading order) so that CI executes them"
    )
    assert runner.missing() == [], f"NOTEBOOKS lists files that do not exist: {runner.missing()}"
    assert runner.duplicates() == [], f"NOTEBOOKS lists these more than once: {runner.duplicates()}"


def test_tutorials_use_only_the_public_api():
    problems = [p for name in runner.present() for p in runner.private_access(runner.HERE / name)]
    assert problems == [], "tutorials must use only public names of pyro_models:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from pyro_models.models.conjugate import _lbeta", ["line 1: imports private name _lbeta from pyro_models.models.conjugate"]),
        ("from pyro_models import (fit,\n    _x as y)", ["line 1: imports private name _x from pyro_models"]),
        ("import pyro_models.inference._private", ["line 1: imports private module pyro_models.inference._private"]),
        ("from pyro_models._impl import thing", ["line 1: imports from private module pyro_models._impl"]),
        ("%matplotlib inline\nd = res._draws", ["line 2: private attribute ._draws"]),
        # not private: dunders, strings, comments, other packages' names imported by their own rules
        ("n = type(x).__name__\ns = 'a._b'  # res._draws", []),
        ("from pyro_models import fit, guides\nfrom pyro_models.testing import check_guide", []),
    ],
)
def test_private_access_detector(source, expected):
    """The check must catch every form of private access it claims to, and nothing else."""
    assert runner.private_access_in_source(source) == expected


def test_check_command_reports_an_unlisted_notebook(tmp_path, monkeypatch, capsys):
    """``--check`` fails, naming the file, when a notebook is not listed."""
    import nbformat

    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "99_new.ipynb")
    monkeypatch.setattr(runner, "HERE", tmp_path)
    monkeypatch.setattr(runner, "NOTEBOOKS", [])
    assert runner.main(["--check"]) == 1
    assert "99_new.ipynb is in tutorials/ but not listed in NOTEBOOKS" in capsys.readouterr().out


# Deselected from the default suite (about 5 CPU-minutes together); the README's test command
# and CI run them with ``-m tutorials`` after it.
@pytest.mark.tutorials
@pytest.mark.parametrize("name", runner.NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name):
    """Execute the notebook top to bottom in a fresh kernel with tiny budgets; any error fails."""
    path = runner.HERE / name
    if not path.exists():
        pytest.fail(f"{name} is listed in NOTEBOOKS but {path} does not exist")
    runner.execute(path, smoke=True)
