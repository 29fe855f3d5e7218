"""Gaussian processes: exact posterior vs the textbook closed form, type-II ML, NUTS, sparse and
classification models, bad input.

Kernel formulas and GP algebra in this file are written out independently with NumPy; the
models' own code is never used to build a reference.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import scipy.optimize
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger
from scipy import stats

import pyro_models
from pyro_models import models
from pyro_models.errors import DataValidationError
from pyro_models.inference.predictive import predictive_draws
from pyro_models.init_strategies import get_init_strategy
from pyro_models.models import gp
from pyro_models.models.gp import GPClassifier, GPRegression, SparseGPRegression

F64 = torch.float64


@pytest.fixture(autouse=True)
def _seed():
    pyro.set_rng_seed(0)


# --------------------------------------------------------------------------------------------
# independent NumPy references


def np_component(name: str, x: np.ndarray, z: np.ndarray, p: dict) -> np.ndarray:
    """One kernel factor without its variance, written from the textbook formulas."""
    if name == "linear":
        return x @ z.T
    ls = np.broadcast_to(np.asarray(p["lengthscale"], dtype=float), (x.shape[1],))
    diff = x[:, None, :] - z[None, :, :]
    if name == "periodic":
        return np.exp(-2 * np.sum((np.sin(np.pi * diff / p["period"]) / ls) ** 2, -1))
    r = np.sqrt(np.sum((diff / ls) ** 2, -1))
    if name == "rbf":
        return np.exp(-0.5 * r**2)
    if name == "matern12":
        return np.exp(-r)
    if name == "matern32":
        return (1 + np.sqrt(3) * r) * np.exp(-np.sqrt(3) * r)
    if name == "matern52":
        return (1 + np.sqrt(5) * r + 5 * r**2 / 3) * np.exp(-np.sqrt(5) * r)
    raise AssertionError(name)


def np_kernel(spec: str, hp: dict, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Sum over '+' terms of (term variance) * product over '*' factors."""
    total = np.zeros((x.shape[0], z.shape[0]))
    i = 0
    for term in spec.split("+"):
        prod = hp[f"kernel.{i}.variance"] * np.ones_like(total)
        for name in term.split("*"):
            p = {k.split(".")[-1]: v for k, v in hp.items() if k.startswith(f"kernel.{i}.")}
            prod = prod * np_component(name, x, z, p)
            i += 1
        total += prod
    return total


def np_gp_posterior(spec, hp, x, y, xs):
    """K*^T (K + s2 I)^-1 y and K** - K*^T (K + s2 I)^-1 K* by plain linear solves."""
    a = np_kernel(spec, hp, x, x) + hp["noise"] * np.eye(len(x))
    ks = np_kernel(spec, hp, x, xs)
    mean = ks.T @ np.linalg.solve(a, y)
    cov = np_kernel(spec, hp, xs, xs) - ks.T @ np.linalg.solve(a, ks)
    return mean, cov


def np_log_marginal(spec, hp, x, y):
    a = np_kernel(spec, hp, x, x) + hp["noise"] * np.eye(len(x))
    return stats.multivariate_normal(np.zeros(len(x)), a).logpdf(y)


def _toy(n=12, d=2, seed=0):
    g = np.random.default_rng(seed)
    x = g.uniform(-2, 2, size=(n, d))
    y = np.sin(x).sum(-1) + 0.1 * g.normal(size=n)
    xs = g.uniform(-2.5, 2.5, size=(6, d))
    return x, y, xs


def _t(*arrays):
    # NumPy floats become the default dtype (float32) at the data boundary; keep float64.
    return tuple(torch.tensor(a, dtype=F64) for a in arrays)


