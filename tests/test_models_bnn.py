"""Bayesian neural nets: exact posteriors, minibatch scaling, uncertainty, wrapping, priors, errors.

Exactness: a BNN of one ``nn.Linear`` with Gaussian priors and a known noise IS Bayesian linear
regression, whose posterior is Gaussian in closed form (computed here from the precision
``Z^T Z / sigma^2 + I / s^2`` over ``Z = [1, x]``, independently of the library).

NUTS tolerance: Monte Carlo error. Each coefficient's mean must lie within Z = 4 standard
errors (exact sd / sqrt(ESS), ESS = ArviZ bulk ESS) of the exact mean, and its sd ratio within
Z / sqrt(2 ESS) of 1 (the normal-theory standard error of an sd estimate).
"""

from __future__ import annotations

import json
import math
import time
import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.nn import PyroModule
from scipy import stats
from torch import nn

import pyro_models
from pyro_models import MCMCConfig, SVIConfig, models
from pyro_models.errors import DataValidationError
from pyro_models.inference.result import FitResult
from pyro_models.models.bnn import BNN, BNNClassifier, BNNRegression, bayesian_net, make_mlp

Z = 4.0


@pytest.fixture(autouse=True)
def _one_thread_and_seed():
    # Tiny tensors: one intra-op thread is faster, and steadier on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    yield
    torch.set_num_threads(threads)


