"""ArviZ bridge: the same results from ArviZ 0.x (InferenceData) and 1.x (xarray.DataTree).

The module is loaded by file path, so no ``pyro_models`` (hence no torch) import happens and
the file runs unchanged in an ArviZ-1.x environment without torch:

    PYTHONPATH=. python -m pytest tests/test_arviz_bridge.py -p no:cacheprovider --noconftest
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

az = pytest.importorskip("arviz")
xr = pytest.importorskip("xarray")

_PATH = Path(__file__).resolve().parents[1] / "pyro_models" / "inference" / "arviz_bridge.py"
_spec = importlib.util.spec_from_file_location("_arviz_bridge_under_test", _PATH)
ab = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ab
_spec.loader.exec_module(ab)

C, D, N_OBS, K = 4, 500, 10, 3
N = C * D
EXPECTED_COLUMNS = ["mean", "sd", "q5", "q50", "q95", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat"]
EXPECTED_GROUPS = ["posterior", "posterior_predictive", "log_likelihood", "sample_stats", "observed_data"]


def _groups(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    diverging = np.zeros((C, D), dtype=bool)
    diverging[0, [3, 17, 250]] = True
    diverging[2, [99, 400]] = True
    return {
        "posterior": {
            "mu": rng.normal(0.5, 1.0, size=(C, D)),
            "theta": rng.normal([-1.0, 0.0, 2.0], [0.5, 1.0, 3.0], size=(C, D, K)),
        },
        "sample_stats": {
            "diverging": diverging,
            "energy": rng.normal(10.0, 2.0, size=(C, D)),
            "lp": rng.normal(-20.0, 1.0, size=(C, D)),
            "tree_depth": rng.integers(1, 5, size=(C, D)),
            "step_size": np.full((C, D), 0.3),
            "acceptance_rate": rng.uniform(0.6, 1.0, size=(C, D)),
            "n_steps": rng.integers(1, 16, size=(C, D)),
        },
        "observed_data": {"y": rng.normal(size=N_OBS)},
        "posterior_predictive": {"y": rng.normal(size=(C, D, N_OBS))},
        # well-behaved pointwise log-likelihood: PSIS-LOO is stable and checkable in closed form
        "log_likelihood": {"y": rng.normal(-1.0, 0.1, size=(C, D, N_OBS))},
        "prior": None,  # empty groups are skipped
        "constant_data": {},
    }


@pytest.fixture(scope="module")
def raw():
    return _groups()


@pytest.fixture(scope="module")
def data(raw):
    return ab.to_arviz(raw, dims={"y": ["obs"]}, coords={"obs": np.arange(N_OBS)}, attrs={"engine": "nuts"})


def test_version_and_type(data):
    assert ab.ARVIZ_MAJOR == int(az.__version__.split(".")[0])
    if ab.ARVIZ_MAJOR >= 1:
        assert isinstance(data, xr.DataTree)
    else:
        assert isinstance(data, az.InferenceData)


def test_groups_shapes_and_dims(data, raw):
    assert ab.group_names(data) == EXPECTED_GROUPS  # same names and order on 0.x and 1.x
    post = ab.get_group(data, "posterior")
    assert isinstance(post, xr.Dataset)
    assert post["mu"].dims == ("chain", "draw") and post["mu"].shape == (C, D)
    assert post["theta"].dims[:2] == ("chain", "draw") and post["theta"].shape == (C, D, K)
    np.testing.assert_array_equal(post["theta"].values, raw["posterior"]["theta"])
    np.testing.assert_array_equal(post["chain"].values, np.arange(C))
    np.testing.assert_array_equal(post["draw"].values, np.arange(D))

    stats = ab.get_group(data, "sample_stats")
    for name in ("diverging", "energy", "lp", "tree_depth", "step_size", "acceptance_rate", "n_steps"):
        assert stats[name].dims == ("chain", "draw"), name
    assert stats["diverging"].dtype == bool

    obs = ab.get_group(data, "observed_data")
    assert obs["y"].dims == ("obs",) and obs["y"].shape == (N_OBS,)
    np.testing.assert_array_equal(obs["y"].values, raw["observed_data"]["y"])
    for g in ("posterior_predictive", "log_likelihood"):
        ds = ab.get_group(data, g)
        assert ds["y"].dims == ("chain", "draw", "obs") and ds["y"].shape == (C, D, N_OBS), g
        np.testing.assert_array_equal(ds["y"].values, raw[g]["y"])

    for g in EXPECTED_GROUPS:  # attrs reach every group on both versions
        assert ab.get_group(data, g).attrs["engine"] == "nuts", g
    with pytest.raises(KeyError, match="no group 'prior'"):
        ab.get_group(data, "prior")


def test_summarize_columns_rows_and_values(data, raw):
    table = ab.summarize(data)
    assert list(table.columns) == EXPECTED_COLUMNS
    assert list(table.index) == ["mu", "theta[0]", "theta[1]", "theta[2]"]
    assert all(table.dtypes == np.float64)

    mu = raw["posterior"]["mu"].ravel()
    theta = raw["posterior"]["theta"].reshape(N, K)
    cols = [mu] + [theta[:, k] for k in range(K)]
    np.testing.assert_allclose(table["mean"], [c.mean() for c in cols], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(table["sd"], [c.std(ddof=1) for c in cols], rtol=1e-10)
    for q, name in ((0.05, "q5"), (0.5, "q50"), (0.95, "q95")):
        np.testing.assert_allclose(table[name], [np.quantile(c, q) for c in cols], rtol=1e-10, atol=1e-12)

    # iid draws. Over 2000 independent replicates of 4x500 iid N(0,1) draws, ArviZ's bulk ESS
    # had median ~1976 and sd ~123 (~6% of N; min 1333, max 2390) and |R-hat - 1| < 0.0065.
    # The bounds below sit >= 8 sd from the centre, so they only catch a real error
    # (e.g. chain/draw axes swapped or draws reshuffled into correlated chains).
    assert (table["r_hat"] - 1).abs().max() < 0.02
    assert table["ess_bulk"].between(1000, 3000).all()
    assert table["ess_tail"].between(800, 3000).all()
    # MCSE of the mean of iid draws ~ sd / sqrt(N)
    np.testing.assert_allclose(table["mcse_mean"], table["sd"] / np.sqrt(N), rtol=0.25)
    assert (table["mcse_sd"] > 0).all()


def test_summarize_options(data):
    one = ab.summarize(data, var_names=["mu"], quantiles=(0.025, 0.975), round_to=2)
    assert list(one.index) == ["mu"]
    assert list(one.columns) == ["mean", "sd", "q2.5", "q97.5", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat"]
    assert np.allclose(one.values, np.round(one.values, 2))
    full = ab.summarize(data)
    assert ab.summarize(data, var_names="mu").loc["mu", "mean"] == full.loc["mu", "mean"]


def test_scalar_diagnostics_match_summary(data):
    table = ab.summarize(data)
    assert ab.ess_bulk_min(data) == pytest.approx(table["ess_bulk"].min(), rel=1e-12)
    assert ab.rhat_max(data) == pytest.approx(table["r_hat"].max(), rel=1e-12)
    assert ab.ess_bulk_min(data, var_names=["mu"]) == pytest.approx(table.loc["mu", "ess_bulk"], rel=1e-12)
    assert ab.rhat_max(data, var_names="theta") == pytest.approx(table.loc[["theta[0]", "theta[1]", "theta[2]"], "r_hat"].max(), rel=1e-12)


def test_num_divergences(data, raw):
    assert ab.num_divergences(data) == 5 == int(raw["sample_stats"]["diverging"].sum())
    no_stats = ab.to_arviz({"posterior": raw["posterior"]})
    assert ab.group_names(no_stats) == ["posterior"]
    assert ab.num_divergences(no_stats) == 0
    no_div = ab.to_arviz({"posterior": raw["posterior"], "sample_stats": {"energy": raw["sample_stats"]["energy"]}})
    assert ab.num_divergences(no_div) == 0


def test_bfmi(data, raw):
    values = ab.bfmi(data)
    assert values.shape == (C,)
    e = raw["sample_stats"]["energy"]
    expected = np.square(np.diff(e, axis=1)).mean(axis=1) / e.var(axis=1, ddof=1)  # iid energy: ~2
    np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_loo(data, raw):
    res = az.loo(data)
    elpd = float(res.elpd) if ab.ARVIZ_MAJOR >= 1 else float(res["elpd_loo"])
    assert np.isfinite(elpd)
    # with near-constant pointwise log-likelihoods PSIS weights are nearly raw importance
    # ratios: elpd_i ~= -log mean(exp(-ll_i))
    ll = raw["log_likelihood"]["y"].reshape(N, N_OBS)
    reference = float(np.sum(-np.log(np.mean(np.exp(-ll), axis=0))))
    assert elpd == pytest.approx(reference, abs=0.05)
    pareto_k = res.pareto_k.values if ab.ARVIZ_MAJOR >= 1 else np.asarray(res["pareto_k"])
    assert np.all(pareto_k < 0.7)


def test_plot_trace(data, tmp_path):
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    out = ab.plot_trace(data, var_names=["mu", "theta"], path=tmp_path / "sub" / "trace.png")
    assert out == tmp_path / "sub" / "trace.png"
    assert out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(plt.get_fignums()) == before  # figures closed

    default = ab.plot_trace(data, var_names="mu")
    try:
        assert default.suffix == ".png" and default.stat().st_size > 1000
    finally:
        default.unlink()
