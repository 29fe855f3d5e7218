"""VAE and CVAE with the amortised guide: exact bounds on a linear-Gaussian VAE, digits vs plain PyTorch.

Reference points:

- a linear-Gaussian VAE has a closed-form marginal ``log p(x)``, posterior and ELBO, so
  ``elbo`` and ``iwae_log_likelihood`` are checked against exact values;
- on scikit-learn's digits, the package VAE (``pyro_models.fit`` with the amortised guide)
  is compared with a plain PyTorch VAE of the same architecture, init scheme, optimizer, lr,
  batch size, number of steps and seed.
"""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pyro
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import pyro_models
from pyro_models import guides, models
from pyro_models.errors import DataValidationError
from pyro_models.models import vae as vae_module
from pyro_models.models.vae import CVAE, VAE

LATENT, HIDDEN, STEPS, BATCH, LR, SEED = 8, 128, 2000, 128, 1e-3, 0


@pytest.fixture(autouse=True)
def _seed():
    pyro.set_rng_seed(0)


def _inv_softplus(y: float) -> float:
    return math.log(math.expm1(y))


# --------------------------------------------------------------------------------------------
# registry and contract


def test_registered_names_and_defaults():
    assert {"vae", "cvae"} <= set(models.available())
    assert "amortized" in guides.available()
    assert guides.entry("amortized").options() == {"hidden_sizes": None}
    for name, cls in (("vae", VAE), ("cvae", CVAE)):
        model = models.get(name)()
        assert type(model) is cls and cls.registered_name == name
        json.dumps(model.hparams)  # save() records them
        data = model.example_data(seed=1)
        clean = model.validate_data(data)
        assert clean["x"].shape == (40, 64) and bool(((clean["x"] == 0) | (clean["x"] == 1)).all())