# Hyperparameters per kernel string (components numbered in order of appearance).
KERNEL_CASES = {
    "rbf": {"kernel.0.variance": 1.3, "kernel.0.lengthscale": 0.8},
    "matern12": {"kernel.0.variance": 0.9, "kernel.0.lengthscale": 1.4},
    "matern32": {"kernel.0.variance": 1.1, "kernel.0.lengthscale": 0.7},
    "matern52": {"kernel.0.variance": 2.0, "kernel.0.lengthscale": 1.2},
    "periodic": {"kernel.0.variance": 0.8, "kernel.0.lengthscale": 0.9, "kernel.0.period": 1.7},
    "linear": {"kernel.0.variance": 0.6},
    "rbf+linear": {"kernel.0.variance": 1.3, "kernel.0.lengthscale": 0.8, "kernel.1.variance": 0.3},
    "rbf*periodic": {"kernel.0.variance": 1.5, "kernel.0.lengthscale": 1.6, "kernel.1.lengthscale": 0.7,
                     "kernel.1.period": 2.2},
    "matern32*linear+matern12": {"kernel.0.variance": 0.7, "kernel.0.lengthscale": 1.1,
                                 "kernel.2.variance": 0.4, "kernel.2.lengthscale": 0.5},
}


# --------------------------------------------------------------------------------------------
# registry and construction


def test_registered_models_and_defaults():
    names = sorted(n for n in models.available() if getattr(models.get(n), "__module__", None) == gp.__name__)
    assert names == ["gp_classifier", "gp_regression", "sparse_gp_regression"]
    for name in names:
        model = models.get(name)()
        json.dumps(model.hparams)  # saveable by name
        data = model.validate_data(model.example_data(seed=1))
        assert set(data) == {"x", "y"} and 20 <= data["x"].shape[0] <= 60


def test_site_names_and_shapes():
    model = GPRegression("rbf*periodic+linear", ard=True, mean="constant")
    x = torch.randn(7, 3, dtype=F64)
    tr = poutine.trace(model).get_trace(x=x, y=torch.randn(7, dtype=F64))
    latent = [n for n, s in tr.nodes.items() if s["type"] == "sample" and not s["is_observed"]]
    assert latent == ["kernel.0.variance", "kernel.0.lengthscale", "kernel.1.lengthscale", "kernel.1.period",
                      "kernel.2.variance", "noise", "mean"]
    assert tuple(model.hyperparameter_sites) == tuple(latent)
    assert tr.nodes["kernel.0.lengthscale"]["value"].shape == (3,)
    assert tr.nodes["kernel.1.period"]["value"].shape == ()
    assert isinstance(tr.nodes["y"]["fn"], dist.MultivariateNormal) and tr.nodes["y"]["fn"].event_shape == (7,)


def test_priors_flat_override_and_fixed():
    x = torch.randn(5, 1)
    flat = GPRegression("matern32", priors=None)
    # Flat priors cannot be sampled: trace with the package's improper-safe init strategy.
    tr = poutine.trace(InitMessenger(get_init_strategy("uniform"))(flat)).get_trace(x=x, y=torch.randn(5))
    for name in flat.hyperparameter_sites:
        assert isinstance(tr.nodes[name]["fn"], dist.ImproperUniform)
    priors = {"lengthscale": ["gamma", 2.0, 2.0], "kernel.1.period": ["lognormal", 0.5, 0.1], "noise": None}
    custom = GPRegression("rbf+periodic", priors=priors, fixed={"kernel.1.variance": 0.5})
    assert "kernel.1.variance" not in custom.hyperparameter_sites
    tr = poutine.trace(InitMessenger(get_init_strategy("uniform"))(custom)).get_trace(x=x, y=torch.randn(5))
    assert isinstance(tr.nodes["kernel.0.lengthscale"]["fn"], dist.Gamma)
    assert isinstance(tr.nodes["kernel.1.lengthscale"]["fn"], dist.Gamma)
    assert float(tr.nodes["kernel.1.period"]["fn"].scale) == pytest.approx(0.1)
    assert isinstance(tr.nodes["noise"]["fn"], dist.ImproperUniform)
    assert isinstance(tr.nodes["kernel.0.variance"]["fn"], dist.LogNormal)  # default kept


# --------------------------------------------------------------------------------------------
# exactness of the GP posterior