def _linear_data(n=40, d=2, sigma=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.linspace(1.0, -0.5, d, dtype=torch.float64)
    y = 0.3 + x @ w + sigma * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


def _closed_form(x, y, prior_scale, sigma):
    """Posterior mean and covariance of [bias, weight_1..D] (float64)."""
    z = torch.cat([torch.ones(len(x), 1, dtype=torch.float64), x], 1)
    precision = z.T @ z / sigma**2 + torch.eye(z.shape[1], dtype=torch.float64) / prior_scale**2
    cov = torch.linalg.inv(precision)
    return cov @ z.T @ y / sigma**2, cov, precision


def _net_calls(bnn):
    """Count calls of the wrapped net's forward (once per vmap call, not once per draw)."""
    calls = []
    bnn.net.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


# --------------------------------------------------------------------------------------------
# 1. exactness: a Linear BNN is Bayesian linear regression


def test_nuts_matches_closed_form_and_predicts_exact_uncertainty():
    s, sigma = 1.0, 0.5
    x, y = _linear_data(sigma=sigma)
    mean, cov, _ = _closed_form(x, y, s, sigma)
    sd = cov.diagonal().sqrt()
    bnn = bayesian_net(nn.Linear(2, 1), prior="normal", prior_scale=s, likelihood="gaussian", noise_scale=sigma)
    assert bnn.latent_site_names == ("net.weight", "net.bias")
    res = pyro_models.fit(bnn, {"x": x, "y": y}, MCMCConfig(num_chains=2, num_warmup=100, num_samples=300),
                          seed=0, progress=False)
    draws = res.samples()
    theta = torch.cat([draws["net.bias"], draws["net.weight"].flatten(2)], -1).numpy()  # (2, 300, 3)
    for j in range(3):
        xj = theta[..., j]
        ess = float(az.ess(xj))
        assert ess > 200, f"coefficient {j}: ESS {ess:.0f} too low for a meaningful check"
        assert abs(xj.mean() - mean[j].item()) < Z * sd[j].item() / math.sqrt(ess), (j, xj.mean(), mean[j])
        assert abs(xj.std(ddof=1) / sd[j].item() - 1) < Z / math.sqrt(2 * ess), (j, xj.std(), sd[j])

    # Predictive at new inputs, vectorised over all 1000 draws (warnings are errors here, so the
    # loop fallback would fail): mean z @ m and epistemic variance z^T C z of the closed form.
    x_new = torch.tensor([[0.0, 0.0], [1.0, -1.0], [3.0, 3.0]], dtype=torch.float64)
    z_new = torch.cat([torch.ones(3, 1, dtype=torch.float64), x_new], 1)
    calls = _net_calls(bnn)
    pred = res.predict({"x": x_new})
    # One probe of x in validate_data, one prototype run, one vectorised run for all 600 draws.
    assert len(calls) == 3
    assert pred["y"].shape == (600, 3)
    exact_mean = z_new @ mean
    exact_var = ((z_new @ cov) * z_new).sum(-1)
    ess_min = min(float(az.ess(theta[..., j])) for j in range(3))
    torch.testing.assert_close(pred.aleatoric_var, torch.full((3,), sigma**2, dtype=torch.float64))
    assert torch.all((pred.mean - exact_mean).abs() < Z * exact_var.sqrt() / math.sqrt(ess_min))
    assert torch.all((pred.epistemic_var.sqrt() / exact_var.sqrt() - 1).abs() < Z / math.sqrt(2 * ess_min))
    torch.testing.assert_close(pred.total_var, pred.aleatoric_var + pred.epistemic_var)


def test_mvn_guide_matches_closed_form():
    """Known noise, Gaussian priors: the full-rank guide family contains the exact posterior."""
    s, sigma = 1.0, 0.5
    x, y = _linear_data(sigma=sigma)
    mean, cov, precision = _closed_form(x, y, s, sigma)
    sd = cov.diagonal().sqrt()
    bnn = bayesian_net(nn.Linear(2, 1), prior="normal", prior_scale=s, noise_scale=sigma)
    # No Monte Carlo draws are compared, so the error is optimisation noise only. Measured at
    # this budget over seeds 0-1: at most 0.03 sd on the mean, 0.03 on the correlation-scaled
    # covariance and on cov @ precision - I; tolerances are ~3x that.
    cfg = SVIConfig(num_steps=600, lr=0.05, lr_schedule="exponential", lr_final_factor=0.01, num_particles=32,
                    vectorize_particles=True)
    res = pyro_models.fit(bnn, {"x": x, "y": y}, cfg, guide=("mvn", {"init_scale": 0.05}), seed=0, progress=False)
    post = res.guide.get_posterior()
    # Map the guide's latent vector to [bias, weight_1, weight_2] through its own unpacking.
    pos = {site["name"]: v for site, v in res.guide._unpack_latent(torch.arange(3, dtype=torch.float64))}
    order = torch.cat([pos["net.bias"].reshape(-1), pos["net.weight"].reshape(-1)]).long()
    loc = post.loc.detach()[order]
    q_cov = post.covariance_matrix.detach()[order][:, order]
    assert torch.all((loc - mean).abs() < 0.1 * sd), (loc, mean)
    assert ((q_cov - cov) / (sd[:, None] * sd[None, :])).abs().max() < 0.1
    torch.testing.assert_close(q_cov @ precision, torch.eye(3, dtype=torch.float64), atol=0.1, rtol=0)
    pred = res.predict({"x": x[:5]}, num_samples=200)  # SVI result: vectorised, no warning
    assert pred.mean.shape == (5,) and pred["y"].shape == (200, 5)


# --------------------------------------------------------------------------------------------
# 2. minibatch scaling


def test_minibatch_elbo_is_scaled_and_unbiased():
    """Each minibatch loss is -log p(theta) - (N/B) sum_batch log p(y_i | theta).

    With a point-mass guide at theta = prior mean (all weights 0) and a negligible learning
    rate, theta stays put, so the losses of one epoch's N/B disjoint batches average exactly to
    the full-data loss. Without the N/B factor the average would be -log p(theta) - (B/N) sum.
    """
    n, b = 40, 10
    model = BNNRegression(in_features=2, hidden_sizes=(8,), noise_scale=0.7)
    data = model.example_data(seed=1)
    data = {"x": data["x"][:n].double(), "y": data["y"][:n].double()}
    guide = ("delta", {"init_loc": "mean"})
    res = pyro_models.fit(model, data, SVIConfig(num_steps=n // b, lr=1e-12, batch_size=b), guide=guide,
                          seed=0, progress=False)
    zeros = {name: torch.zeros(p.shape, dtype=torch.float64) for name, p in
             ((s, model.net.get_parameter(s[4:])) for s in model.latent_site_names)}
    tr = poutine.trace(poutine.condition(model, zeros)).get_trace(**data)
    tr.compute_log_prob()
    log_prior = sum(tr.nodes[s]["log_prob_sum"] for s in zeros).item()
    log_lik = stats.norm.logpdf(data["y"].numpy(), 0.0, 0.7)  # all-zero weights: loc = 0
    full = -(log_prior + log_lik.sum())
    assert len(res.losses) == n // b
    assert np.mean(res.losses) == pytest.approx(full, rel=1e-9)
    unscaled = -(log_prior + log_lik.sum() * b / n)
    assert abs(np.mean(res.losses) - unscaled) > 1.0
    # The batches really differ (each one's loss is its own N/B-scaled sum, not the full loss).
    assert np.std(res.losses) > 1e-3


def test_minibatch_svi_reaches_full_batch_posterior_mean():
    """SVI with minibatches fits the same linear-regression posterior mean as the closed form."""
    s, sigma = 1.0, 0.5
    x, y = _linear_data(n=200, sigma=sigma, seed=2)
    mean, cov, _ = _closed_form(x, y, s, sigma)
    bnn = bayesian_net(nn.Linear(2, 1), prior_scale=s, noise_scale=sigma)
    cfg = SVIConfig(num_steps=500, lr=0.05, lr_schedule="exponential", lr_final_factor=0.01, batch_size=50)
    res = pyro_models.fit(bnn, {"x": x, "y": y}, cfg, guide="normal", seed=0, progress=False)
    median = res.guide.median()
    loc = torch.cat([median["net.bias"].detach().reshape(-1), median["net.weight"].detach().reshape(-1)])
    # Minibatch gradient noise is the only error left: measured 0.10-0.15 posterior sd (seeds 0-2).
    assert torch.all((loc - mean).abs() < 0.5 * cov.diagonal().sqrt()), (loc, mean)


# --------------------------------------------------------------------------------------------
# 3. heteroscedastic regression


def _hetero_data(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.rand(n, 1, generator=g) - 1.5
    noise_sd = 0.05 + 0.4 * x[:, 0].abs()
    y = torch.sin(2 * x[:, 0]) + noise_sd * torch.randn(n, generator=g)
    return x, y, noise_sd


def test_heteroscedastic_aleatoric_tracks_noise_and_epistemic_grows_off_data():
    x, y, noise_sd = _hetero_data()
    cfg = SVIConfig(num_steps=500, lr=0.05, lr_schedule="exponential", lr_final_factor=0.1,
                    num_posterior_samples=200)
    preds = {}
    for het in (True, False):
        model = BNNRegression(hidden_sizes=(16,), activation="tanh", heteroscedastic=het)
        assert model.likelihood == ("heteroscedastic" if het else "gaussian")
        assert ("sigma" in model.latent_site_names) is not het
        res = pyro_models.fit(model, {"x": x, "y": y}, cfg, guide=("normal", {"init_scale": 0.01}), seed=0,
                              progress=False)
        preds[het] = res.predict({"x": x})
        if het:
            far = res.predict({"x": torch.tensor([[-6.0], [6.0]])})
            near = res.predict({"x": torch.tensor([[0.0]])})
    true_var = noise_sd**2

    def log_ratio_error(p):
        return (p.aleatoric_var.log() - true_var.log()).pow(2).mean().item()

    # Measured over data seeds 0-2 (fit seed 0): mean squared log-ratio 0.5-1.1 heteroscedastic vs
    # 2.2-2.5 homoscedastic; correlation with the true variance 0.95-0.99; far/near epistemic 10-11.
    het_err, hom_err = log_ratio_error(preds[True]), log_ratio_error(preds[False])
    assert het_err < 0.6 * hom_err, (het_err, hom_err)
    corr = np.corrcoef(preds[True].aleatoric_var.numpy(), true_var.numpy())[0, 1]
    assert corr > 0.85, corr
    # The homoscedastic model has one noise level per draw: its aleatoric variance is flat.
    assert preds[False].aleatoric_var.std() < 1e-6 * preds[False].aleatoric_var.mean() + 1e-7
    assert far.epistemic_var.min() > 4 * near.epistemic_var.max(), (far.epistemic_var, near.epistemic_var)
    torch.testing.assert_close(far.total_var, far.aleatoric_var + far.epistemic_var)


# --------------------------------------------------------------------------------------------
# 4. classification


@pytest.mark.parametrize("classes", [1, 3], ids=["bernoulli", "categorical"])
def test_classifier_fits_and_decomposes_entropy(classes):
    model = BNNClassifier(hidden_sizes=(8,), out_features=classes)
    assert model.likelihood == ("bernoulli" if classes == 1 else "categorical")
    data = model.example_data(seed=3)
    res = pyro_models.fit(model, data, SVIConfig(num_steps=300, lr=0.03, num_posterior_samples=300), seed=0,
                          progress=False)
    pred = res.predict({"x": data["x"]})
    c = max(classes, 2)
    n = data["x"].shape[0]
    assert pred["y"].shape == (300, n)
    assert pred.probs.shape == (n, c)
    for key in ("entropy", "expected_entropy", "mutual_info"):
        assert pred.summary[key].shape == (n,)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(n), atol=1e-6, rtol=0)
    torch.testing.assert_close(pred.entropy, pred.expected_entropy + pred.mutual_info, atol=1e-6, rtol=0)
    assert bool((pred.mutual_info >= 0).all())
    assert float(pred.entropy.max()) <= math.log(c) + 1e-6
    labels = torch.as_tensor(data["y"]).long()
    accuracy = (pred.probs.argmax(-1) == labels).double().mean().item()
    assert accuracy >= 0.95, accuracy  # separable blobs: measured 1.0 for fit seeds 0-2
    if classes == 1:  # column 1 is P(y = 1): the mean of the Bernoulli draws
        assert bool(((pred["y"].mean(0) - pred.probs[:, 1]).abs() < 0.15).all())


def test_prediction_with_little_work_per_draw_is_one_net_call_per_chunk():
    """Few points per draw: predict() runs the net under vmap, once per chunk of draws."""
    model = BNNRegression(hidden_sizes=(50,))
    res = pyro_models.fit(model, model.example_data(), SVIConfig(num_steps=20, num_posterior_samples=500), seed=0,
                          progress=False)
    x_new = torch.linspace(-3, 3, 200).unsqueeze(-1)  # 200 x 151 multiply-adds per draw: below LOOP_MIN_MACS
    counts = {}
    for num_samples in (5, 500):
        calls = _net_calls(model)
        pred = res.predict({"x": x_new}, num_samples=num_samples)
        counts[num_samples] = len(calls)
        model.net._forward_pre_hooks.clear()
        assert pred["y"].shape == (num_samples, 200) and pred.mean.shape == (200,)
    # Guide draws and predict's prototype runs, plus one vectorised run per chunk of draws
    # (pyro_models.inference.predictive.auto_chunk bounds memory): far fewer than one per draw.
    assert counts[5] <= 6 and counts[500] <= counts[5] + 4, counts


def _loc_both_ways(res, x_new, monkeypatch):
    """``loc`` draws from predict() with the per-draw loop and with vmap forced."""
    from pyro_models.models import per_draw

    looped = res.predict({"x": x_new}, return_sites=["loc"])["loc"]
    monkeypatch.setattr(per_draw, "LOOP_MIN_MACS", 2**62)
    vmapped = res.predict({"x": x_new}, return_sites=["loc"])["loc"]
    monkeypatch.undo()
    return looped, vmapped


def test_prediction_with_much_work_per_draw_loops_over_draws_in_few_chunks(monkeypatch):
    """Many points per draw: one plain forward pass per draw (activations stay in cache), in
    one or two Pyro model runs, with the same predictive means as the vmapped path."""
    model = BNNRegression(hidden_sizes=(50,))
    res = pyro_models.fit(model, model.example_data(), SVIConfig(num_steps=20, num_posterior_samples=500), seed=0,
                          progress=False)
    x_new = torch.linspace(-3, 3, 2000).unsqueeze(-1)  # 2000 x 151 multiply-adds per draw
    assert model.prediction_chunk_elements({"x": x_new}) is not None
    assert model.prediction_chunk_elements({"x": x_new[:200]}) is None
    res.samples()  # the guide's draws (and their deterministic sites) come first, uncounted
    model_runs = []
    handle = model.register_forward_pre_hook(lambda *_: model_runs.append(1))
    calls = _net_calls(model)
    pred = res.predict({"x": x_new})
    handle.remove()
    assert pred["y"].shape == (500, 2000)
    # The probe in validate_data, the prototype run and one call per draw; the model runs
    # twice: the prototype and one chunk of all 500 draws (32x the default chunk budget).
    assert len(calls) == 502 and len(model_runs) == 2, (len(calls), len(model_runs))
    model.net._forward_pre_hooks.clear()
    looped, vmapped = _loc_both_ways(res, x_new, monkeypatch)
    torch.testing.assert_close(looped, vmapped, rtol=1e-5, atol=1e-5)


class _TiedNet(nn.Module):
    """A tied weight (one tensor in two modules), a buffer (batch norm in eval) and a Bayesian
    parameter registered through a parametrization-free submodule path."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 16)
        self.norm = nn.BatchNorm1d(16)
        self.mid = nn.Linear(16, 16)
        self.mid2 = nn.Linear(16, 16)
        self.mid2.weight = self.mid.weight
        self.out = nn.Linear(16, 1)

    def forward(self, x):
        h = torch.tanh(self.norm(self.inp(x)))
        return self.out(torch.tanh(self.mid2(torch.tanh(self.mid(h)))))


def test_per_draw_loop_handles_tied_weights_buffers_and_float64(monkeypatch):
    net = _TiedNet()
    with torch.no_grad():
        net.norm.running_mean.uniform_(-1, 1)
        net.norm.running_var.uniform_(0.5, 2)
    net.eval()
    bnn = bayesian_net(net, deterministic=["norm"])
    assert "net.mid2.weight" not in bnn.latent_site_names  # tied: one site
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    y = torch.randn(64, generator=g, dtype=torch.float64)
    res = pyro_models.fit(bnn, {"x": x, "y": y}, SVIConfig(num_steps=20, num_posterior_samples=40), seed=0,
                          progress=False)
    x_new = torch.randn(3000, 4, generator=g, dtype=torch.float64)
    before = {n: (p, p.detach().clone()) for n, p in bnn.net.named_parameters()}
    looped, vmapped = _loc_both_ways(res, x_new, monkeypatch)
    assert looped.dtype == torch.float64 and looped.shape == (40, 3000)
    torch.testing.assert_close(looped, vmapped, rtol=1e-10, atol=1e-10)
    # The draws differ, so the loop really swapped each draw's parameters in.
    assert float(looped.std(0).mean()) > 1e-3
    # The wrapped net gets its own parameter tensors back, unchanged, after the loop.
    after = dict(bnn.net.named_parameters())
    assert after.keys() == before.keys()
    for n, (p, value) in before.items():
        assert after[n] is p and torch.equal(p, value), n
    assert bnn.net.mid2.weight is bnn.net.mid.weight


def test_per_draw_loop_is_never_used_with_autograd_or_under_a_transform():
    from pyro_models.models.per_draw import loop_pays as _loop_pays

    x = torch.zeros(10**6, 2)
    flat = {"w": torch.zeros(4, 3)}
    with torch.no_grad():
        assert _loop_pays(x, flat, 4)
        assert not _loop_pays(x, flat, 1)
        assert not _loop_pays(x.to("meta"), flat, 4)  # not a CPU tensor
        assert torch.func.vmap(lambda t: torch.tensor(float(_loop_pays(x, flat, 4))))(torch.zeros(2)).sum() == 0
    assert not _loop_pays(x, flat, 4)  # grad mode: training and NUTS keep the differentiable vmap


# --------------------------------------------------------------------------------------------
# 5. wrapping an arbitrary net


class _TwoBranch(nn.Module):
    """A conv branch and a linear skip branch over sequences x (N, 1, 8)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 2, kernel_size=3)
        self.head = nn.Linear(12, 1)
        self.skip = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).flatten(1)) + self.skip(x.flatten(1))