def test_guides_module_doctests():
    from pyro_models.guides import amortized

    result = doctest.testmod(amortized, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("name", ["vae", "cvae"])
@pytest.mark.parametrize("guide", ["amortized", "normal"])
def test_svi_fit_predict_log_likelihood_arviz(name, guide):
    model = models.get(name)(latent_dim=2, hidden_sizes=(16,))
    data = model.example_data()
    res = pyro_models.fit(model, data, pyro_models.SVIConfig(num_steps=30, num_posterior_samples=20),
                          guide=guide, seed=0, progress=False)
    assert res.samples()["z"].shape == (20, 40, 2)
    pred = res.predict()  # warnings are errors: no loop fallback
    assert pred["x"].shape == (20, 40, 64) and bool(((pred["x"] == 0) | (pred["x"] == 1)).all())
    assert res.log_likelihood()["x"].shape == (20, 40)
    idata = res.to_inference_data()
    assert idata.posterior["z"].shape[:2] == (1, 20)
    if name == "cvae":  # decode the training codes under other labels
        assert res.predict({"c": (data["c"] + 1) % 10})["x"].shape == (20, 40, 64)


@pytest.mark.parametrize("name", ["vae", "cvae"])
def test_mcmc_is_refused(name):
    # NUTS would hold the point-estimated decoder at its random initial weights.
    model = models.get(name)()
    assert model.supports_mcmc is False
    with pytest.raises(ValueError, match="SVIConfig"):
        pyro_models.fit(model, model.example_data(), pyro_models.MCMCConfig(num_warmup=5, num_samples=5),
                        seed=0, progress=False)


def test_amortized_guide_minibatches():
    model = VAE(in_features=64, latent_dim=2, hidden_sizes=(16,))
    x = model.example_data()["x"]
    res = pyro_models.fit(model, {"x": x}, pyro_models.SVIConfig(num_steps=10, batch_size=8),
                          guide=("amortized", {"hidden_sizes": (32,)}), seed=0, progress=False)
    assert res.guide.encoder.net[0].out_features == 32
    assert res.samples(5)["z"].shape == (5, 40, 2)  # draws of every training example's code
    with pytest.raises(ValueError, match="amortised guide"):
        pyro_models.fit(VAE(latent_dim=2), {"x": x}, pyro_models.SVIConfig(num_steps=2, batch_size=8),
                        guide="normal", seed=0, progress=False)


def test_decoder_is_trained():
    model = VAE(latent_dim=2, hidden_sizes=(16,))
    before = model.decoder.net[0].weight.detach().clone()
    pyro_models.fit(model, model.example_data(), pyro_models.SVIConfig(num_steps=5, batch_size=16),
                    guide="amortized", seed=0, progress=False)
    assert not torch.equal(before, model.decoder.net[0].weight)


# --------------------------------------------------------------------------------------------
# exact: a linear-Gaussian VAE
#
# x = W z + b + sigma * eps with z ~ N(0, I): log p(x) = log N(x; b, W W^T + sigma^2 I), the posterior
# is N(A (x - b), C) with C = (I + W^T W / sigma^2)^-1 and A = C W^T / sigma^2. With orthogonal
# columns of W the posterior covariance C is diagonal, so a linear encoder with a constant scale
# represents it exactly.


def _linear_gaussian(d=5, sigma=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = VAE(in_features=d, latent_dim=2, hidden_sizes=(), likelihood="gaussian").double()
    q, _ = torch.linalg.qr(torch.randn(d, 2, generator=g, dtype=torch.float64))
    w = q * torch.tensor([2.0, 0.7], dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    dec = model.decoder
    with torch.no_grad():
        dec.net[0].weight.copy_(w)
        dec.net[0].bias.copy_(b)
        dec.raw_scale.fill_(_inv_softplus(sigma - dec.min_scale))
    cov = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + w.T @ w / sigma**2)
    a = cov @ w.T / sigma**2
    marginal = torch.distributions.MultivariateNormal(b, w @ w.T + sigma**2 * torch.eye(d, dtype=torch.float64))
    x = marginal.sample((50,))
    return model, {"x": x}, marginal, a, b, cov


def _set_encoder(guide, a, b, scale):
    lin = guide.encoder.net[0]
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[:2].copy_(a)
        lin.bias[:2].copy_(-a @ b)
        lin.bias[2:].copy_(torch.tensor([_inv_softplus(float(s) - vae_module._MIN_ENCODER_SCALE) for s in scale],
                                        dtype=torch.float64))


def test_exact_posterior_encoder_gives_exact_log_likelihood():
    model, data, marginal, a, b, cov = _linear_gaussian()
    guide = guides.get("amortized")(model)
    assert guide.encoder.net[0].weight.dtype == torch.float64 and len(guide.encoder.net) == 1
    _set_encoder(guide, a, b, cov.diagonal().sqrt())
    # q(z | x) = p(z | x): every importance weight equals p(x), so both bounds are exact for
    # any number of draws (only float64 round-off remains).
    logp = marginal.log_prob(data["x"])
    torch.testing.assert_close(model.elbo(guide, data, num_particles=7), logp, rtol=0, atol=1e-9)
    torch.testing.assert_close(model.iwae_log_likelihood(guide, data, num_samples=7), logp, rtol=0, atol=1e-9)


def test_elbo_and_iwae_against_closed_form():
    model, data, marginal, a, b, cov = _linear_gaussian()
    guide = guides.get("amortized")(model)
    q_scale = 1.6 * cov.diagonal().sqrt()
    _set_encoder(guide, a, b, q_scale)
    with torch.no_grad():
        guide.encoder.net[0].bias[:2] += torch.tensor([0.4, -0.3], dtype=torch.float64)
    x = data["x"]
    logp = marginal.log_prob(x)
    post = torch.distributions.Normal((x - b) @ a.T, cov.diagonal().sqrt())
    q = torch.distributions.Normal((x - b) @ a.T + torch.tensor([0.4, -0.3], dtype=torch.float64), q_scale)
    exact_elbo = logp - torch.distributions.kl_divergence(q, post).sum(-1)

    k = 4000
    lw = model.log_importance_weights(guide, data, k)
    assert lw.shape == (k, 50)
    elbo = lw.mean(0)
    # standard error of the mean ELBO over the 50 examples from the spread of the log weights
    se = float(lw.var(0).sum().sqrt()) / (math.sqrt(k) * 50)
    assert abs(float(elbo.mean() - exact_elbo.mean())) < 4 * se
    assert float((logp - exact_elbo).mean()) > 0.3  # the perturbation is a real gap

    # IWAE: in expectation ELBO <= IWAE_K <= log p(x), increasing in K. Delta-method standard error of
    # log-mean-exp: sd of the normalised weights / sqrt(K).
    for kk in (10, 4000):
        lwk = model.log_importance_weights(guide, data, kk)
        iwae = torch.logsumexp(lwk, 0) - math.log(kk)
        w = torch.softmax(lwk, 0) * kk
        se_k = float((w.var(0) / kk).sum().sqrt()) / 50
        gap_k = float((logp - iwae).mean())
        assert -4 * se_k < gap_k < float((logp - exact_elbo).mean())
    assert gap_k < 4 * se_k + 0.01  # K = 4000: IWAE essentially at log p(x)
    iwae_api = model.iwae_log_likelihood(guide, data, num_samples=4000)
    assert abs(float((iwae_api - logp).mean())) < 4 * se_k + 0.01


# --------------------------------------------------------------------------------------------
# digits: package VAE vs a plain PyTorch VAE


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    c = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test, train = perm[:360], perm[360:]
    return {"train": {"x": x[train], "c": c[train]}, "test": {"x": x[test], "c": c[test]}}


def _fit_package(x, steps=STEPS, seed=SEED):
    model = VAE(in_features=64, latent_dim=LATENT, hidden_sizes=(HIDDEN,), likelihood="bernoulli")
    cfg = pyro_models.SVIConfig(num_steps=steps, batch_size=BATCH, lr=LR)  # Adam, Trace_ELBO (MC KL)
    res = pyro_models.fit(model, {"x": x}, cfg, guide="amortized", seed=seed, progress=False)
    return model, res


@pytest.fixture(scope="module")
def package_vae(digits):
    return _fit_package(digits["train"]["x"])


class PlainVAE(nn.Module):
    """The textbook PyTorch VAE: same layers (PyTorch's default Linear init), softplus scales."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * LATENT))
        self.dec = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 64))

    def encode(self, x):
        loc, raw = self.enc(x).split(LATENT, -1)
        return loc, F.softplus(raw) + vae_module._MIN_ENCODER_SCALE

    def terms(self, x, k):
        """Per-example reconstruction draws (k, N) and the analytic KL (N,)."""
        loc, scale = self.encode(x)
        z = loc + scale * torch.randn((k,) + loc.shape)
        rec = -F.binary_cross_entropy_with_logits(self.dec(z), x.expand(k, -1, -1), reduction="none").sum(-1)
        kl = (0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum(-1)
        return rec, kl


def _train_plain(x, steps=STEPS, seed=SEED):
    torch.manual_seed(seed)
    net = PlainVAE()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    n = len(x)
    per_epoch = math.ceil(n / BATCH)
    for step in range(steps):
        epoch, j = divmod(step, per_epoch)
        if j == 0:  # reshuffle every epoch; the last batch of an epoch is smaller, as in the engine
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        xb = x[perm[j * BATCH:(j + 1) * BATCH]]
        rec, kl = net.terms(xb, 1)
        loss = -(rec[0] - kl).mean()  # analytic KL: lower variance than the package's default MC KL
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def _check_within_2_percent(model, guide, net, test, record_property=None):
    k = 1000
    # Monte Carlo error: per-example sd of the log weights is ~3 nats, so the mean over 360 test
    # examples of 1000 draws each has a standard error of ~3 / sqrt(360 * 1000) ~ 0.005 nats, two
    # orders of magnitude below the 2% margin (~0.5 nats); it is computed and checked below.
    lw = model.log_importance_weights(guide, test, k)
    pkg = float(lw.mean())
    pkg_se = float(lw.var(0).sum().sqrt()) / (math.sqrt(k) * lw.shape[1])
    with torch.no_grad():
        rec, kl = net.terms(test["x"], k)
    plain = float((rec.mean(0) - kl).mean())
    plain_se = float(rec.var(0).sum().sqrt()) / (math.sqrt(k) * rec.shape[1])
    if record_property is not None:
        record_property("test_elbo_package", pkg)
        record_property("test_elbo_plain", plain)
    print(f"test ELBO nats/example: package {pkg:.3f} +- {pkg_se:.3f}, plain PyTorch {plain:.3f} +- {plain_se:.3f}")

    assert max(pkg_se, plain_se) < 0.02
    assert -35 < pkg < -20 and -35 < plain < -20  # a trained model, not a collapsed one
    assert plain - pkg <= 0.02 * abs(pkg)
    return plain, plain_se


def test_package_vae_within_2_percent_of_plain_pytorch(digits, package_vae, record_property):
    model, res = package_vae
    test = {"x": digits["test"]["x"]}
    net = _train_plain(digits["train"]["x"])
    plain, plain_se = _check_within_2_percent(model, res.guide, net, test, record_property)

    # The package's estimator (log p(x, z) - log q(z | x), MC KL) on the plain network's weights
    # agrees with the plain analytic-KL estimator within Monte Carlo error.
    k = 1000
    twin = VAE(in_features=64, latent_dim=LATENT, hidden_sizes=(HIDDEN,))
    twin.decoder.net.load_state_dict(net.dec.state_dict())
    guide = guides.get("amortized")(twin)
    guide.encoder.net.load_state_dict(net.enc.state_dict())
    lw_twin = twin.log_importance_weights(guide, test, k)
    twin_se = float(lw_twin.var(0).sum().sqrt()) / (math.sqrt(k) * lw_twin.shape[1])
    assert abs(float(lw_twin.mean()) - plain) < 4 * math.hypot(twin_se, plain_se)


@pytest.mark.slow
def test_package_vae_within_2_percent_of_plain_pytorch_long_run(digits, record_property):
    # Five times the default budget (near convergence): ~1-2 minutes on one core.
    model, res = _fit_package(digits["train"]["x"], steps=5 * STEPS, seed=1)
    net = _train_plain(digits["train"]["x"], steps=5 * STEPS, seed=1)
    _check_within_2_percent(model, res.guide, net, {"x": digits["test"]["x"]}, record_property)


def test_iwae_bounds_increase_with_k_on_trained_model(digits, package_vae):
    model, res = package_vae
    test = {"x": digits["test"]["x"]}
    elbo = model.elbo(res, test, num_particles=1000)  # a FitResult works in place of its guide
    iw10 = model.iwae_log_likelihood(res.guide, test, num_samples=10)
    iw1000 = model.iwae_log_likelihood(res.guide, test, num_samples=1000)
    assert elbo.shape == iw10.shape == iw1000.shape == (360,)
    # E[IWAE_K] increases with K. Paired per-example differences; each example's draws are
    # independent, so the mean difference has standard error sd / sqrt(360); require 3 SEs.
    for lo, hi in ((elbo, iw10), (iw10, iw1000)):
        d = hi - lo
        assert float(d.mean()) > 3 * float(d.std()) / math.sqrt(len(d))
    assert float((iw1000 - elbo).mean()) < 2.0  # a sensible encoder: a small gap


def test_reconstruct_and_generate(digits, package_vae):
    model, res = package_vae
    test = {"x": digits["test"]["x"]}
    rec = model.reconstruct(res.guide, test, num_samples=20)
    assert rec.shape == (360, 64) and bool(((rec >= 0) & (rec <= 1)).all())
    err = float(((rec - test["x"]) ** 2).mean())
    base = float(((digits["train"]["x"].mean(0) - test["x"]) ** 2).mean())
    assert err < 0.5 * base  # better than predicting the mean image
    draws = model.generate(50)
    assert draws.shape == (50, 64) and bool(((draws == 0) | (draws == 1)).all())
    assert model.generate(5, mean=True).shape == (5, 64)
    with pytest.raises(ValueError, match="predict\\(data\\) is not defined for a VAE"):
        res.predict({"x": test["x"]})


def test_gaussian_decoder_trains(digits):
    model = VAE(latent_dim=LATENT, hidden_sizes=(64,), likelihood="gaussian")
    cfg = pyro_models.SVIConfig(num_steps=400, batch_size=BATCH, lr=3e-3)
    res = pyro_models.fit(model, {"x": digits["train"]["x"]}, cfg, guide="amortized", seed=0, progress=False)
    n = len(digits["train"]["x"])
    assert np.mean(res.losses[-20:]) < 0.5 * res.losses[0] and np.mean(res.losses[-20:]) / n < 30
    test = {"x": digits["test"]["x"]}
    elbo = model.elbo(res.guide, test, num_particles=200)
    iwae = model.iwae_log_likelihood(res.guide, test, num_samples=200)
    assert bool(torch.isfinite(elbo).all()) and bool(torch.isfinite(iwae).all())
    d = iwae - elbo
    assert float(d.mean()) > 3 * float(d.std()) / math.sqrt(len(d))
    assert model.generate(3).shape == (3, 64)
    # Gaussian data may leave [0, 1]
    model.validate_data({"x": digits["test"]["x"] * 4 - 2})


def test_continuous_bernoulli_decoder_is_a_density_on_grey_levels(digits):
    model = VAE(latent_dim=2, hidden_sizes=(32,), likelihood="continuous_bernoulli")
    x = digits["train"]["x"][:200]
    res = pyro_models.fit(model, {"x": x}, pyro_models.SVIConfig(num_steps=50, batch_size=50, lr=1e-2),
                          guide="amortized", seed=0, progress=False)
    elbo = model.elbo(res.guide, {"x": digits["test"]["x"]}, num_particles=20)
    assert bool(torch.isfinite(elbo).all())
    # a normalised density on [0, 1]: the decoder integrates to one (trapezoid rule on a fine grid)
    d = model.decoder(torch.zeros(1, 2)).base_dist
    grid = torch.linspace(1e-4, 1 - 1e-4, 20001)[:, None]
    mass = torch.trapezoid(d.log_prob(grid).exp(), grid[:, 0], dim=0)
    torch.testing.assert_close(mass, torch.ones(64), atol=2e-3, rtol=0)


# --------------------------------------------------------------------------------------------
# CVAE


@pytest.fixture(scope="module")
def trained_cvae(digits):
    model = CVAE(in_features=64, num_classes=10, latent_dim=LATENT, hidden_sizes=(HIDDEN,))
    cfg = pyro_models.SVIConfig(num_steps=STEPS, batch_size=BATCH, lr=LR)
    res = pyro_models.fit(model, digits["train"], cfg, guide="amortized", seed=SEED, progress=False)
    return model, res


def test_cvae_right_label_beats_wrong_label(digits, trained_cvae, package_vae):
    model, res = trained_cvae
    test = digits["test"]
    right = model.elbo(res.guide, test, num_particles=500)
    wrong = model.elbo(res.guide, {"x": test["x"], "c": (test["c"] + 1) % 10}, num_particles=500)
    d = right - wrong
    assert float(d.mean()) > 3 * float(d.std()) / math.sqrt(len(d)) and float(d.mean()) > 5.0
    rec_right = model.reconstruct(res.guide, test, num_samples=20)
    rec_wrong = model.reconstruct(res.guide, {"x": test["x"], "c": (test["c"] + 1) % 10}, num_samples=20)
    assert ((rec_right - test["x"]) ** 2).mean() < ((rec_wrong - test["x"]) ** 2).mean()
    # log p(x | c) >= log p(x) - ... : knowing the label helps, the CVAE's ELBO beats the VAE's.
    vae, vres = package_vae
    dv = right - vae.elbo(vres.guide, {"x": test["x"]}, num_particles=500)
    assert float(dv.mean()) > 3 * float(dv.std()) / math.sqrt(len(dv))


def test_cvae_generates_each_class(digits, trained_cvae):
    model, _ = trained_cvae
    train = digits["train"]
    class_means = torch.stack([train["x"][train["c"] == k].mean(0) for k in range(10)])
    for k in range(10):
        draws = model.generate(300, c=k)
        assert draws.shape == (300, 64) and bool(((draws == 0) | (draws == 1)).all())
        # the average generated image is nearest to its own class's mean image
        probs = model.generate(300, c=k, mean=True).mean(0)
        assert int(torch.cdist(probs[None], class_means).argmin()) == k
    assert model.generate(3, c=[0, 1, 2]).shape == (3, 64)
    assert model(c=torch.tensor([3, 4])).shape == (2, 64)


# --------------------------------------------------------------------------------------------
# bad input


def test_bad_data():
    x = torch.rand(10, 64)
    with pytest.raises(DataValidationError, match=r"values in \[0, 1\]"):
        pyro_models.fit("vae", {"x": x * 16}, pyro_models.SVIConfig(num_steps=1), guide="amortized", progress=False)
    with pytest.raises(DataValidationError, match=r"expected shape \(N, 64\).*got \(10, 63\)"):
        pyro_models.fit("vae", {"x": x[:, :63]}, pyro_models.SVIConfig(num_steps=1), progress=False)
    with pytest.raises(DataValidationError, match=r"c: labels must be in \[0, 9\].*max 10"):
        pyro_models.fit("cvae", {"x": x, "c": torch.arange(10) + 1}, pyro_models.SVIConfig(num_steps=1), progress=False)
    with pytest.raises(DataValidationError, match="c: labels must be in"):
        CVAE().validate_data({"x": x, "c": -torch.ones(10, dtype=torch.long)})
    with pytest.raises(TypeError, match="integer"):
        CVAE().validate_data({"x": x, "c": torch.zeros(10)})
    with pytest.raises(DataValidationError, match="missing required data field 'c'"):
        CVAE().validate_data({"x": x})
    with pytest.raises(DataValidationError, match="c: labels must be in"):
        CVAE().generate(3, c=10)
    with pytest.raises(ValueError, match="generate"):
        VAE()(x=None)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="likelihood must be one of"):
        VAE(likelihood="poisson")
    with pytest.raises(ValueError, match="latent_dim must be an int >= 1"):
        VAE(latent_dim=0)
    with pytest.raises(ValueError, match="hidden_sizes must be a sequence"):
        VAE(hidden_sizes=128)
    with pytest.raises(ValueError, match="activation must be one of"):
        CVAE(activation="gelu!")
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        CVAE(num_classes=0)
    with pytest.raises(ValueError, match="min_scale must be a positive float"):
        VAE(likelihood="gaussian", min_scale=0.0)


def test_amortized_guide_needs_an_encoder():
    data = {"x": torch.randn(8, 2), "y": torch.randn(8)}
    with pytest.raises(ValueError, match="guide 'amortized' cannot be used with model 'linear_regression'.*make_encoder"):
        pyro_models.fit("linear_regression", data, pyro_models.SVIConfig(num_steps=1), guide="amortized",
                        progress=False)

    def plain_model(y=None):
        return pyro.sample("y", pyro.distributions.Normal(0.0, 1.0), obs=y)

    with pytest.raises(TypeError, match="plain_model"):
        guides.get("amortized")(plain_model)


def test_autoguide_cannot_evaluate_held_out_data():
    model = VAE(latent_dim=2, hidden_sizes=(8,))
    data = model.example_data()
    res = pyro_models.fit(model, data, pyro_models.SVIConfig(num_steps=3), guide="normal", seed=0, progress=False)
    assert model.elbo(res, data, num_particles=3).shape == (40,)  # its own training data works
    with pytest.raises(ValueError, match="use guide='amortized'"):
        model.elbo(res, {"x": data["x"][:10]}, num_particles=3)


def test_cvae_predict_needs_one_label_per_training_example():
    model = CVAE(latent_dim=2, hidden_sizes=(8,))
    data = model.example_data()
    res = pyro_models.fit(model, data, pyro_models.SVIConfig(num_steps=3), guide="amortized", seed=0, progress=False)
    with pytest.raises(ValueError, match="one label per training example \\(40\\)"):
        res.predict({"c": data["c"][:5]})
