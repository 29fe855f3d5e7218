"""Laplace guides: the full ``laplace`` and the last-layer ``last_layer_laplace`` for nets.

Both are checked against closed forms: on a linear-Gaussian model the log joint is quadratic,
so the Hessian at any point is the exact posterior precision; for a net with a Gaussian
likelihood the model is linear in its last layer, so the last-layer Hessian is the precision
of Bayesian linear regression on the MAP features.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_models
from pyro_models import SVIConfig, guides
from pyro_models.guides.laplace import LaplaceGuide


def _linear_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.5, -0.7], dtype=torch.float64) + 0.3 + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


def linreg(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=x.dtype), 2.0).to_event(1))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 2.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ w + b, 0.5), obs=y)


def test_laplace_is_exact_on_linear_gaussian():
    x, y = _linear_data()
    res = pyro_models.fit(linreg, {"x": x, "y": y}, SVIConfig(num_steps=3000, lr=0.05, psis_draws=0),
                          guide="laplace", seed=0, progress=False)
    # Closed form: precision = X'X / s^2 + I / 2^2 over (w1, w2, b); sites are laid out w then b.
    X = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    prec = X.T @ X / 0.25 + torch.eye(3, dtype=x.dtype) / 4.0
    cov = torch.linalg.inv(prec)
    mean = cov @ (X.T @ y / 0.25)
    # The quadratic log joint makes the Hessian exact anywhere: only float error remains.
    torch.testing.assert_close(res.guide.covariance(), cov, rtol=1e-8, atol=1e-12)
    # The mean is the MAP found by Adam: converged to well under 1% of a posterior sd.
    sd = cov.diagonal().sqrt()
    loc = torch.cat([res.guide.map_values()["w"], res.guide.map_values()["b"].reshape(1)])
    assert ((loc - mean).abs() / sd).max() < 0.01
    # Draws follow N(mean, cov): 4000 draws give sds within ~3.5 standard errors (se = sd/sqrt(2n)).
    s = res.samples(4000)
    draws = torch.cat([s["w"], s["b"][:, None]], 1)
    ratio = draws.std(0) / sd
    assert (ratio - 1).abs().max() < 3.5 / (2 * 4000) ** 0.5


def test_last_layer_laplace_equals_bayesian_linear_regression_on_map_features():
    model = pyro_models.models.get("bnn_regression")(in_features=1, hidden_sizes=[10], activation="tanh")
    data = model.example_data(seed=1)
    res = pyro_models.fit(model, data, SVIConfig(num_steps=2500, lr=0.02, psis_draws=0),
                          guide="last_layer_laplace", seed=0, progress=False)
    g = res.guide
    assert isinstance(g, LaplaceGuide) and not g.has_density
    assert model.last_layer_sites == ("net.2.weight", "net.2.bias")
    m = g.map_values()
    x = torch.as_tensor(data["x"], dtype=torch.float32)
    feats = torch.tanh(x @ m["net.0.weight"].T + m["net.0.bias"])              # (N, 10)
    phi = torch.cat([feats, torch.ones(len(x), 1)], 1).double()                  # (N, 11): weight, then bias
    sigma = m["sigma"].double()
    s_prior = model.priors["net.2.weight"][1]
    prec = phi.T @ phi / sigma**2 + torch.eye(11, dtype=torch.float64) / s_prior**2
    torch.testing.assert_close(g.covariance().double(), torch.linalg.inv(prec), rtol=2e-3, atol=1e-6)
    # Only the last layer varies between draws; the rest is the MAP net.
    s = res.samples(50)
    assert torch.equal(s["net.0.weight"][0], s["net.0.weight"][-1])
    assert s["net.2.weight"].std(0).min() > 0
    pred = res.predict({"x": x})
    assert pred.epistemic_var.min() > 0 and torch.isfinite(pred.mean).all()


def test_laplace_refuses_a_point_that_is_not_a_mode():
    def saddle():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        # log p = -x^2/2 - 5 (x^2 - 1)^2 has a local minimum at x = 0 (curvature +19).
        pyro.factor("double_well", -5.0 * (x**2 - 1.0) ** 2)

    with pytest.raises(ValueError, match="not positive definite .* has not reached a mode"):
        pyro_models.fit(saddle, {}, SVIConfig(num_steps=1, lr=1e-8, psis_draws=0), guide="laplace",
                        seed=0, progress=False)


def test_last_layer_laplace_needs_a_net():
    reason = guides.incompatibility("last_layer_laplace", "linear_regression")
    assert "last_layer_sites" in reason
    model = pyro_models.models.get("linear_regression")()
    with pytest.raises(ValueError, match="last_layer_laplace"):
        pyro_models.fit(model, model.example_data(), SVIConfig(num_steps=5), guide="last_layer_laplace",
                        progress=False)


def test_laplace_save_load_keeps_the_gaussian(tmp_path):
    model = pyro_models.models.get("bnn_classifier")(in_features=2, hidden_sizes=[6], out_features=3)
    data = model.example_data()
    res = pyro_models.fit(model, data, SVIConfig(num_steps=1500, lr=0.03, psis_draws=0),
                          guide="last_layer_laplace", seed=3, progress=False)
    res.save(tmp_path / "r")
    again = pyro_models.FitResult.load(tmp_path / "r")
    torch.testing.assert_close(again.guide.covariance(), res.guide.covariance())
    torch.testing.assert_close(again.predict(data).probs, res.predict(data).probs)


def test_unknown_sites_are_named():
    x, y = _linear_data()
    guide = LaplaceGuide(linreg, sites=["w", "nope"])
    with pytest.raises(ValueError, match=r"\['nope'\] are not latent sites"):
        guide.fit_laplace(x=x, y=y)