def test_wrap_custom_net_with_a_deterministic_layer():
    net = _TwoBranch()
    bnn = bayesian_net(net, input_shape=(1, 8), deterministic=["skip"], prior_scale=0.5)
    assert bnn.latent_site_names == ("net.conv.weight", "net.conv.bias", "net.head.weight", "net.head.bias", "sigma")
    assert bnn.net is not net and all(p.requires_grad for p in net.parameters())  # the caller's net is untouched
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 1, 8, generator=g)
    w = torch.linspace(-1, 1, 8)
    y = x[:, 0] @ w + 0.1 * torch.randn(60, generator=g)
    before = bnn.net.skip.weight.detach().clone()
    res = pyro_models.fit(bnn, {"x": x, "y": y}, SVIConfig(num_steps=250, lr=0.05, num_posterior_samples=100),
                          seed=0, progress=False)
    trace = poutine.trace(bnn).get_trace(x=x, y=y)
    sample_sites = {k for k, s in trace.nodes.items() if s["type"] == "sample"}
    assert not any(k.startswith("net.skip") for k in sample_sites)
    assert not any("skip" in name for name, _ in res.guide.named_parameters())
    assert not any(k.startswith("net.skip") for k in res.latent_sites)
    # SVI trained the deterministic layer towards the linear signal it alone can carry.
    after = bnn.net.skip.weight.detach()
    assert (after - before).abs().max() > 0.1
    assert torch.corrcoef(torch.stack([after[0], w]))[0, 1] > 0.9
    assert np.mean(res.losses[-50:]) < np.mean(res.losses[:50])
    res.samples()  # draw (and cache) the guide draws first, so only predict's own runs are counted
    calls = _net_calls(bnn)
    pred = res.predict({"x": x[:5]})  # probe of x + prototype + one vectorised run
    assert len(calls) == 3 and pred.mean.shape == (5,)
    with pytest.raises(DataValidationError, match=r"x: expected shape \(N, 1, 8\)"):
        bnn.validate_data({"x": torch.randn(5, 8), "y": torch.zeros(5)})


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_deterministic_layer_is_constant_under_nuts_and_float64_inputs(jit):
    """Under NUTS a deterministic layer is a constant; float64 data give a float64 model (cast).

    With ``jit_compile=True`` the traced potential bakes the layer in as a constant.
    """
    net = nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 1))
    bnn = bayesian_net(net, deterministic=["0"], noise_scale=0.3)
    before = bnn.net[0].weight.detach().clone()
    x = torch.linspace(-1, 1, 20, dtype=torch.float64).unsqueeze(-1)
    res = pyro_models.fit(bnn, {"x": x, "y": x[:, 0] ** 2},
                          MCMCConfig(num_chains=1, num_warmup=30, num_samples=30, max_tree_depth=4, jit_compile=jit),
                          seed=0, progress=False)
    assert res.latent_sites == ("net.2.weight", "net.2.bias")
    assert res.samples()["net.2.weight"].dtype == torch.float64
    assert torch.equal(bnn.net[0].weight.detach(), before)
    assert res.predict({"x": x[:3]}).mean.dtype == torch.float64


