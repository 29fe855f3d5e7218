"""Radon models: packaged data, posteriordb densities, centred = non-centred, exact posteriors.

The exact references: the Stan programs of posteriordb written out with scipy (log densities),
the change-of-variables identity between the centred and non-centred forms, and posteriors
that reduce to Gaussian integrals over one or two noise scales (quadrature, far more
accurate than the Monte Carlo error of the NUTS runs they check).
"""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from scipy import stats

import pyro_models
from pyro_models import DivergenceWarning, MCMCConfig, SVIConfig, models
from pyro_models.datasets import RADON_NUM_COUNTIES, RADON_NUM_HOUSES, load_radon
from pyro_models.errors import DataValidationError
from pyro_models.models import radon
from pyro_models.models.radon import (
    POOLINGS,
    Radon,
    RadonPooled,
    RadonUnpooled,
    RadonVaryingIntercept,
    RadonVaryingInterceptSlope,
)

NAMES = {
    "radon": "varying_intercept",
    "radon_pooled": "pooled",
    "radon_unpooled": "unpooled",
    "radon_varying_intercept": "varying_intercept",
    "radon_varying_intercept_slope": "varying_intercept_slope",
}
VARIANTS = [(p, c) for p in POOLINGS for c in (False, True)]
VARIANT_IDS = [f"{p}-{'centered' if c else 'noncentered'}" for p, c in VARIANTS]

# Latent sites per variant (names follow posteriordb); deterministic sites in brackets.
SITES = {
    ("pooled", False): (["sigma_y", "alpha", "beta"], []),
    ("unpooled", False): (["sigma_y", "beta", "alpha"], []),
    ("varying_intercept", True): (["sigma_y", "sigma_alpha", "mu_alpha", "beta", "alpha"], []),
    ("varying_intercept", False): (["sigma_y", "sigma_alpha", "mu_alpha", "beta", "alpha_raw"], ["alpha"]),
    ("varying_intercept_slope", True): (
        ["sigma_y", "sigma_alpha", "sigma_beta", "mu_alpha", "mu_beta", "alpha", "beta"], []),
    ("varying_intercept_slope", False): (
        ["sigma_y", "sigma_alpha", "sigma_beta", "mu_alpha", "mu_beta", "alpha_raw", "beta_raw"],
        ["alpha", "beta"]),
}
SITES[("pooled", True)] = SITES[("pooled", False)]  # nothing to (non-)centre
SITES[("unpooled", True)] = SITES[("unpooled", False)]

Z = 4.5  # |estimate - exact| < Z Monte Carlo standard errors (two-sided p ~ 7e-6 per check)


@pytest.fixture(autouse=True)
def _seed():
    pyro.set_rng_seed(0)


