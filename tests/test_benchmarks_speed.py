"""Every speed benchmark runs end to end in its ``--quick`` mode and prints its ratio table.

Timings in quick mode mean nothing (a handful of steps); these tests check the harness (fresh
worker processes, interleaving, skipped variants, the table) and that the variants' code still
runs against the current API. Each worker is a fresh interpreter that imports torch (and most
import pyro-models), so the default tests run the pyro-models variants and one baseline each;
the ``slow`` tests run every variant.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from _harness import Workload, ratio_table  # noqa: E402


def _run(script: str, *args: str, timeout: float = 600) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--reps", "1", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.startswith("Machine: ") and "cores" in out and "torch " in out
    assert "QUICK mode" in out
    return out


def _rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        if line.startswith("| ") and not line.startswith("| variant"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_speed_svi_quick():
    out = _run("speed_svi.py")
    rows = _rows(out)
    assert set(rows) == {"torch", "pyro", "pyro_models"}
    assert rows["torch"][-2] == "1.000x"  # the reference
    assert all(r[-2].endswith("x") for r in rows.values()), out


def _check_predictive(out: str, variants: set[str]) -> None:
    rows = _rows(out)
    assert set(rows) == variants
    assert all(r[-2].endswith("x") for r in rows.values()), out
    # Every variant used the same posterior draws: the same average predictive mean.
    means = {float(r[2]) for r in rows.values()}
    assert max(means) - min(means) < 1e-4 * max(1.0, max(abs(m) for m in means))


def test_speed_predictive_quick():
    out = _run("speed_predictive.py", "--variants", "torch_loop", "pyro_models")
    _check_predictive(out, {"torch_loop", "pyro_models"})


@pytest.mark.slow
def test_speed_predictive_quick_all_variants():
    out = _run("speed_predictive.py")
    _check_predictive(out, {"torch_loop", "torch_batched", "pyro_parallel", "pyro_loop", "pyro_models"})


def test_predictive_crossover_prints_a_ratio_per_net_and_size():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(BENCH / "predictive_crossover.py"), "--draws", "4"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "points" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["1-50-1", "8-50-50-1", "8-100-100-1", "4-20-1"]
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")[1:]]
        assert len(cells) == 4 and all(float(c.split()[0]) > 0 and ("(loop" in c or "(vmap" in c) for c in cells)


def test_speed_vae_quick():
    out = _run("speed_vae.py")
    rows = _rows(out)
    assert set(rows) == {"torch", "pyro_models"} and rows["torch"][-2] == "1.000x"


def test_speed_nuts_quick_pyro_models_variants():
    out = _run("speed_nuts.py", "--only", "eight_schools", "--variants", "pyro_models", "pyro_models_batched")
    rows = _rows(out)
    assert set(rows) == {"pyro_models", "pyro_models_batched"}
    # With neither NumPyro nor plain Pyro among the variants there is no reference to divide by.
    assert "ratio to reference" in out
    assert float(rows["pyro_models"][0]) > 0
    assert float(rows["pyro_models_batched"][0]) > 0 or "no 'backend' field" in rows["pyro_models_batched"][-2], out


@pytest.mark.slow
def test_speed_nuts_quick_all_variants():
    # NumPyro's JIT compilation alone takes tens of seconds per worker on a busy 2-core machine.
    out = _run("speed_nuts.py", timeout=1800)
    assert out.count("| pyro_models |") == 2 and out.count("| numpyro_vectorized |") == 2
    assert "ratio to numpyro" in out or "numpyro is not installed" in out


def test_ratio_table_marks_skipped_and_failed_variants():
    wl = Workload(name="w", title="T", variants=("a", "b", "c"), reference=("z", "a"), metric="rate",
                  higher_is_better=True, columns=("rate",))
    runs = {"a": [{"rate": 2.0}, {"rate": 4.0}, {"rate": 3.0}], "b": [{"rate": 6.0}],
            "c": [{"skipped": "library absent"}]}
    table = ratio_table(wl, runs)
    rows = _rows(table)
    assert rows["a"][0] == "3" and rows["a"][1] == "2-4" and rows["a"][2] == "1.000x"
    assert rows["b"][2] == "2.000x"
    assert "library absent" in rows["c"][-2]
    assert "ratio to a (higher is better)" in table