# --------------------------------------------------------------------------------------------
# 6. priors


def test_prior_families_and_log_density_against_scipy():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    bnn = bayesian_net(net, prior={"0.weight": "laplace", "0": {"name": "normal", "scale": 2.0},
                                   "2": {"name": "hierarchical", "scale": 0.5}},
                       prior_scale=1.5, noise_prior_scale=0.8)
    assert bnn.priors == {"net.0.weight": ("laplace", 1.5), "net.0.bias": ("normal", 2.0),
                          "net.2.weight": ("hierarchical", 0.5), "net.2.bias": ("hierarchical", 0.5)}
    assert bnn.latent_site_names == ("net.0.weight", "net.0.bias", "net.2.weight_scale", "net.2.weight",
                                     "net.2.bias_scale", "net.2.bias", "sigma")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 2, generator=g), torch.randn(6, generator=g)
    tr = poutine.trace(bnn).get_trace(x=x, y=y)
    base = {k: tr.nodes[k]["fn"] for k in bnn.latent_site_names}
    assert isinstance(base["net.0.weight"].base_dist, dist.Laplace)  # Independent(Laplace of the weight's shape)
    assert base["net.0.weight"].event_shape == (3, 2) and base["net.0.weight"].batch_shape == ()
    assert isinstance(base["net.2.weight_scale"], dist.HalfNormal)
    assert float(base["net.2.weight_scale"].scale) == pytest.approx(0.5)
    tau = tr.nodes["net.2.weight_scale"]["value"]
    torch.testing.assert_close(base["net.2.weight"].base_dist.scale, tau.expand(1, 3))
    assert isinstance(base["sigma"], dist.HalfNormal) and float(base["sigma"].scale) == pytest.approx(0.8)
    # The whole log joint against scipy.
    v = {k: tr.nodes[k]["value"].double().numpy() for k in bnn.latent_site_names}
    ref = (stats.laplace.logpdf(v["net.0.weight"], 0, 1.5).sum() + stats.norm.logpdf(v["net.0.bias"], 0, 2.0).sum()
           + stats.halfnorm.logpdf(v["net.2.weight_scale"], scale=0.5)
           + stats.norm.logpdf(v["net.2.weight"], 0, v["net.2.weight_scale"]).sum()
           + stats.halfnorm.logpdf(v["net.2.bias_scale"], scale=0.5)
           + stats.norm.logpdf(v["net.2.bias"], 0, v["net.2.bias_scale"]).sum()
           + stats.halfnorm.logpdf(v["sigma"], scale=0.8))
    h = np.maximum(x.double().numpy() @ v["net.0.weight"].T + v["net.0.bias"], 0)
    loc = (h @ v["net.2.weight"].T + v["net.2.bias"])[:, 0]
    ref += stats.norm.logpdf(y.double().numpy(), loc, v["sigma"]).sum()
    assert float(tr.log_prob_sum()) == pytest.approx(ref, rel=1e-5)