def _subset(counties: list[int], dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Houses of the given (0-based) counties, re-indexed 0..len(counties)-1."""
    d = load_radon(dtype=dtype)
    keep = torch.isin(d["county_idx"], torch.tensor(counties))
    remap = torch.full((RADON_NUM_COUNTIES,), -1, dtype=torch.long)
    remap[torch.tensor(counties)] = torch.arange(len(counties))
    return {"county_idx": remap[d["county_idx"][keep]], "floor_measure": d["floor_measure"][keep],
            "log_radon": d["log_radon"][keep]}


def _latent(trace) -> list[str]:
    return [n for n, s in trace.nodes.items()
            if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)]


def _deterministic(trace) -> list[str]:
    return [n for n, s in trace.nodes.items() if s["type"] == "sample" and s["infer"].get("_deterministic")]


# --------------------------------------------------------------------------------------------
# packaged data


def test_load_radon_contract():
    d = load_radon()
    assert sorted(d) == ["county_idx", "floor_measure", "log_radon"]
    assert all(v.shape == (RADON_NUM_HOUSES,) for v in d.values()) and RADON_NUM_HOUSES == 919
    assert d["county_idx"].dtype == torch.int64
    assert d["floor_measure"].dtype == torch.float32 and d["log_radon"].dtype == torch.float32
    # 0-based and every one of the 85 counties has at least one house.
    assert torch.equal(d["county_idx"].unique(), torch.arange(85)) and RADON_NUM_COUNTIES == 85
    assert set(d["floor_measure"].tolist()) == {0.0, 1.0}
    # Gelman & Hill record a zero reading as 0.1 before the log.
    assert float(d["log_radon"].min()) == pytest.approx(np.log(0.1), abs=1e-6)
    d64 = load_radon(dtype=torch.float64)
    assert d64["log_radon"].dtype == torch.float64
    assert torch.equal(d64["log_radon"].float(), d["log_radon"])
    # Fresh tensors on each call: editing one load does not leak into the next.
    d["log_radon"][0] = 100.0
    assert float(load_radon()["log_radon"][0]) != 100.0
    with pytest.raises(TypeError, match="floating torch dtype"):
        load_radon(dtype=torch.int64)


def test_loader_is_package_data():
    # The CSV travels with the package (no ../shared at run time).
    from importlib import resources

    text = resources.files("pyro_models.datasets").joinpath("radon_mn.csv").read_text()
    lines = text.splitlines()
    assert lines[0] == "county_idx,floor_measure,log_radon" and len(lines) == 1 + 919
    # Floats round-trip exactly: each field parses to the float64 the loader returns.
    d = load_radon(dtype=torch.float64)
    assert [float(x.split(",")[2]) for x in lines[1:]] == d["log_radon"].tolist()


# --------------------------------------------------------------------------------------------
# registry and construction


def test_every_registered_name_is_covered():
    names = [n for n in models.available() if getattr(models.get(n), "__module__", None) == radon.__name__]
    assert sorted(names) == sorted(NAMES)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_registered_defaults_and_round_trip(name):
    model = models.get(name)()
    assert model.pooling == NAMES[name] and model.centered is False and model.num_counties == 85
    again = models.get(type(model).registered_name)(**model.hparams)
    assert type(again) is type(model) and again.pooling == model.pooling
    other = models.get(name)(centered=True, num_counties=10)
    assert other.centered is True and other.num_counties == 10 and other.pooling == NAMES[name]


def test_registered_classes():
    assert Radon.registered_name == "radon"
    assert (RadonPooled.registered_name, RadonUnpooled.registered_name) == ("radon_pooled", "radon_unpooled")
    assert RadonVaryingIntercept.registered_name == "radon_varying_intercept"
    assert RadonVaryingInterceptSlope.registered_name == "radon_varying_intercept_slope"
    assert Radon().hparams == {"pooling": "varying_intercept", "centered": False, "num_counties": 85}
    assert RadonPooled(centered=True).hparams == {"centered": True, "num_counties": 85}


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"pooling": "partial"}, ValueError, r"pooling must be one of \('pooled', 'unpooled', "),
        ({"centered": 1}, TypeError, "centered must be a bool"),
        ({"num_counties": 0}, ValueError, "num_counties must be a positive int, got 0"),
        ({"num_counties": 8.5}, TypeError, "num_counties must be a positive int"),
        ({"num_counties": True}, TypeError, "num_counties must be a positive int"),
    ],
)
def test_bad_hparams(kw, exc, match):
    with pytest.raises(exc, match=match):
        Radon(**kw)


def test_county_index_validation():
    m = Radon(num_counties=85)
    good = {"county_idx": [0, 84], "floor_measure": [0.0, 1.0], "log_radon": [1.0, 0.5]}
    out = m.validate_data(good)
    assert out["county_idx"].dtype == torch.int64 and out["floor_measure"].dtype == torch.float32
    with pytest.raises(DataValidationError, match=r"county_idx: expected 0-based county indices in \[0, 85\) "
                       r"for num_counties=85, got \[85\] at row\(s\) \[1\]; for a data set with more "
                       r"counties use num_counties=86"):
        m.validate_data({**good, "county_idx": [0, 85]})
    with pytest.raises(DataValidationError, match=r"got \[-1\] at row\(s\) \[0\]"):
        m.validate_data({**good, "county_idx": [-1, 2]})
    # posteriordb/Stan indices are 1-based: the message says so.
    with pytest.raises(DataValidationError, match="looks 1-based, as in Stan/posteriordb: subtract 1"):
        m.validate_data({**good, "county_idx": [1, 85]})
    with pytest.raises(TypeError, match="county_idx: expected integer data"):
        m.validate_data({**good, "county_idx": [0.0, 1.0]})
    with pytest.raises(DataValidationError, match=r"floor_measure: expected shape \(N=2,\)"):
        m.validate_data({**good, "floor_measure": [0.0, 1.0, 0.0]})
    # Prediction inputs are checked too (observed field absent).
    with pytest.raises(DataValidationError, match="county_idx"):
        Radon(num_counties=5).validate_data({"county_idx": [7], "floor_measure": [0.0]}, require_observed=False)
    # Every pooling validates (pooled uses no county coefficient but keeps the contract).
    with pytest.raises(DataValidationError, match="county_idx"):
        RadonPooled(num_counties=3).validate_data({**good, "county_idx": [0, 3]})


@pytest.mark.parametrize("pooling,centered", VARIANTS, ids=VARIANT_IDS)
def test_example_data_and_sites(pooling, centered):
    model = Radon(pooling=pooling, centered=centered)
    ex = model.example_data(seed=3)
    d = model.validate_data(ex)
    assert d["county_idx"].shape == (60,) and int(d["county_idx"].max()) < 85
    # A real subset: every row is a row of the packaged data.
    full = load_radon()
    rows = {tuple(r) for r in torch.stack([full["county_idx"].float(), full["floor_measure"],
                                           full["log_radon"]], -1).tolist()}
    assert all(tuple(r) in rows for r in torch.stack([d["county_idx"].float(), d["floor_measure"],
                                                      d["log_radon"]], -1).tolist())
    assert torch.equal(model.example_data(seed=3)["log_radon"], ex["log_radon"])
    assert not torch.equal(model.example_data(seed=4)["log_radon"], ex["log_radon"])
    tr = poutine.trace(model).get_trace(**d)
    latent, determ = SITES[(pooling, centered)]
    assert _latent(tr) == latent and _deterministic(tr) == determ
    assert tr.nodes["log_radon"]["is_observed"] and tr.nodes["log_radon"]["value"].shape == (60,)
    # Fewer counties: the example keeps only valid indices.
    small = Radon(pooling=pooling, centered=centered, num_counties=10).example_data(seed=0)
    assert 0 < small["county_idx"].numel() <= 60 and int(small["county_idx"].max()) < 10


# --------------------------------------------------------------------------------------------
# log densities vs posteriordb's Stan programs (written out with scipy)


def _stan_log_density(pooling: str, v: dict, d: dict) -> float:
    """The posteriordb program's log density (with the HalfNormal normalising constants)."""
    idx, fl, y = d["county_idx"].numpy(), d["floor_measure"].numpy(), d["log_radon"].numpy()
    lp = stats.halfnorm.logpdf(v["sigma_y"])
    if pooling == "pooled":
        lp += stats.norm.logpdf([v["alpha"], v["beta"]], 0, 10).sum()
        mean = v["alpha"] + v["beta"] * fl
    elif pooling == "unpooled":
        lp += stats.norm.logpdf(v["alpha"], 0, 10).sum() + stats.norm.logpdf(v["beta"], 0, 10)
        mean = v["alpha"][idx] + v["beta"] * fl
    elif pooling == "varying_intercept":
        lp += (stats.halfnorm.logpdf(v["sigma_alpha"]) + stats.norm.logpdf([v["mu_alpha"], v["beta"]], 0, 10).sum()
               + stats.norm.logpdf(v["alpha"], v["mu_alpha"], v["sigma_alpha"]).sum())
        mean = v["alpha"][idx] + v["beta"] * fl
    else:
        lp += (stats.halfnorm.logpdf([v["sigma_alpha"], v["sigma_beta"]]).sum()
               + stats.norm.logpdf([v["mu_alpha"], v["mu_beta"]], 0, 10).sum()
               + stats.norm.logpdf(v["alpha"], v["mu_alpha"], v["sigma_alpha"]).sum()
               + stats.norm.logpdf(v["beta"], v["mu_beta"], v["sigma_beta"]).sum())
        mean = v["alpha"][idx] + v["beta"][idx] * fl
    return float(lp + stats.norm.logpdf(y, mean, v["sigma_y"]).sum())


def _point(pooling: str, J: int, seed: int) -> dict:
    g = np.random.default_rng(seed)
    v = {"sigma_y": 0.8 + 0.1 * g.random(), "sigma_alpha": 0.3 + 0.1 * g.random(),
         "sigma_beta": 0.2 + 0.1 * g.random(), "mu_alpha": 1.4 + 0.1 * g.normal(),
         "mu_beta": -0.6 + 0.1 * g.normal()}
    if pooling == "pooled":
        v.update(alpha=1.3 + 0.1 * g.normal(), beta=-0.6 + 0.1 * g.normal())
    elif pooling in ("unpooled", "varying_intercept"):
        v.update(alpha=1.3 + 0.4 * g.normal(size=J), beta=-0.6 + 0.1 * g.normal())
    else:
        v.update(alpha=1.3 + 0.4 * g.normal(size=J), beta=-0.6 + 0.3 * g.normal(size=J))
    return v


def _log_joint(model, values: dict, data: dict) -> float:
    cond = {k: torch.as_tensor(np.asarray(x), dtype=torch.float64) for k, x in values.items()}
    tr = poutine.trace(poutine.condition(model, data=cond)).get_trace(**data)
    return float(tr.log_prob_sum())


@pytest.mark.parametrize("pooling", POOLINGS)
def test_centered_log_density_is_posteriordb_program(pooling):
    d = load_radon(dtype=torch.float64)
    model = Radon(pooling=pooling, centered=True)
    for seed in (0, 1):
        v = _point(pooling, 85, seed)
        keep = set(SITES[(pooling, True)][0])
        got = _log_joint(model, {k: x for k, x in v.items() if k in keep}, d)
        assert got == pytest.approx(_stan_log_density(pooling, v, d), rel=1e-11)


@pytest.mark.parametrize("pooling", ["varying_intercept", "varying_intercept_slope"])
def test_noncentered_is_centered_after_change_of_variables(pooling):
    # alpha = mu_alpha + sigma_alpha * alpha_raw is an affine bijection with Jacobian
    # sigma_alpha^J (and sigma_beta^J for the slopes), so the two programs define the same
    # posterior iff  log p_nc(raw) = log p_c(alpha(raw)) + J log sigma_alpha (+ J log sigma_beta),
    # pointwise and exactly; the deterministic sites equal the mapped values.
    d = load_radon(dtype=torch.float64)
    J = 85
    centered, noncentered = Radon(pooling=pooling, centered=True), Radon(pooling=pooling, centered=False)
    for seed in (0, 1, 2):
        v = _point(pooling, J, seed)
        g = np.random.default_rng(10 + seed)
        raw = {"alpha_raw": g.normal(size=J)}
        if pooling == "varying_intercept_slope":
            raw["beta_raw"] = g.normal(size=J)
        hyper = {k: v[k] for k in SITES[(pooling, False)][0] if not k.endswith("_raw")}
        mapped = dict(hyper, alpha=v["mu_alpha"] + v["sigma_alpha"] * raw["alpha_raw"])
        jac = J * np.log(v["sigma_alpha"])
        if pooling == "varying_intercept_slope":
            mapped["beta"] = v["mu_beta"] + v["sigma_beta"] * raw["beta_raw"]
            jac += J * np.log(v["sigma_beta"])
        lp_nc = _log_joint(noncentered, {**hyper, **raw}, d)
        lp_c = _log_joint(centered, mapped, d)
        assert lp_nc == pytest.approx(lp_c + jac, rel=1e-11)
        tr = poutine.trace(poutine.condition(noncentered, data={
            k: torch.as_tensor(np.asarray(x)) for k, x in {**hyper, **raw}.items()})).get_trace(**d)
        np.testing.assert_allclose(tr.nodes["alpha"]["value"].numpy(), mapped["alpha"], rtol=1e-12)


@pytest.mark.parametrize("pooling", ["pooled", "unpooled"])
def test_centered_flag_is_a_no_op_without_county_distribution(pooling):
    d = load_radon(dtype=torch.float64)
    v = _point(pooling, 85, 0)
    keep = SITES[(pooling, True)][0]
    vals = {k: x for k, x in v.items() if k in keep}
    assert _log_joint(Radon(pooling=pooling, centered=True), vals, d) == \
        _log_joint(Radon(pooling=pooling, centered=False), vals, d)


# --------------------------------------------------------------------------------------------
# vectorisation over posterior draws and the fit / predict plumbing


@pytest.mark.parametrize("pooling,centered", VARIANTS, ids=VARIANT_IDS)
def test_draws_broadcast_as_leading_batch_dims(pooling, centered):
    model = Radon(pooling=pooling, centered=centered)
    d = model.validate_data(model.example_data(), require_observed=True)
    with pyro.plate("draws", 7, dim=-2):
        tr = poutine.trace(model).get_trace(**d)
    tr.compute_log_prob()
    assert tr.nodes["log_radon"]["log_prob"].shape == (7, 60)
    # Each draw's mean equals the unvectorised model's mean at that draw.
    plain = poutine.trace(model).get_trace(**d)
    shapes = {k: plain.nodes[k]["value"].shape for k in _latent(plain)}
    latent = {k: tr.nodes[k]["value"] for k in _latent(tr)}
    loc = tr.nodes["log_radon"]["fn"].loc
    for i in (0, 6):
        one = {k: x[i].reshape(shapes[k]) for k, x in latent.items()}
        tr_i = poutine.trace(poutine.condition(model, data=one)).get_trace(**d)
        torch.testing.assert_close(loc[i], tr_i.nodes["log_radon"]["fn"].loc.expand(60))


@pytest.mark.parametrize("pooling,centered", VARIANTS, ids=VARIANT_IDS)
def test_svi_fit_and_predict(pooling, centered):
    model = Radon(pooling=pooling, centered=centered)
    ex = model.example_data(seed=1)
    res = pyro_models.fit(model, ex, SVIConfig(num_steps=100, lr=0.05, num_posterior_samples=200),
                          guide="normal", seed=0, progress=False)
    assert np.isfinite(res.losses[-1])
    latent, determ = SITES[(pooling, centered)]
    assert list(res.latent_sites) == latent and list(res.deterministic_sites) == determ
    s = res.samples()
    if pooling != "pooled":
        assert s["alpha"].shape == (200, 85)
    pred = res.predict()  # replicates of the 60 training houses
    assert pred["log_radon"].shape == (200, 60)
    new = {"county_idx": [0, 40, 84], "floor_measure": [0.0, 1.0, 0.0]}
    assert res.predict(new)["log_radon"].shape == (200, 3)
    assert res.log_likelihood()["log_radon"].shape == (200, 60)
    with pytest.raises(DataValidationError, match="county_idx"):
        res.predict({"county_idx": [85], "floor_measure": [0.0]})


def test_mcmc_predict_new_houses_vectorised():
    model = Radon(pooling="varying_intercept_slope", centered=False)
    # A plumbing test: short chains, trees capped at depth 3 (the ~170 county coefficients are
    # mostly prior-dominated, so full NUTS trees would be long for no benefit here).
    cfg = MCMCConfig(num_chains=1, num_warmup=40, num_samples=40, max_tree_depth=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        res = pyro_models.fit(model, model.example_data(), cfg, seed=0, progress=False)
    assert res.samples()["alpha"].shape == (1, 40, 85)
    pred = res.predict({"county_idx": [3, 3, 70], "floor_measure": [0.0, 1.0, 1.0]})
    assert pred["log_radon"].shape == (40, 3)
    # The deterministic county coefficients recomputed under the vectorised predictive equal
    # the stored draws.
    again = res.predict({"county_idx": [3], "floor_measure": [1.0]}, return_sites=["alpha", "beta"])
    torch.testing.assert_close(again["alpha"], res.samples()["alpha"].reshape(40, 85))
    torch.testing.assert_close(again["beta"], res.samples()["beta"].reshape(40, 85))
    idata = res.to_inference_data()
    assert idata["posterior_predictive"]["log_radon"].shape == (1, 40, 60)


# --------------------------------------------------------------------------------------------
# exact posteriors


def _pooled_exact(d: dict) -> dict[str, tuple[float, float]]:
    """Posterior mean and sd of alpha, beta, sigma_y for the pooled model.

    Given sigma_y the model is Bayesian linear regression with a N(0, 10^2 I) prior, so
    (alpha, beta) | sigma_y, y is Gaussian with closed-form mean and covariance, and
    p(sigma_y | y) is known up to a constant (HalfNormal(1) prior times the Gaussian marginal
    likelihood). One-dimensional quadrature over sigma_y on a fine grid then gives the exact
    moments (grid error ~1e-9, far below the Monte Carlo error of 1e-3 sd being checked).
    """
    y = d["log_radon"].double().numpy()
    z = np.column_stack([np.ones_like(y), d["floor_measure"].double().numpy()])
    ztz, zty, yty, n = z.T @ z, z.T @ y, y @ y, len(y)
    s = np.linspace(0.4, 1.4, 20001)  # posterior sd of sigma_y is 0.018 around 0.79
    lam = np.eye(2) / 100.0 + ztz / s[:, None, None] ** 2
    cov = np.linalg.inv(lam)
    m = np.einsum("gij,j->gi", cov, zty) / s[:, None] ** 2
    logp = (-n * np.log(s) - 0.5 * yty / s**2 + 0.5 * np.einsum("gi,gij,gj->g", m, lam, m)
            - 0.5 * np.linalg.slogdet(lam)[1] - 0.5 * s**2)
    w = np.exp(logp - logp.max())
    assert w[0] < 1e-30 and w[-1] < 1e-30  # the grid covers the posterior
    w /= w.sum()

    def moments(mean, var):
        e = float((w * mean).sum())
        return e, float(np.sqrt((w * (var + mean**2)).sum() - e**2))

    return {"alpha": moments(m[:, 0], cov[:, 0, 0]), "beta": moments(m[:, 1], cov[:, 1, 1]),
            "sigma_y": moments(s, 0 * s), "sigma_y_sq": moments(s**2, 0 * s)}


def _check_against_exact(draws: np.ndarray, exact_mean: float, exact_sd: float, name: str) -> None:
    """Mean and sd of (chain, draw) NUTS output within Z Monte Carlo standard errors of exact.

    MCSEs come from ArviZ's ESS (mean: sd / sqrt(ESS); sd: its own MCSE estimate); an ESS
    floor keeps a badly mixing chain from passing on a wide error bar.
    """
    ess = float(az.ess(draws))
    assert ess > 400, f"{name}: ESS {ess:.0f} too low to test against the exact posterior"
    mcse_mean = float(az.mcse(draws))
    mcse_sd = float(az.mcse(draws, method="sd"))
    err_mean = abs(draws.mean() - exact_mean)
    err_sd = abs(draws.std(ddof=1) - exact_sd)
    assert err_mean < Z * mcse_mean, f"{name}: mean {draws.mean():.5f} vs exact {exact_mean:.5f} (MCSE {mcse_mean:.2g})"
    assert err_sd < Z * mcse_sd, f"{name}: sd {draws.std(ddof=1):.5f} vs exact {exact_sd:.5f} (MCSE {mcse_sd:.2g})"


def test_pooled_nuts_matches_exact_posterior():
    # The full pooled model (latent sigma_y, posteriordb priors) on all 919 houses. NUTS draws
    # 2 x 800 draws with ESS ~1200 per parameter, so MCSEs are ~0.03 posterior sd for means.
    d = load_radon(dtype=torch.float64)
    exact = _pooled_exact(d)
    cfg = MCMCConfig(num_chains=2, num_warmup=200, num_samples=800, jit_compile=True)
    res = pyro_models.fit("radon_pooled", d, cfg, seed=0, progress=False)
    s = res.samples()
    for k in ("alpha", "beta", "sigma_y"):
        _check_against_exact(s[k].numpy(), *exact[k], name=k)
    # Posterior predictive of a new basement house: mean E[alpha], variance
    # E[sigma_y^2] + Var(alpha). Each predictive draw adds independent noise of sd ~0.79,
    # which dominates the spread, so the MCSE is ~sd / sqrt(S) with S = 1600 draws.
    pred = res.predict({"county_idx": [0], "floor_measure": [0.0]})["log_radon"][:, 0].numpy()
    pred_sd = np.sqrt(exact["sigma_y_sq"][0] + exact["alpha"][1] ** 2)
    assert abs(pred.mean() - exact["alpha"][0]) < Z * pred_sd / np.sqrt(len(pred))
    assert abs(pred.std() / pred_sd - 1) < Z / np.sqrt(2 * len(pred))


def _varying_intercept_exact(d: dict, J: int) -> dict[str, tuple[float, float]]:
    """Exact posterior moments of the varying-intercept model by 2-D quadrature.

    Given (sigma_alpha, sigma_y), (mu_alpha, beta, eta = alpha - mu_alpha) is a linear-Gaussian
    model with prior N(0, diag(100, 100, sigma_alpha^2 I_J)), so its posterior is Gaussian and
    its marginal likelihood closed-form; the two scales are integrated on a grid.
    """
    y = d["log_radon"].double().numpy()
    n = len(y)
    w_mat = np.column_stack([np.ones(n), d["floor_measure"].double().numpy(), np.eye(J)[d["county_idx"].numpy()]])
    wtw, wty, yty = w_mat.T @ w_mat, w_mat.T @ y, y @ y
    sa, sy = np.meshgrid(np.linspace(1e-4, 2.5, 500), np.linspace(0.45, 1.0, 150), indexing="ij")
    sa, sy = sa.ravel(), sy.ravel()
    prior_prec = np.concatenate([np.full((len(sa), 2), 0.01), np.repeat(sa[:, None] ** -2, J, 1)], 1)
    lam = prior_prec[:, :, None] * np.eye(J + 2) + wtw / sy[:, None, None] ** 2
    cov = np.linalg.inv(lam)
    m = np.einsum("gij,j->gi", cov, wty) / sy[:, None] ** 2
    # log p(y | sa, sy) + log prior, up to a constant: b'm / 2 with b = W'y / sy^2, the
    # determinants of the posterior and prior precisions, and the HalfNormal(1) priors.
    logp = (-n * np.log(sy) - 0.5 * yty / sy**2 + 0.5 * (m * wty).sum(-1) / sy**2
            - 0.5 * np.linalg.slogdet(lam)[1] - J * np.log(sa) - 0.5 * sa**2 - 0.5 * sy**2)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    # The grid covers the posterior: the mass on its edges (< 1e-6) and the grid spacing (a
    # 4x finer grid agrees to 1e-5 sd) move the moments far less than the MCSEs (~3e-2 sd).
    grid = w.reshape(500, 150)
    assert max(grid[-1].sum(), grid[:, 0].sum(), grid[:, -1].sum()) < 1e-6

    def moments(mean, var):
        e = float((w * mean).sum())
        return e, float(np.sqrt((w * (var + mean**2)).sum() - e**2))

    out = {"mu_alpha": moments(m[:, 0], cov[:, 0, 0]), "beta": moments(m[:, 1], cov[:, 1, 1]),
           "sigma_alpha": moments(sa, 0 * sa), "sigma_y": moments(sy, 0 * sy)}
    for j in range(J):
        out[f"alpha[{j}]"] = moments(m[:, 0] + m[:, 2 + j],
                                     cov[:, 0, 0] + cov[:, 2 + j, 2 + j] + 2 * cov[:, 0, 2 + j])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("centered", [True, False], ids=["centered", "noncentered"])
def test_varying_intercept_nuts_matches_exact_posterior(centered):
    """Both parameterisations against the exact posterior, so against each other.

    Six data-rich counties (414 houses, 32-116 per county): sigma_alpha is then well away from
    zero and the centred form has no funnel to bias NUTS (with few houses per county it does:
    that is what the non-centred form is for).
    """
    counties = [69, 25, 18, 1, 79, 60]
    d = _subset(counties)
    exact = _varying_intercept_exact(d, len(counties))
    model = Radon(pooling="varying_intercept", centered=centered, num_counties=len(counties))
    cfg = MCMCConfig(num_chains=2, num_warmup=500, num_samples=1000, target_accept=0.9, jit_compile=True)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always", DivergenceWarning)
        res = pyro_models.fit(model, d, cfg, seed=1, progress=False)
    assert res.num_divergences <= 0.005 * 2000
    s = res.samples()
    for k in ("mu_alpha", "beta", "sigma_alpha", "sigma_y"):
        _check_against_exact(s[k].numpy(), *exact[k], name=k)
    for j in range(len(counties)):
        _check_against_exact(s["alpha"][..., j].numpy(), *exact[f"alpha[{j}]"], name=f"alpha[{j}]")