@pytest.mark.parametrize("spec", list(KERNEL_CASES))
def test_exact_posterior_matches_closed_form(spec):
    x, y, xs = _toy()
    hp = dict(KERNEL_CASES[spec], noise=0.05)
    mean_ref, cov_ref = np_gp_posterior(spec, hp, x, y, xs)
    model = GPRegression(spec)
    mean, cov = model.predictive_moments(*_t(x, y, xs), hp)
    assert mean.dtype == F64 and cov.shape == (6, 6)
    # Both sides are float64 linear algebra on matrices with condition number < 1e4.
    np.testing.assert_allclose(mean.numpy(), mean_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(cov.numpy(), cov_ref, rtol=1e-8, atol=1e-10)
    _, var = model.predictive_moments(*_t(x, y, xs), hp, full_cov=False)
    np.testing.assert_allclose(var.numpy(), np.clip(np.diag(cov_ref), 0, None), rtol=1e-8, atol=1e-10)
    post = model.posterior(*_t(x, y, xs), hp)
    np.testing.assert_allclose(post.loc.numpy(), mean_ref, rtol=1e-9, atol=1e-10)
    # posterior() adds relative jitter (1e-6 x mean diagonal, grown tenfold) only when the
    # covariance does not factorise: the linear kernel's is rank 2 (D = 2) at 6 points.
    tol = 1e-2 * np.mean(np.diag(cov_ref)) if spec == "linear" else 1e-8
    np.testing.assert_allclose(post.covariance_matrix.numpy(), cov_ref, atol=tol)
    noisy = model.posterior(*_t(x, y, xs), hp, include_noise=True)
    np.testing.assert_allclose(noisy.covariance_matrix.numpy(), cov_ref + 0.05 * np.eye(6), atol=tol)
    lml = model.log_marginal_likelihood(*_t(x, y), hp)
    assert float(lml) == pytest.approx(np_log_marginal(spec, hp, x, y), rel=1e-10)


def test_exact_posterior_ard_and_constant_mean():
    x, y, xs = _toy(d=3)
    hp = {"kernel.0.variance": 1.2, "kernel.0.lengthscale": [0.5, 1.5, 3.0], "noise": 0.1, "mean": 0.4}
    model = GPRegression("matern52", ard=True, mean="constant")
    mean, cov = model.predictive_moments(*_t(x, y, xs), hp)
    ref_mean, ref_cov = np_gp_posterior("matern52", hp, x, y - 0.4, xs)
    np.testing.assert_allclose(mean.numpy(), ref_mean + 0.4, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(cov.numpy(), ref_cov, rtol=1e-8, atol=1e-10)


def test_exact_posterior_broadcasts_over_hyperparameter_draws():
    x, y, xs = _toy()
    spec = "rbf*periodic"
    draws = [dict(KERNEL_CASES[spec], noise=s) for s in (0.02, 0.05, 0.3)]
    draws[1]["kernel.0.lengthscale"] = 0.4
    batch = {k: torch.tensor([d[k] for d in draws], dtype=F64) for k in draws[0]}
    mean, cov = GPRegression(spec).predictive_moments(*_t(x, y, xs), batch)
    assert mean.shape == (3, 6) and cov.shape == (3, 6, 6)
    for i, d in enumerate(draws):
        m_ref, c_ref = np_gp_posterior(spec, d, x, y, xs)
        np.testing.assert_allclose(mean[i].numpy(), m_ref, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(cov[i].numpy(), c_ref, rtol=1e-8, atol=1e-10)


def test_model_trace_records_the_closed_form():
    """Prediction mode of the model itself: conditioned hyperparameters -> f_loc, f_var, y."""
    x, y, xs = _toy()
    hp = dict(KERNEL_CASES["matern32"], noise=0.05)
    model = GPRegression("matern32")
    inputs = model.prediction_inputs({"x": torch.tensor(x), "y": torch.tensor(y)}, {"x": torch.tensor(xs)})
    cond = {k: torch.tensor(v, dtype=F64) for k, v in hp.items()}
    tr = poutine.trace(poutine.condition(model, cond)).get_trace(**inputs)
    m_ref, c_ref = np_gp_posterior("matern32", hp, x, y, xs)
    np.testing.assert_allclose(tr.nodes["f_loc"]["value"].numpy(), m_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(tr.nodes["f_var"]["value"].numpy(), np.diag(c_ref), rtol=1e-8, atol=1e-10)
    fn = tr.nodes["y"]["fn"]
    np.testing.assert_allclose(fn.variance.numpy(), np.diag(c_ref) + 0.05, rtol=1e-8)


def test_kernels_agree_with_pyro_contrib_gp():
    """Same conventions as pyro.contrib.gp.kernels (Matern scaling, periodic's factor 2, ...)."""
    from pyro.contrib.gp import kernels as K

    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(5, 2, generator=g, dtype=F64), torch.randn(4, 2, generator=g, dtype=F64)
    ls, var, per = torch.tensor([0.7, 1.3], dtype=F64), torch.tensor(1.7, dtype=F64), torch.tensor(1.9, dtype=F64)
    pairs = {
        "rbf": K.RBF(2, var, ls), "matern12": K.Exponential(2, var, ls), "matern32": K.Matern32(2, var, ls),
        "matern52": K.Matern52(2, var, ls), "periodic": K.Periodic(2, var, ls, per), "linear": K.Linear(2, var),
    }
    for name, ref in pairs.items():
        hp = {"kernel.0.variance": var, "kernel.0.lengthscale": ls, "kernel.0.period": per}
        ours = gp.kernel_matrix(gp.parse_kernel(name), hp, x, z)
        torch.testing.assert_close(ours, ref(x, z).detach(), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# type-II maximum likelihood and NUTS


def test_type2_ml_with_delta_guide_matches_direct_optimisation():
    g = np.random.default_rng(3)
    x = np.sort(g.uniform(-3, 3, size=(25, 1)), axis=0)
    y = np.sin(1.5 * x[:, 0]) + 0.2 * g.normal(size=25)

    def neg_lml(log_p):
        ls, var, noise = np.exp(log_p)
        return -np_log_marginal("rbf", {"kernel.0.variance": var, "kernel.0.lengthscale": ls, "noise": noise}, x, y)

    ref = scipy.optimize.minimize(neg_lml, np.zeros(3), method="L-BFGS-B", options={"ftol": 1e-14, "gtol": 1e-10})
    assert ref.success
    ls_ref, var_ref, noise_ref = np.exp(ref.x)
    data = {"x": torch.tensor(x), "y": torch.tensor(y)}
    cfg = pyro_models.SVIConfig(num_steps=600, lr=0.1, lr_schedule="exponential", lr_final_factor=0.01,
                                num_posterior_samples=1)
    res = pyro_models.fit(GPRegression("rbf", priors=None), data, cfg, guide="delta", seed=0, progress=False)
    est = {k: float(v[0]) for k, v in res.samples().items()}
    # Adam on a deterministic loss: converged to optimiser precision, far below these tolerances;
    # the LML is flat near its optimum, so parameters get 1% and the LML 1e-4 nats.
    assert est["kernel.0.lengthscale"] == pytest.approx(ls_ref, rel=1e-2)
    assert est["kernel.0.variance"] == pytest.approx(var_ref, rel=1e-2)
    assert est["noise"] == pytest.approx(noise_ref, rel=1e-2)
    assert -res.losses[-1] == pytest.approx(-ref.fun, abs=1e-4)


def test_nuts_gp_regression_predicts_and_its_likelihood_is_the_mvn_density():
    model = GPRegression("rbf")
    data = model.example_data(seed=2)
    data = {"x": data["x"][:20].double(), "y": data["y"][:20].double()}
    cfg = pyro_models.MCMCConfig(num_chains=1, num_warmup=150, num_samples=100)
    res = pyro_models.fit(model, data, cfg, seed=1, progress=False)
    assert res.num_divergences == 0
    draws = {k: v[0] for k, v in res.samples().items()}  # (100,) per hyperparameter
    x, y = data["x"].numpy(), data["y"].numpy()
    # Pointwise log-likelihood is the joint MVN marginal likelihood of each draw.
    ll = res.log_likelihood()["y"]
    assert ll.shape == (100,)
    for i in (0, 37, 99):
        hp = {k: float(v[i]) for k, v in draws.items()}
        assert float(ll[i]) == pytest.approx(np_log_marginal("rbf", hp, x, y), rel=1e-9)
    # Predictions at new inputs, vectorised over the draws (a loop fallback would warn -> error).
    xs = torch.linspace(-2.5, 2.5, 9, dtype=F64)[:, None]
    pred = res.predict({"x": xs})
    assert pred["y"].shape == (100, 9)
    per_draw = predictive_draws(res.model, {k: v for k, v in draws.items()},
                                model.prediction_inputs(res.data, {"x": xs}), ["f_loc", "f_var"])
    mean, var = model.predictive_moments(data["x"], data["y"], xs, draws, full_cov=False)
    torch.testing.assert_close(per_draw["f_loc"], mean, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(per_draw["f_var"], var, rtol=1e-8, atol=1e-10)
    # Summaries: law of total variance over draws and over f | draw.
    torch.testing.assert_close(pred.mean, mean.mean(0))
    torch.testing.assert_close(pred.epistemic_var, var.mean(0) + mean.var(0, unbiased=False))
    torch.testing.assert_close(pred.aleatoric_var, draws["noise"].mean().expand(9))
    torch.testing.assert_close(pred.total_var, pred.epistemic_var + pred.aleatoric_var)
    # Replicates of the training data: shapes, and f summarised at the training inputs.
    rep = res.predict()
    assert rep["y"].shape == (100, 20) and rep.mean.shape == (20,)
    assert res.to_inference_data() is not None


def test_delta_fit_save_load_roundtrip(tmp_path):
    model = GPRegression("matern52")
    data = model.example_data()
    res = pyro_models.fit(model, data, pyro_models.SVIConfig(num_steps=50, lr=0.05, num_posterior_samples=5),
                          guide="delta", seed=0, progress=False)
    xs = {"x": torch.linspace(-2, 2, 4)[:, None]}
    before = res.predict(xs)
    loaded = pyro_models.FitResult.load(res.save(tmp_path / "gp"))
    after = loaded.predict(xs)
    torch.testing.assert_close(after.mean, before.mean)
    torch.testing.assert_close(after.total_var, before.total_var)


@pytest.mark.parametrize("learn", [True, False])
def test_sparse_fit_save_load_keeps_the_inducing_points(tmp_path, learn):
    model = SparseGPRegression(num_inducing=6, learn_inducing=learn)
    data = model.example_data()
    res = pyro_models.fit(model, data, pyro_models.SVIConfig(num_steps=60, lr=0.05, num_posterior_samples=20),
                          seed=0, progress=False)
    assert learn == (not torch.allclose(model.inducing_points, gp._kmeans(data["x"], 6)))
    xs = {"x": torch.linspace(-2, 2, 4)[:, None]}
    before = res.predict(xs)
    loaded = pyro_models.FitResult.load(res.save(tmp_path / "sgp"))
    torch.testing.assert_close(loaded.model.inducing_points, model.inducing_points)
    torch.testing.assert_close(loaded.predict(xs).mean, before.mean)


# --------------------------------------------------------------------------------------------
# sparse GP


def _fixed_hp():
    return {"kernel.0.variance": 1.0, "kernel.0.lengthscale": 0.7, "noise": 0.04}


@pytest.mark.parametrize("whiten", [True, False])
def test_sparse_gp_with_training_inputs_as_inducing_points_is_the_exact_gp(whiten):
    """Z = X: p(f* | u) composed with the exact posterior of u is the exact GP posterior."""
    x, y, xs = _toy(n=10, d=1)
    hp = _fixed_hp()
    sparse = SparseGPRegression(inducing_points=x.tolist(), learn_inducing=False, whiten=whiten, fixed=hp,
                                jitter=1e-15)
    # Exact posterior of f(X) (independent NumPy), mapped to the model's u parametrisation.
    kxx = np_kernel("rbf", hp, x, x)
    mu, sigma = np_gp_posterior("rbf", hp, x, y, x)
    lzz = np.linalg.cholesky(kxx + 1e-15 * np.eye(10))
    u_mean = np.linalg.solve(lzz, mu) if whiten else mu
    u_cov = np.linalg.solve(lzz, np.linalg.solve(lzz, sigma).T) if whiten else sigma
    u_cov = (u_cov + u_cov.T) / 2
    # u* and u* + columns of a square root of Cov(u): f_loc is linear in u, so the
    # predictive covariance is exactly reconstructed from these M + 1 evaluations.
    w, v = np.linalg.eigh(u_cov)
    root = v * np.sqrt(np.clip(w, 0, None))
    us = torch.tensor(np.vstack([u_mean, u_mean + root.T]))
    out = predictive_draws(sparse, {"u": us}, {"x": torch.tensor(xs)}, ["f_loc", "f_var"])
    m_ref, c_ref = np_gp_posterior("rbf", hp, x, y, xs)
    # K_zz has condition number ~1e6 here, so float64 solves agree to ~1e-10.
    np.testing.assert_allclose(out["f_loc"][0].numpy(), m_ref, atol=1e-8)
    a = (out["f_loc"][1:] - out["f_loc"][0]).numpy()  # (M, M*): columns of A @ root
    total_var = (a**2).sum(0) + out["f_var"][0].numpy()
    np.testing.assert_allclose(total_var, np.diag(c_ref), atol=1e-8)


def test_sparse_svi_recovers_exact_gp_prediction():
    x, y, xs = _toy(n=15, d=1, seed=4)
    hp = _fixed_hp()
    sparse = SparseGPRegression(inducing_points=x.tolist(), learn_inducing=False, fixed=hp)
    # Eight vectorised ELBO particles per step (this also checks the model broadcasts over them).
    cfg = pyro_models.SVIConfig(num_steps=1000, lr=0.03, lr_schedule="exponential", num_particles=8,
                                vectorize_particles=True, num_posterior_samples=4000)
    res = pyro_models.fit(sparse, {"x": torch.tensor(x), "y": torch.tensor(y)}, cfg, guide="mvn", seed=0,
                          progress=False)
    pred = res.predict({"x": torch.tensor(xs)})
    m_ref, c_ref = np_gp_posterior("rbf", hp, x, y, xs)
    sd = np.sqrt(np.diag(c_ref))
    # The target is Gaussian, so the full-rank guide's optimum is exact. Monte Carlo error of
    # the mean over 4000 draws is sd / 63 ~ 0.016 sd; remaining SVI noise is of the same order.
    # 0.1 sd is ~6 standard errors.
    np.testing.assert_array_less(np.abs(pred.mean.numpy() - m_ref), 0.1 * sd)
    np.testing.assert_allclose(pred.epistemic_var.numpy(), np.diag(c_ref), rtol=0.15)
    np.testing.assert_allclose(pred.aleatoric_var.numpy(), 0.04, rtol=1e-6)


def test_sparse_gp_minibatch_training_on_20000_points():
    g = torch.Generator().manual_seed(0)
    n = 20_000
    x = torch.rand(n, 1, generator=g) * 6 - 3
    truth = lambda t: torch.sin(2 * t[:, 0]) + 0.3 * t[:, 0]  # noqa: E731
    y = truth(x) + 0.3 * torch.randn(n, generator=g)
    model = SparseGPRegression(num_inducing=24)
    cfg = pyro_models.SVIConfig(num_steps=600, lr=0.03, batch_size=500, num_posterior_samples=200)
    res = pyro_models.fit(model, {"x": x, "y": y}, cfg, guide="normal", seed=0, progress=False)
    assert res.fit_time < 60  # a few seconds on one core: each step touches 500 points
    z0 = gp._kmeans(x, 24)
    assert not torch.allclose(model.inducing_points.detach(), z0)  # Z was learned
    xs = torch.linspace(-2.8, 2.8, 100)[:, None]
    pred = res.predict({"x": xs})
    rmse = float((pred.mean - truth(xs)).pow(2).mean().sqrt())
    # 20 000 points with noise sd 0.3: the exact GP's error is ~0.02; allow 0.06.
    assert rmse < 0.06
    assert float(pred.aleatoric_var.mean()) == pytest.approx(0.09, rel=0.1)
    assert bool((pred.epistemic_var < 0.01).all())


@pytest.mark.parametrize("link", ["logit", "probit"])
def test_gp_classifier_accuracy_and_calibration(link):
    g = torch.Generator().manual_seed(1)
    truth = lambda t: 3 * torch.sin(2 * t[:, 0])  # noqa: E731
    x = torch.rand(300, 1, generator=g) * 4 - 2
    y = torch.bernoulli(torch.sigmoid(truth(x)), generator=g)
    model = GPClassifier(num_inducing=16, link=link)
    cfg = pyro_models.SVIConfig(num_steps=400, lr=0.05, num_posterior_samples=300)
    res = pyro_models.fit(model, {"x": x, "y": y}, cfg, guide="normal", seed=0, progress=False)
    xs = torch.linspace(-1.9, 1.9, 200)[:, None]
    pred = res.predict({"x": xs})
    p_true = torch.sigmoid(truth(xs))
    p_hat = pred.probs[:, 1]
    assert pred.probs.shape == (200, 2) and torch.allclose(pred.probs.sum(-1), torch.ones(200))
    # Bayes-optimal accuracy on this grid (expected, under the true probabilities) vs ours.
    bayes = float(torch.maximum(p_true, 1 - p_true).mean())
    ours = float(torch.where(p_hat > 0.5, p_true, 1 - p_true).mean())
    assert ours > bayes - 0.03
    # Calibration: predicted probabilities track the true ones (300 labels: sd of an
    # estimated probability ~0.05 locally).
    assert float((p_hat - p_true).abs().mean()) < 0.08
    assert bool((pred.mutual_info >= 0).all()) and bool((pred.entropy <= math.log(2) + 1e-6).all())
    torch.testing.assert_close(pred.entropy, pred.expected_entropy + pred.mutual_info)


def test_classifier_likelihood_integrates_the_link_over_f_given_u():
    """P(y=1 | u) = E[link^-1(f)], f ~ N(a, b), against adaptive quadrature (scipy)."""
    from scipy import integrate

    for link, inv in (("logit", lambda f: 1 / (1 + np.exp(-f))), ("probit", stats.norm.cdf)):
        for a in (-6.0, -1.0, 0.0, 0.7, 3.0):
            for b in (1e-6, 0.3, 2.0, 16.0):
                ref = integrate.quad(lambda f: inv(f) * stats.norm.pdf(f, a, math.sqrt(b)),
                                     a - 14 * math.sqrt(b), a + 14 * math.sqrt(b), points=[0.0], epsabs=1e-13)[0]
                got = torch.sigmoid(gp._bernoulli_logits(torch.tensor(a, dtype=F64), torch.tensor(b, dtype=F64), link))
                # probit: closed form; logit: 64-node Gauss-Hermite, < 1e-5 for b <= 16.
                assert float(got) == pytest.approx(ref, abs=1e-11 if link == "probit" else 1e-5), (link, a, b)


@pytest.mark.parametrize("name", ["gp_regression", "sparse_gp_regression", "gp_classifier"])
def test_svi_fit_predict_loglik_arviz(name):
    model = models.get(name)()
    data = model.example_data()
    cfg = pyro_models.SVIConfig(num_steps=30, lr=0.05, num_posterior_samples=40)
    res = pyro_models.fit(model, data, cfg, guide="normal", seed=0, progress=False)
    pred = res.predict({"x": torch.linspace(-2, 2, 5)[:, None]})
    assert pred["y"].shape == (40, 5)
    assert set(pred.summary) in ({"mean", "epistemic_var", "aleatoric_var", "total_var"},
                                 {"probs", "entropy", "expected_entropy", "mutual_info"})
    assert res.predict()["y"].shape == (40, data["x"].shape[0])
    ll = res.log_likelihood()["y"]
    assert bool(torch.isfinite(ll).all())
    res.to_inference_data()


# --------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("spec, match", [
    ("rbff", "unknown component 'rbff'"),
    ("rbf+", "an empty component"),
    ("rbf*(linear)", "unknown component"),
])
def test_bad_kernel_strings(spec, match):
    with pytest.raises(ValueError, match=match):
        GPRegression(spec)
    with pytest.raises(TypeError, match="kernel must be a string"):
        GPRegression(3)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"priors": {"lengthscale": ["student_t", 1.0]}}, ValueError, "unknown family"),
    ({"priors": {"lengthscale": ["lognormal", 0.0]}}, ValueError, r"takes arguments \['loc', 'scale'\]"),
    ({"priors": {"noise": ["half_normal", -1.0]}}, ValueError, "positive number"),
    ({"priors": {"noise": ["normal", 0.0, 1.0]}}, ValueError, "positive support"),
    ({"priors": {"period": ["lognormal", 0.0, 1.0]}, "kernel": "rbf", "mean": "linear"}, ValueError, "mean must be"),
    ({"priors": {"kernel.3.lengthscale": None}}, ValueError, "unknown key"),
    ({"priors": "weak"}, ValueError, "'default', None"),
    ({"fixed": {"lengthscale": 1.0}}, ValueError, "unknown site"),
    ({"fixed": {"noise": -0.1}}, ValueError, "positive"),
    ({"jitter": 0.0}, ValueError, "jitter"),
    ({"ard": "yes"}, TypeError, "ard"),
])
def test_bad_hyperparameter_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        GPRegression(**kwargs)