def test_uniform_prior_names_and_vectorised_hierarchical_shapes():
    for name, family in (("laplace", dist.Laplace), ("normal", dist.Normal)):
        bnn = bayesian_net(nn.Linear(2, 1), prior=name, prior_scale=0.3)
        tr = poutine.trace(bnn).get_trace(x=torch.randn(4, 2))
        fn = tr.nodes["net.weight"]["fn"].base_dist
        assert isinstance(fn, family) and fn.batch_shape == (1, 2)
        torch.testing.assert_close(fn.scale, torch.full((1, 2), 0.3))
    # Under an outer draw plate every latent, hierarchical scales included, gets (S, 1) batch dims.
    bnn = BNNClassifier(hidden_sizes=(4,), out_features=3, prior="hierarchical")
    with pyro.plate("draws", 5, dim=-2):
        tr = poutine.trace(bnn).get_trace(x=torch.randn(7, 2))
    assert tr.nodes["net.0.weight_scale"]["value"].shape == (5, 1)
    assert tr.nodes["net.0.weight"]["value"].shape == (5, 1, 4, 2)
    assert tr.nodes["probs"]["value"].shape == (5, 7, 3)
    assert tr.nodes["y"]["value"].shape == (5, 7)


# --------------------------------------------------------------------------------------------
# registry, save/load


