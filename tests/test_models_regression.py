"""Linear and logistic regression: exact Gaussian posterior, densities, shapes, validation."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from scipy import stats

from pyro_models import models
from pyro_models.errors import DataValidationError
from pyro_models.models import regression
from pyro_models.models.regression import LinearRegression, LogisticRegression


@pytest.fixture(autouse=True)
def _seed():
    pyro.set_rng_seed(0)


def _data(n=30, d=3, seed=0, dtype=torch.float64):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, d))
    y = 0.5 + x @ np.linspace(-1, 1, d) + 0.3 * g.normal(size=n)
    return torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype)


EXAMPLES = {
    "linear_regression": ({"weight_scale": 2.0, "bias_scale": 5.0}, dict(zip(("x", "y"), _data(6, 2)))),
    "logistic_regression": (
        {"weight_scale": 1.5},
        {"x": _data(6, 2)[0], "y": torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64)},
    ),
}


def test_every_registered_name_has_an_example():
    names = [n for n in models.available()
             if getattr(models.get(n), "__module__", None) == regression.__name__]
    assert sorted(names) == sorted(EXAMPLES)


# --------------------------------------------------------------------------------------------
# exact posterior


def test_exact_joint_posterior_vs_precision_algebra():
    x, y = _data()
    s, ws, bs = 0.4, 1.5, 3.0
    post = LinearRegression(weight_scale=ws, bias_scale=bs, noise_scale=s).exact_joint_posterior(x, y)
    assert post.event_shape == (4,) and post.loc.dtype == torch.float64
    z = np.column_stack([np.ones(len(y)), x.numpy()])
    prior_cov = np.diag([bs**2] + [ws**2] * 3)
    precision = np.linalg.inv(prior_cov) + z.T @ z / s**2
    cov = post.covariance_matrix.numpy()
    np.testing.assert_allclose(cov @ precision, np.eye(4), atol=1e-10)
    # Mean from the "function-space" form, which never forms the posterior precision.
    mean_fs = prior_cov @ z.T @ np.linalg.solve(z @ prior_cov @ z.T + s**2 * np.eye(len(y)), y.numpy())
    np.testing.assert_allclose(post.loc.numpy(), mean_fs, rtol=1e-9, atol=1e-12)


def test_exact_marginals_match_joint():
    x, y = _data()
    model = LinearRegression(noise_scale=0.5)
    joint = model.exact_joint_posterior(x, y)
    marg = model.exact_posterior(x, y)
    assert marg["bias"].batch_shape == () and marg["weight"].event_shape == (3,)
    assert float(marg["bias"].mean) == pytest.approx(float(joint.loc[0]), rel=1e-12)
    assert float(marg["bias"].variance) == pytest.approx(float(joint.covariance_matrix[0, 0]), rel=1e-10)
    torch.testing.assert_close(marg["weight"].mean, joint.loc[1:])
    torch.testing.assert_close(marg["weight"].covariance_matrix, joint.covariance_matrix[1:, 1:])


def test_flat_prior_posterior_is_least_squares():
    x, y = _data()
    s = 0.3
    model = LinearRegression(weight_scale=None, bias_scale=None, noise_scale=s)
    post = model.exact_joint_posterior(x, y)
    z = np.column_stack([np.ones(len(y)), x.numpy()])
    beta_hat, *_ = np.linalg.lstsq(z, y.numpy(), rcond=None)
    np.testing.assert_allclose(post.loc.numpy(), beta_hat, rtol=1e-9)
    np.testing.assert_allclose(post.covariance_matrix.numpy(), s**2 * np.linalg.inv(z.T @ z), rtol=1e-9)


def test_exact_posterior_float32_ill_conditioned():
    # kidiq-like scales (covariate ~100): float64 internals keep the factorisation valid.
    g = np.random.default_rng(1)
    x = torch.tensor(100 + 15 * g.normal(size=(200, 1)), dtype=torch.float32)
    y = 26 + 0.6 * x[:, 0] + 18 * torch.tensor(g.normal(size=200), dtype=torch.float32)
    model = LinearRegression(weight_scale=None, bias_scale=None, noise_scale=18.0)
    post = model.exact_joint_posterior(x, y)
    assert post.loc.dtype == torch.float32 and bool(torch.isfinite(post.scale_tril).all())
    assert float(post.log_prob(post.loc)) > -50


def test_exact_posterior_errors():
    x, y = _data()
    with pytest.raises(ValueError, match="known noise.*latent 'sigma'"):
        LinearRegression().exact_posterior(x, y)
    x_dup = torch.cat([x, x[:, :1]], -1)  # collinear columns
    with pytest.raises(ValueError, match="improper.*full column rank"):
        LinearRegression(weight_scale=None, noise_scale=1.0).exact_joint_posterior(x_dup, y)
    # A proper prior makes the same design fine.
    LinearRegression(weight_scale=1.0, noise_scale=1.0).exact_joint_posterior(x_dup, y)


# --------------------------------------------------------------------------------------------
# log densities vs scipy


def _log_joint(model, values, **data) -> float:
    tr = poutine.trace(poutine.condition(model, data=values)).get_trace(**data)
    return float(tr.log_prob_sum())


_B, _W, _S = 0.3, np.array([0.5, -1.0, 0.2]), 0.7


def _values(with_sigma: bool) -> dict:
    v = {"bias": torch.tensor(_B, dtype=torch.float64), "weight": torch.tensor(_W)}
    if with_sigma:
        v["sigma"] = torch.tensor(_S, dtype=torch.float64)
    return v


@pytest.mark.parametrize(
    "hp",
    [
        {"noise_scale": _S},
        {"noise_prior": "half_normal", "noise_prior_scale": 2.0},
        {"noise_prior": "half_cauchy", "noise_prior_scale": 2.5, "weight_scale": 3.0, "bias_scale": 4.0},
        {"weight_scale": None, "bias_scale": None, "noise_scale": _S},
    ],
    ids=["known_noise", "half_normal", "half_cauchy", "flat_priors"],
)
def test_linear_regression_log_density(hp):
    x, y = _data(12, 3)
    model = LinearRegression(**hp)
    latent_sigma = hp.get("noise_scale") is None
    got = _log_joint(model, _values(latent_sigma), x=x, y=y)
    mean = _B + x.numpy() @ _W
    ref = stats.norm.logpdf(y.numpy(), mean, _S).sum()
    if hp.get("bias_scale", 10.0) is not None:
        ref += stats.norm.logpdf(_B, 0, hp.get("bias_scale", 10.0))
    if hp.get("weight_scale", 1.0) is not None:
        ref += stats.norm.logpdf(_W, 0, hp.get("weight_scale", 1.0)).sum()
    if latent_sigma:
        family = stats.halfnorm if hp["noise_prior"] == "half_normal" else stats.halfcauchy
        ref += family.logpdf(_S, scale=hp["noise_prior_scale"])
    assert got == pytest.approx(ref, rel=1e-10)
    tr = poutine.trace(poutine.condition(model, data=_values(latent_sigma))).get_trace(x=x, y=y)
    assert ("sigma" in tr.nodes) == latent_sigma


def test_kidiq_configuration_matches_stan_density():
    # posteriordb kidiq: sigma ~ cauchy(0, 2.5) (lower=0), flat beta, y ~ normal(beta1 + beta2 x, sigma).
    # Stan's target differs from ours by a constant, so compare differences between two points.
    g = np.random.default_rng(2)
    mom_iq = 100 + 15 * g.normal(size=40)
    kid = 26 + 0.6 * mom_iq + 18 * g.normal(size=40)
    x, y = torch.tensor(mom_iq[:, None]), torch.tensor(kid)
    model = LinearRegression(
        weight_scale=None, bias_scale=None, noise_prior="half_cauchy", noise_prior_scale=2.5
    )

    def stan(b1, b2, sigma):
        return stats.cauchy.logpdf(sigma, 0, 2.5) + stats.norm.logpdf(kid, b1 + b2 * mom_iq, sigma).sum()

    pts = [(26.0, 0.6, 18.0), (20.0, 0.7, 15.0), (30.0, 0.5, 25.0)]
    ours = [
        _log_joint(model, {"bias": torch.tensor(b1, dtype=torch.float64),
                           "weight": torch.tensor([b2], dtype=torch.float64),
                           "sigma": torch.tensor(s, dtype=torch.float64)}, x=x, y=y)
        for b1, b2, s in pts
    ]
    for i in (1, 2):
        assert ours[i] - ours[0] == pytest.approx(stan(*pts[i]) - stan(*pts[0]), rel=1e-10)


def test_logistic_regression_log_density():
    x, _ = _data(10, 3)
    y = torch.tensor([0, 1, 1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.float64)
    model = LogisticRegression(weight_scale=2.0, bias_scale=3.0)
    got = _log_joint(model, _values(False), x=x, y=y)
    p = 1 / (1 + np.exp(-(_B + x.numpy() @ _W)))
    ref = (stats.norm.logpdf(_B, 0, 3.0) + stats.norm.logpdf(_W, 0, 2.0).sum()
           + stats.bernoulli.logpmf(y.numpy(), p).sum())
    assert got == pytest.approx(ref, rel=1e-10)


# --------------------------------------------------------------------------------------------
# predictive and vectorisation


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_predictive_and_vectorised_shapes(name):
    hp, data = EXAMPLES[name]
    model = models.get(name)(**hp)
    n = data["x"].shape[0]
    y = model(x=data["x"])
    assert y.shape == (n,) and y.dtype == data["x"].dtype
    with pyro.plate("draws", 7, dim=-2):
        tr = poutine.trace(model).get_trace(x=data["x"])
        tr_obs = poutine.trace(model).get_trace(**data)
    assert tr.nodes["y"]["value"].shape == (7, n)
    assert tr.nodes["weight"]["value"].shape == (7, 1, 2)
    tr_obs.compute_log_prob()
    assert tr_obs.nodes["y"]["log_prob"].shape == (7, n)
    # Fixing the latents to the 7 draws reproduces each draw's linear predictor.
    latent = {k: s["value"] for k, s in tr_obs.nodes.items()
              if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)}
    with pyro.plate("draws", 7, dim=-2):
        cond = poutine.trace(poutine.condition(model, data=latent)).get_trace(x=data["x"])
    fn = cond.nodes["y"]["fn"]
    loc = fn.loc if name == "linear_regression" else fn.logits
    expect = latent["bias"] + (data["x"] * latent["weight"]).sum(-1)
    torch.testing.assert_close(loc, expect)
    for i in range(7):  # and equals the unvectorised predictor of draw i
        torch.testing.assert_close(loc[i], latent["bias"][i, 0] + data["x"] @ latent["weight"][i, 0])


def test_known_noise_has_no_sigma_site():
    x, y = _data(5, 2)
    tr = poutine.trace(LinearRegression(noise_scale=0.1)).get_trace(x=x, y=y)
    assert "sigma" not in tr.nodes and {"bias", "weight", "y"} <= set(tr.nodes)


# --------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"noise_prior": "gamma"}, r"noise_prior must be one of \('half_normal', 'half_cauchy'\)"),
        ({"weight_scale": -1.0}, "weight_scale must be a positive float or None"),
        ({"bias_scale": 0}, "bias_scale must be a positive float or None"),
        ({"noise_scale": float("inf")}, "noise_scale must be"),
        ({"noise_prior_scale": None}, "noise_prior_scale must be a positive float, got None"),
    ],
)
def test_linear_regression_bad_hparams(kw, match):
    with pytest.raises(ValueError, match=match):
        LinearRegression(**kw)


def test_logistic_regression_bad_hparams():
    with pytest.raises(ValueError, match="weight_scale must be a positive float"):
        LogisticRegression(weight_scale=None)


def test_data_validation():
    m = LinearRegression()
    with pytest.raises(ValueError, match="x: contains 1 NaN"):
        m.validate_data({"x": [[1.0], [float("nan")]], "y": [1.0, 2.0]})
    with pytest.raises(DataValidationError, match=r"y: expected shape \(N=2,\)"):
        m.validate_data({"x": [[1.0], [2.0]], "y": [[1.0], [2.0]]})
    with pytest.raises(DataValidationError, match="unknown data key"):
        m.validate_data({"x": [[1.0]], "y": [1.0], "z": [1.0]})
    with pytest.raises(DataValidationError, match="missing required data field 'x'"):
        m.validate_data({"y": [1.0]})
    lr = LogisticRegression()
    out = lr.validate_data({"x": [[1.0], [2.0]], "y": [0, 1]})
    assert out["y"].dtype == torch.get_default_dtype()
    with pytest.raises(DataValidationError, match="y: expected binary values 0 or 1"):
        lr.validate_data({"x": [[1.0], [2.0]], "y": [0.0, 0.5]})
    with pytest.raises(DataValidationError, match="y: values must be <= 1"):
        lr.validate_data({"x": [[1.0], [2.0]], "y": [0, 2]})
