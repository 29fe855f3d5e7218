"""Sphinx configuration for the pyro-models documentation.

Build (warnings are errors, as in CI)::

    .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html

The tutorials are rendered from the notebooks committed in ``tutorials/`` with their stored
outputs; nothing is executed during the build. They are copied into ``docs/tutorials/`` (a
generated, git-ignored folder) because Sphinx only reads files under its source folder.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent

import pyro_models  # noqa: E402  (the installed package, editable in a checkout)

# -- project -----------------------------------------------------------------------------------
project = "pyro-models"
author = "pyro-models contributors"
copyright = "pyro-models contributors"
release = pyro_models.__version__
version = release

# -- extensions --------------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",  # Markdown pages (MyST) and notebooks; includes myst_parser
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

# -- notebooks: render the committed outputs, never execute --------------------------------------
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# -- API reference -------------------------------------------------------------------------------
# NumPy-style docstrings through napoleon. Types in docstrings stay plain text (no cross-reference
# resolution), and nitpicky mode is off: the package documents shapes such as "Tensor (N, D)" that
# are not Python objects Sphinx could link to.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_param = True
napoleon_use_rtype = False
napoleon_preprocess_types = False
napoleon_attr_annotations = True
# "Attributes" sections as :ivar: fields: documenting them as attribute directives would
# duplicate the properties that autodoc documents from :members:.
napoleon_use_ivar = True
nitpicky = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": False}
autosummary_generate = False
add_module_names = False
python_display_short_literal_types = True

# -- HTML --------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"pyro-models {release}"
html_static_path: list[str] = []


# -- tutorials: copy the listed notebooks into the source tree --------------------------------------
def _tutorial_notebooks() -> list[str]:
    spec = importlib.util.spec_from_file_location("pyro_models_tutorial_runner", REPO / "tutorials" / "run_notebooks.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    return list(runner.NOTEBOOKS)


def _copy_tutorials() -> list[str]:
    target = DOCS / "tutorials"
    target.mkdir(exist_ok=True)
    names = _tutorial_notebooks()
    for stale in target.glob("*.ipynb"):
        if stale.name not in names:
            stale.unlink()
    for name in names:
        src = REPO / "tutorials" / name
        if src.exists():
            shutil.copy2(src, target / name)
    return names


TUTORIALS = _copy_tutorials()