@pytest.mark.parametrize("name", ["bnn_regression", "bnn_classifier"])
def test_registered_defaults_example_data_and_json_hparams(name):
    model = models.get(name)()
    assert isinstance(model, BNN) and type(model).registered_name == name
    model.validate_data(model.example_data(seed=0))
    hp = model.jsonable_hparams()
    assert hp is not None
    rebuilt = models.get(name)(**json.loads(json.dumps(hp)))  # tuples come back as lists
    assert rebuilt.latent_site_names == model.latent_site_names


def test_save_load_round_trip(tmp_path):
    model = BNNRegression(in_features=2, hidden_sizes=[8, 8], activation="tanh", prior={"0": "laplace"},
                          heteroscedastic=True)
    res = pyro_models.fit(model, model.example_data(), SVIConfig(num_steps=50, num_posterior_samples=40), seed=0,
                          progress=False)
    path = res.save(tmp_path / "bnn")
    loaded = FitResult.load(path)
    assert isinstance(loaded.model, BNNRegression) and loaded.model.hparams["prior"] == {"0": "laplace"}
    x_new = torch.randn(6, 2)
    a, b = res.predict({"x": x_new}), loaded.predict({"x": x_new})
    for key in ("mean", "epistemic_var", "aleatoric_var"):
        torch.testing.assert_close(a.summary[key], b.summary[key])


