"""`guides/` installs as `pyro_models.guides`, in editable and in regular installs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pyro_models
import pyro_models.guides

REPO = Path(__file__).resolve().parents[1]


def test_guides_subpackage_maps_to_top_level_folder():
    # In the development (editable) install, the module is the repo's guides/ folder.
    assert Path(pyro_models.guides.__file__).resolve().parent.name == "guides"
    assert pyro_models.guides.get("normal") is not None


def test_regular_install_ships_guides(tmp_path):
    if not (REPO / "pyproject.toml").exists():
        pytest.skip("not running from a source checkout")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO)],
        check=True, capture_output=True, text=True,
    )
    installed = target / "pyro_models" / "guides" / "__init__.py"
    assert installed.exists()
    code = (
        "import pyro_models, pyro_models.guides as g; "
        "print(pyro_models.__file__); print(g.__file__); print(','.join(g.available()))"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env=env, cwd=tmp_path).stdout.splitlines()
    assert out[0].startswith(str(target)) and out[1].startswith(str(target))
    assert {"normal", "lowrank_mvn", "mvn", "delta", "laplace"} <= set(out[2].split(","))