def test_bad_data_and_shapes():
    model = GPRegression()
    data = model.example_data()
    with pytest.raises(DataValidationError, match="N=30"):
        pyro_models.fit(model, {"x": data["x"], "y": data["y"][:-1]}, pyro_models.SVIConfig(num_steps=1))
    with pytest.raises(ValueError, match="plate"):  # the exact GP's likelihood does not factorise
        pyro_models.fit(model, data, pyro_models.SVIConfig(num_steps=1, batch_size=10), progress=False)
    res = pyro_models.fit(model, data, pyro_models.SVIConfig(num_steps=2, num_posterior_samples=3), progress=False)
    with pytest.raises(DataValidationError, match="D=1"):
        res.predict({"x": torch.zeros(4, 2)})
    hp = {"kernel.0.variance": 1.0, "kernel.0.lengthscale": 1.0}
    with pytest.raises(ValueError, match=r"missing \['noise'\]"):
        model.posterior(data["x"], data["y"], data["x"][:2], hp)
    with pytest.raises(ValueError, match=r"unknown \['period'\]"):
        model.posterior(data["x"], data["y"], data["x"][:2], dict(hp, noise=0.1, period=1.0))
    with pytest.raises(DataValidationError, match="x_new"):
        model.posterior(data["x"], data["y"], torch.zeros(3, 2), dict(hp, noise=0.1))
    with pytest.raises(DataValidationError, match="3 values but x has D=2"):
        GPRegression(ard=True, fixed={"kernel.0.lengthscale": [1.0, 2.0, 3.0]})(x=torch.zeros(4, 2))


def test_bad_sparse_and_classifier_input():
    with pytest.raises(ValueError, match="num_inducing"):
        SparseGPRegression(num_inducing=0)
    with pytest.raises(ValueError, match="inducing_points"):
        SparseGPRegression(inducing_points=[1.0, 2.0])
    model = SparseGPRegression(inducing_points=[[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(DataValidationError, match="D=2"):
        model(x=torch.zeros(3, 1))
    clf = GPClassifier()
    with pytest.raises(ValueError, match="link must be"):
        GPClassifier(link="cloglog")
    with pytest.raises(DataValidationError, match="binary"):
        clf.validate_data({"x": torch.zeros(3, 1), "y": [0.0, 0.5, 1.0]})