def test_make_mlp_and_classifier_example_data():
    mlp = make_mlp(3, (), 2)
    assert len(mlp) == 1 and isinstance(mlp[0], nn.Linear)
    data = BNNClassifier(in_features=4, out_features=1).example_data(seed=2)
    assert data["y"].dtype == torch.get_default_dtype() and set(data["y"].tolist()) == {0.0, 1.0}
    assert data["x"].shape == (40, 4)


# --------------------------------------------------------------------------------------------
# 7. bad input


def test_bad_data_errors():
    reg = BNNRegression(in_features=2, hidden_sizes=(4,))
    with pytest.raises(DataValidationError, match=r"x: expected shape \(N, 2\)"):
        reg.validate_data({"x": torch.randn(5), "y": torch.randn(5)})
    with pytest.raises(DataValidationError, match=r"dim 1 must be 2"):
        reg.validate_data({"x": torch.randn(5, 3), "y": torch.randn(5)})
    clf = BNNClassifier(hidden_sizes=(4,), out_features=3)
    with pytest.raises(TypeError, match="y: expected integer data"):
        clf.validate_data({"x": torch.randn(4, 2), "y": torch.tensor([0.0, 1.0, 2.0, 1.0])})
    with pytest.raises(DataValidationError, match="y: values must be <= 2"):
        clf.validate_data({"x": torch.randn(4, 2), "y": torch.tensor([0, 1, 3, 1])})
    with pytest.raises(DataValidationError, match="y: values must be >= 0"):
        clf.validate_data({"x": torch.randn(4, 2), "y": torch.tensor([0, -1, 2, 1])})
    binary = BNNClassifier(hidden_sizes=(4,), out_features=1)
    with pytest.raises(DataValidationError, match=r"y: expected binary labels \(Bernoulli likelihood\) 0 or 1"):
        binary.validate_data({"x": torch.randn(3, 2), "y": torch.tensor([0.0, 0.5, 1.0])})
    # Without input_shape the net itself is probed: labels beyond its logits, wrong widths.
    wrapped = bayesian_net(nn.Linear(2, 3), likelihood="categorical")
    with pytest.raises(DataValidationError, match=r"class labels must be in \[0, 3\).*got max 3"):
        wrapped.validate_data({"x": torch.randn(4, 2), "y": torch.tensor([0, 1, 3, 1])})
    with pytest.raises(DataValidationError, match=r"net cannot be applied to x of shape \(4, 5\)"):
        wrapped.validate_data({"x": torch.randn(4, 5), "y": torch.tensor([0, 1, 2, 1])})
    with pytest.raises(DataValidationError, match="x: contains 1 NaN"):
        reg.validate_data({"x": [[0.0, float("nan")]], "y": [1.0]})
    # fit() validates at the boundary, before any computation.
    with pytest.raises(TypeError, match="y: expected integer data"):
        pyro_models.fit(clf, {"x": torch.randn(4, 2), "y": torch.rand(4)}, SVIConfig(num_steps=1), progress=False)


def test_bad_construction_errors():
    with pytest.raises(ValueError, match=r"unknown prior 'cauchy'; choose one of \['normal', 'laplace', 'hierarchical'\]"):
        bayesian_net(nn.Linear(2, 1), prior="cauchy")
    with pytest.raises(ValueError, match=r"prior\['0'\]: unknown prior 'horseshoe'"):
        bayesian_net(nn.Sequential(nn.Linear(2, 1)), prior={"0": "horseshoe"})
    with pytest.raises(ValueError, match="prior key 'head' matches no Bayesian parameter"):
        bayesian_net(nn.Sequential(nn.Linear(2, 1)), prior={"head": "laplace"})
    with pytest.raises(ValueError, match="a prior spec mapping has keys 'name'"):
        bayesian_net(nn.Linear(2, 1), prior={"": {"family": "normal"}})
    with pytest.raises(ValueError, match="likelihood must be one of"):
        bayesian_net(nn.Linear(2, 1), likelihood="poisson")
    with pytest.raises(ValueError, match="prior_scale must be a positive finite float"):
        bayesian_net(nn.Linear(2, 1), prior_scale=0.0)
    with pytest.raises(ValueError, match="deterministic entry 'nope' matches no parameter"):
        bayesian_net(nn.Linear(2, 1), deterministic=["nope"])
    with pytest.raises(ValueError, match="at least one parameter must be Bayesian"):
        bayesian_net(nn.Linear(2, 1), deterministic=[""])
    with pytest.raises(ValueError, match="noise_scale applies to the homoscedastic 'gaussian' likelihood only"):
        bayesian_net(nn.Linear(2, 1), likelihood="bernoulli", noise_scale=1.0)
    with pytest.raises(TypeError, match="plain torch.nn.Module, not a PyroModule"):
        bayesian_net(PyroModule[nn.Linear](2, 1))
    with pytest.raises(ValueError, match="net has no parameters"):
        bayesian_net(nn.ReLU())
    with pytest.raises(ValueError, match=r"likelihood 'heteroscedastic' needs the net to output \(N, 2\)"):
        bayesian_net(nn.Linear(2, 1), likelihood="heteroscedastic", input_shape=(2,))
    with pytest.raises(ValueError, match=r"likelihood 'gaussian' needs the net to output \(N,\) or \(N, 1\).*\(N, 3\)"):
        bayesian_net(nn.Linear(2, 3)).validate_data({"x": torch.randn(4, 2), "y": torch.randn(4)})
    with pytest.raises(ValueError, match="out_features must be 1"):
        BNNRegression(out_features=2)
    with pytest.raises(ValueError, match="activation must be one of"):
        BNNRegression(activation="swish")
    with pytest.raises(ValueError, match="hidden_sizes entries must be a positive int"):
        BNNClassifier(hidden_sizes=(8, 0))
    with pytest.raises(TypeError, match="net must be a torch.nn.Module"):
        bayesian_net(lambda x: x)


# --------------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
def test_bnn_on_cuda_with_minibatches():
    model = BNNRegression(hidden_sizes=(16,), heteroscedastic=True)
    data = model.example_data()
    res = pyro_models.fit(model, data, SVIConfig(num_steps=50, batch_size=16, num_posterior_samples=30),
                          device="cuda", seed=0, progress=False)
    assert all(p.is_cuda for p in res.guide.parameters())
    pred = res.predict({"x": torch.randn(7, 1)})
    assert pred.mean.shape == (7,) and pred["y"].shape == (30, 7)
    clf = BNNClassifier(hidden_sizes=(8,), out_features=3)
    res = pyro_models.fit(clf, clf.example_data(), SVIConfig(num_steps=20, num_posterior_samples=10), device="cuda",
                          seed=0, progress=False)
    assert res.predict({"x": torch.randn(4, 2)}).probs.shape == (4, 3)


def test_hierarchical_prior_trains_with_autoguides():
    """Scale sites are named ``<param>_scale`` so autoguides can store them beside the weights."""
    model = BNNRegression(in_features=1, hidden_sizes=[4], prior="hierarchical")
    assert "net.0.weight_scale" in model.latent_site_names
    for guide in ("normal", "lowrank_mvn"):
        res = pyro_models.fit(model, model.example_data(), SVIConfig(num_steps=30, psis_draws=0), guide=guide,
                              seed=0, progress=False)
        assert res.samples()["net.0.weight_scale"].min() > 0
