"""Conjugate models: exact posteriors vs independent algebra, sequential updating, densities."""

from __future__ import annotations

import json
import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from scipy import integrate, stats

from pyro_models import models
from pyro_models.errors import DataValidationError
from pyro_models.models import conjugate
from pyro_models.models.conjugate import (
    BetaBinomialAB,
    DirichletMultinomial,
    GammaPoisson,
    NormalNormal,
    _Multinomial,
    prob_best,
)

Z = 4.0  # Monte Carlo tolerance in standard errors (two-sided false-alarm rate ~6e-5)


@pytest.fixture(autouse=True)
def _seed():
    pyro.set_rng_seed(0)


# One small data set per registered name of this module (a new registration must add one).
EXAMPLES = {
    "beta_binomial": ({"alpha": [1.0, 2.0, 1.0], "beta": 1.0},
                      {"trials": torch.tensor([10, 20, 0]), "successes": torch.tensor([3, 11, 0])}),
    "normal_normal": ({"prior_loc": 1.0, "prior_scale": 2.0, "noise_scale": 0.5},
                      {"y": torch.tensor([0.3, 1.2, -0.4, 0.9], dtype=torch.float64)}),
    "gamma_poisson": ({"concentration": 2.0, "rate": 0.5},
                      {"counts": torch.tensor([0, 4, 2, 7]),
                       "exposure": torch.tensor([0.5, 2.0, 1.0, 3.0])}),
    "dirichlet_multinomial": ({"concentration": [0.5, 1.0, 2.0]},
                              {"counts": torch.tensor([[1, 0, 4], [3, 3, 3], [0, 0, 0]])}),
}


def _module_names(module) -> list[str]:
    return [n for n in models.available()
            if getattr(models.get(n), "__module__", None) == module.__name__]


def test_every_registered_name_has_an_example():
    assert sorted(_module_names(conjugate)) == sorted(EXAMPLES)


def _check_posterior(post, points, unnormalised_log_post, rtol=1e-5, atol=1e-5):
    """``post`` is the normalised version of ``unnormalised_log_post``: equal log-density differences."""
    lp = [float(post.log_prob(torch.as_tensor(p, dtype=torch.get_default_dtype()))) for p in points]
    ref = [unnormalised_log_post(np.asarray(p, dtype=np.float64)) for p in points]
    for i in range(1, len(points)):
        assert lp[i] - lp[0] == pytest.approx(ref[i] - ref[0], rel=rtol, abs=atol)


# --------------------------------------------------------------------------------------------
# exact posteriors vs independent computations


def test_beta_binomial_exact_posterior():
    model = BetaBinomialAB(alpha=[1.0, 2.0, 1.0], beta=[1.0, 1.0, 3.0])
    trials, successes = [10, 20, 0], [3, 11, 0]
    post = model.exact_posterior(trials, successes)["p"]
    assert post.event_shape == (3,) and post.batch_shape == ()
    a = np.array([1.0 + 3, 2.0 + 11, 1.0 + 0])
    b = np.array([1.0 + 7, 1.0 + 9, 3.0 + 0])
    np.testing.assert_allclose(post.mean.numpy(), stats.beta.mean(a, b), rtol=1e-6)
    np.testing.assert_allclose(post.variance.numpy(), stats.beta.var(a, b), rtol=1e-5)

    def unnorm(p):
        prior = stats.beta.logpdf(p, [1.0, 2.0, 1.0], [1.0, 1.0, 3.0]).sum()
        return prior + stats.binom.logpmf(successes, trials, p).sum()

    _check_posterior(post, [[0.3, 0.5, 0.2], [0.1, 0.7, 0.05], [0.6, 0.4, 0.5]], unnorm)


def test_normal_normal_exact_posterior():
    model = NormalNormal(prior_loc=1.0, prior_scale=2.0, noise_scale=0.5)
    y = np.array([0.3, 1.2, -0.4, 0.9])
    post = model.exact_posterior(torch.tensor(y))["mu"]
    assert post.loc.dtype == torch.float64 and post.batch_shape == ()

    def unnorm(mu):
        return stats.norm.logpdf(mu, 1.0, 2.0) + stats.norm.logpdf(y, mu, 0.5).sum()

    _check_posterior(post, [0.0, 0.5, 1.7, -2.0], unnorm, rtol=1e-9)
    # Hand algebra: precision-weighted average.
    prec = 1 / 2.0**2 + len(y) / 0.5**2
    assert float(post.loc) == pytest.approx((1.0 / 4 + y.sum() / 0.25) / prec, rel=1e-12)
    assert float(post.scale) == pytest.approx(prec**-0.5, rel=1e-12)


@pytest.mark.parametrize("with_exposure", [False, True], ids=["unit_exposure", "exposure"])
def test_gamma_poisson_exact_posterior(with_exposure):
    model = GammaPoisson(concentration=2.0, rate=0.5)
    counts = np.array([0, 4, 2, 7])
    exposure = np.array([0.5, 2.0, 1.0, 3.0]) if with_exposure else np.ones(4)
    kw = {"exposure": torch.tensor(exposure)} if with_exposure else {}
    post = model.exact_posterior(torch.tensor(counts), **kw)["rate"]
    # Integer counts alone give the default dtype (float32); float64 exposure gives float64.
    assert post.rate.dtype == (torch.float64 if with_exposure else torch.get_default_dtype())
    rtol = 1e-12 if with_exposure else 1e-6
    ref = stats.gamma(2.0 + counts.sum(), scale=1 / (0.5 + exposure.sum()))
    assert float(post.mean) == pytest.approx(ref.mean(), rel=rtol)
    assert float(post.variance) == pytest.approx(ref.var(), rel=rtol)

    def unnorm(lam):
        prior = stats.gamma.logpdf(lam, 2.0, scale=2.0)
        return prior + stats.poisson.logpmf(counts, lam * exposure).sum()

    _check_posterior(post, [0.5, 1.0, 2.5, 4.0], unnorm, rtol=1e-6)


def test_dirichlet_multinomial_exact_posterior():
    model = DirichletMultinomial(concentration=[0.5, 1.0, 2.0])
    counts = np.array([[1, 0, 4], [3, 3, 3], [0, 0, 0]])
    post = model.exact_posterior(torch.tensor(counts))["probs"]
    np.testing.assert_allclose(
        post.mean.numpy(), stats.dirichlet.mean(np.array([0.5, 1.0, 2.0]) + counts.sum(0)), rtol=1e-6
    )

    def unnorm(p):
        lik = sum(stats.multinomial.logpmf(c, c.sum(), p) for c in counts)
        return stats.dirichlet.logpdf(p, [0.5, 1.0, 2.0]) + lik

    _check_posterior(post, [[0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [0.45, 0.45, 0.1]], unnorm)


# --------------------------------------------------------------------------------------------
# sequential updating == one update on all the data


def test_sequential_updating_beta_binomial():
    m = BetaBinomialAB(alpha=[1.0, 0.5], beta=2.0)
    t1, s1, t2, s2 = [10, 4], [3, 1], [25, 30], [12, 9]
    seq = m.updated(t1, s1).updated(t2, s2)
    batch = m.updated([10 + 25, 4 + 30], [3 + 12, 1 + 9])
    np.testing.assert_allclose(seq.hparams["alpha"], batch.hparams["alpha"])
    np.testing.assert_allclose(seq.hparams["beta"], batch.hparams["beta"])
    # The updated prior is the exact posterior.
    p0 = torch.tensor([0.3, 0.2])
    prior = poutine.trace(batch).get_trace(trials=torch.tensor([1, 1])).nodes["p"]["fn"]
    post = m.exact_posterior([35, 34], [15, 10])["p"]
    assert float(prior.log_prob(p0)) == pytest.approx(float(post.log_prob(p0)), rel=1e-6)
    json.dumps(seq.hparams)  # still serialisable


def test_sequential_updating_normal_normal():
    m = NormalNormal(prior_loc=-1.0, prior_scale=3.0, noise_scale=0.7)
    y = torch.tensor([0.5, 1.5, 2.0, -0.3, 0.8], dtype=torch.float64)
    seq = m.updated(y[:2]).updated(y[2:])
    batch = m.updated(y)
    for k in ("prior_loc", "prior_scale", "noise_scale"):
        assert seq.hparams[k] == pytest.approx(batch.hparams[k], rel=1e-12)


def test_sequential_updating_gamma_poisson():
    m = GammaPoisson(concentration=1.5, rate=0.2)
    c = torch.tensor([3, 0, 5, 2, 8])
    e = torch.tensor([1.0, 0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    seq = m.updated(c[:3], e[:3]).updated(c[3:], e[3:])
    batch = m.updated(c, e)
    assert seq.hparams == pytest.approx(batch.hparams, rel=1e-12)
    assert batch.hparams == pytest.approx({"concentration": 1.5 + 18, "rate": 0.2 + 7.5}, rel=1e-12)


def test_sequential_updating_dirichlet_multinomial():
    m = DirichletMultinomial(concentration=0.5)
    c = torch.tensor([[1, 2, 0, 4], [0, 0, 3, 1], [5, 5, 5, 5]])
    seq = m.updated(c[:1]).updated(c[1:])
    batch = m.updated(c)
    np.testing.assert_allclose(seq.hparams["concentration"], batch.hparams["concentration"])
    np.testing.assert_allclose(batch.hparams["concentration"], [6.5, 7.5, 8.5, 10.5])


# --------------------------------------------------------------------------------------------
# A/B testing helpers


def _mc_prob_b_beats_a(model, trials, successes, num_samples):
    post = model.exact_posterior(trials, successes)["p"]
    p = post.sample((num_samples,)).double()
    est = float((p[:, 1] > p[:, 0]).double().mean())
    return est


@pytest.mark.parametrize(
    "alpha,beta,trials,successes",
    [
        (1.0, 1.0, [1000, 1000], [100, 125]),  # integer alpha_B: Miller's sum directly
        ([0.5, 1.0], 1.0, [40, 50], [10, 20]),  # alpha_A non-integer: alpha_B still integer
        ([1.0, 0.5], 1.0, [40, 50], [10, 20]),  # alpha_B non-integer: 1 - P(A > B)
        (0.5, [1.0, 1.5], [30, 30], [12, 14]),  # only beta_A integer: p -> 1 - p symmetry
        (0.5, [1.5, 1.0], [30, 30], [12, 14]),  # only beta_B integer
        (2.0, 3.0, [5, 7], [0, 7]),  # tiny counts, lopsided
    ],
)
def test_prob_b_beats_a_closed_form(alpha, beta, trials, successes):
    model = BetaBinomialAB(alpha=alpha, beta=beta)
    exact = model.prob_b_beats_a(trials, successes)
    # Independent: adaptive quadrature of P(B > A) = int f_B(x) F_A(x) dx with scipy.
    a = np.broadcast_to(np.asarray(alpha, float), (2,)) + successes
    b = np.broadcast_to(np.asarray(beta, float), (2,)) + np.subtract(trials, successes)
    quad, _ = integrate.quad(
        lambda x: stats.beta.pdf(x, a[1], b[1]) * stats.beta.cdf(x, a[0], b[0]), 0, 1,
        points=[a[0] / (a[0] + b[0]), a[1] / (a[1] + b[1])], limit=200, epsabs=1e-12,
    )
    assert exact == pytest.approx(quad, abs=1e-7)
    # Monte Carlo from the exact posterior, within Z standard errors.
    n = 400_000
    mc = _mc_prob_b_beats_a(model, trials, successes, n)
    se = math.sqrt(max(exact * (1 - exact), 1e-12) / n)
    assert abs(mc - exact) < Z * se + 1e-12


def test_prob_b_beats_a_errors():
    with pytest.raises(ValueError, match="exactly 2 variants"):
        BetaBinomialAB().prob_b_beats_a([10, 10, 10], [1, 2, 3])
    with pytest.raises(ValueError, match="prob_best"):
        BetaBinomialAB(alpha=0.5, beta=0.5).prob_b_beats_a([10, 10], [1, 2])


def test_prob_best_function():
    draws = torch.tensor([[0.1, 0.2, 0.0], [0.3, 0.2, 0.1], [0.0, 0.1, 0.5], [0.9, 0.1, 0.2]])
    torch.testing.assert_close(prob_best(draws), torch.tensor([0.5, 0.25, 0.25]))
    # Leading dimensions are all draws.
    torch.testing.assert_close(prob_best(draws.reshape(2, 2, 3)), torch.tensor([0.5, 0.25, 0.25]))
    with pytest.raises(ValueError, match="shape"):
        prob_best(torch.tensor([0.1, 0.2]))


def test_prob_best_method_matches_closed_form_and_is_seeded():
    model = BetaBinomialAB()
    trials, successes = [200, 200], [20, 30]
    n = 200_000
    pb = model.prob_best(trials, successes, num_samples=n, seed=1)
    exact = model.prob_b_beats_a(trials, successes)
    se = math.sqrt(exact * (1 - exact) / n)
    assert abs(float(pb[1]) - exact) < Z * se
    assert float(pb.sum()) == pytest.approx(1.0)
    state = torch.get_rng_state()
    again = model.prob_best(trials, successes, num_samples=n, seed=1)
    assert torch.equal(pb, again)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched


def test_expected_loss():
    model = BetaBinomialAB()
    trials, successes = [200, 200], [20, 30]
    loss = model.expected_loss(trials, successes, num_samples=100_000, seed=3)
    assert loss.shape == (2,) and bool((loss >= 0).all()) and float(loss[1]) < float(loss[0])
    # loss_A - loss_B = E[p_B - p_A] exactly on the same draws; compare with the exact means.
    post = model.exact_posterior(trials, successes)["p"]
    diff = float(post.mean[1] - post.mean[0])
    sd = float((post.variance.sum()).sqrt())
    assert float(loss[0] - loss[1]) == pytest.approx(diff, abs=Z * sd / math.sqrt(100_000))


# --------------------------------------------------------------------------------------------
# model log densities vs scipy


def _log_joint(model, values, **data) -> float:
    tr = poutine.trace(poutine.condition(model, data=values)).get_trace(**data)
    return float(tr.log_prob_sum())


def test_log_density_beta_binomial():
    model = BetaBinomialAB(alpha=[1.0, 2.5], beta=[3.0, 1.0])
    p = np.array([0.2, 0.7])
    got = _log_joint(model, {"p": torch.tensor(p, dtype=torch.float32)},
                     trials=torch.tensor([10, 7]), successes=torch.tensor([2, 6]))
    ref = (stats.beta.logpdf(p, [1.0, 2.5], [3.0, 1.0]).sum()
           + stats.binom.logpmf([2, 6], [10, 7], p).sum())
    assert got == pytest.approx(ref, rel=1e-5)


def test_log_density_normal_normal():
    model = NormalNormal(prior_loc=1.0, prior_scale=2.0, noise_scale=0.5)
    y = np.array([0.3, 1.2, -0.4])
    got = _log_joint(model, {"mu": torch.tensor(0.7, dtype=torch.float64)}, y=torch.tensor(y))
    ref = stats.norm.logpdf(0.7, 1.0, 2.0) + stats.norm.logpdf(y, 0.7, 0.5).sum()
    assert got == pytest.approx(ref, rel=1e-10)


def test_log_density_gamma_poisson_with_zero_exposure():
    model = GammaPoisson(concentration=2.0, rate=0.5)
    counts, exposure = np.array([0, 4, 0]), np.array([0.0, 2.0, 1.5])
    got = _log_joint(model, {"rate": torch.tensor(1.3, dtype=torch.float64)},
                     counts=torch.tensor(counts), exposure=torch.tensor(exposure))
    ref = stats.gamma.logpdf(1.3, 2.0, scale=2.0) + stats.poisson.logpmf(counts, 1.3 * exposure).sum()
    assert got == pytest.approx(ref, rel=1e-10)


def test_log_density_dirichlet_multinomial_ragged_totals():
    model = DirichletMultinomial(concentration=[0.5, 1.0, 2.0])
    counts = np.array([[1, 0, 4], [3, 3, 3], [0, 0, 0], [10, 0, 1]])  # totals 5, 9, 0, 11
    p = np.array([0.2, 0.3, 0.5])
    tr = poutine.trace(poutine.condition(model, data={"probs": torch.tensor(p)})).get_trace(
        counts=torch.tensor(counts)
    )
    tr.compute_log_prob()
    lik_ref = [stats.multinomial.logpmf(c, c.sum(), p) for c in counts]
    np.testing.assert_allclose(tr.nodes["counts"]["log_prob"].numpy(), lik_ref, rtol=1e-5)
    ref = stats.dirichlet.logpdf(p, [0.5, 1.0, 2.0]) + sum(lik_ref)
    assert float(tr.log_prob_sum()) == pytest.approx(ref, rel=1e-5)


def test_ragged_multinomial_sampling():
    totals = torch.tensor([0, 5, 50])
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    d = _Multinomial(totals, probs)
    assert d.batch_shape == (3,) and d.event_shape == (4,)
    n = 20_000
    x = d.sample((n,))
    assert x.shape == (n, 3, 4)
    assert torch.equal(x.sum(-1), totals.float().expand(n, 3))
    assert bool((x[..., 1] == 0).all())  # zero-probability category never drawn
    se = (totals[:, None] * probs * (1 - probs) / n).sqrt()
    assert bool(((x.mean(0) - d.mean).abs() <= Z * se + 1e-6).all())
    with pytest.raises(ValueError, match="sum to"):
        d.log_prob(torch.tensor([[0, 0, 0, 0], [1, 0, 1, 1], [50, 0, 0, 0]]))


# --------------------------------------------------------------------------------------------
# predictive and vectorisation


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_predictive_draws_have_data_shapes(name):
    hp, data = EXAMPLES[name]
    model = models.get(name)(**hp)
    obs = model.observed_fields
    pred_data = {k: v for k, v in data.items() if k not in obs}
    if name == "dirichlet_multinomial":
        pred_data["total_count"] = data["counts"].sum(-1)
    out = model(**pred_data)
    if name == "normal_normal":
        assert out.shape == (1,)  # no other field fixes N: one new observation
    else:
        assert out.shape == data[obs[0]].shape


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_vectorised_under_outer_plate(name):
    hp, data = EXAMPLES[name]
    model = models.get(name)(**hp)
    obs = model.observed_fields[0]
    has_plate = model.data_spec.plate is not None
    dim = -2 if has_plate else -1
    pred_data = {k: v for k, v in data.items() if k != obs}
    if name == "dirichlet_multinomial":
        pred_data["total_count"] = data["counts"].sum(-1)
    if name == "normal_normal":
        pred_data = {}
    with pyro.plate("draws", 7, dim=dim):
        tr = poutine.trace(model).get_trace(**pred_data)
        tr_obs = poutine.trace(model).get_trace(**data)
    tr_obs.compute_log_prob()
    site = tr.nodes[obs]["value"]
    event = data[obs].shape[1:] if name == "dirichlet_multinomial" else ()
    n_plate = (1 if name == "normal_normal" else data[obs].shape[0]) if has_plate else None
    if has_plate:
        assert site.shape == (7, n_plate, *event)
        assert tr_obs.nodes[obs]["log_prob"].shape == (7, data[obs].shape[0])
    else:
        assert site.shape == (7, *data[obs].shape)
        assert tr_obs.nodes[obs]["log_prob"].shape == (7,)
    # Latents fixed to 7 draws (batch-shaped as under the plate) give 7 predictive draws.
    latent = {n: s["value"].detach() for n, s in tr_obs.nodes.items()
              if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)}
    with pyro.plate("draws", 7, dim=dim):
        pred = poutine.trace(poutine.condition(model, data=latent)).get_trace(**pred_data)
    assert pred.nodes[obs]["value"].shape == site.shape
    for n, v in latent.items():
        assert torch.equal(pred.nodes[n]["value"], v)


# --------------------------------------------------------------------------------------------
# validation


def test_validation_beta_binomial():
    m = BetaBinomialAB()
    with pytest.raises(DataValidationError, match=r"successes: must be <= trials.*variant\(s\) \[1\]"):
        m.validate_data({"trials": [5, 5], "successes": [1, 6]})
    with pytest.raises(DataValidationError, match="successes <= trials|must be <= trials"):
        m.exact_posterior([5, 5], [1, 6])
    with pytest.raises(TypeError, match="successes: expected integer data"):
        m.validate_data({"trials": [5, 5], "successes": [1.0, 2.5]})
    with pytest.raises(DataValidationError, match="trials: values must be >= 0"):
        m.validate_data({"trials": [-1, 5], "successes": [0, 2]})
    with pytest.raises(DataValidationError, match="successes: expected shape"):
        m.validate_data({"trials": [5, 5], "successes": [1, 2, 3]})
    with pytest.raises(DataValidationError, match="unknown data key"):
        m.validate_data({"trials": [5, 5], "successes": [1, 2], "n": [3]})
    with pytest.raises(DataValidationError, match="alpha has 3 values.*K=2"):
        BetaBinomialAB(alpha=[1.0, 1.0, 1.0]).exact_posterior([5, 5], [1, 2])


def test_validation_nan_and_types():
    with pytest.raises(ValueError, match="y: contains 1 NaN"):
        NormalNormal().validate_data({"y": [0.0, float("nan")]})
    with pytest.raises(ValueError, match="exposure: contains 1 NaN"):
        GammaPoisson().validate_data({"counts": [1, 2], "exposure": [1.0, float("nan")]})
    with pytest.raises(TypeError, match="counts: expected integer data"):
        GammaPoisson().validate_data({"counts": [1.0, 2.0]})
    with pytest.raises(DataValidationError, match="exposure: expected shape"):
        GammaPoisson().validate_data({"counts": [1, 2], "exposure": [1.0, 2.0, 3.0]})
    with pytest.raises(TypeError, match="counts: expected integer data"):
        DirichletMultinomial().validate_data({"counts": [[1.5, 2.0]]})
    with pytest.raises(DataValidationError, match="counts: expected shape"):
        DirichletMultinomial().validate_data({"counts": [1, 2]})
    with pytest.raises(DataValidationError, match="total_count: must equal the row sums"):
        DirichletMultinomial().validate_data({"counts": [[1, 2], [0, 0]], "total_count": [3, 1]})


def test_dirichlet_predict_needs_categories_and_totals():
    with pytest.raises(DataValidationError, match="list of K"):
        DirichletMultinomial(concentration=1.0)(total_count=torch.tensor([3]))
    with pytest.raises(DataValidationError, match="total_count"):
        DirichletMultinomial(concentration=[1.0, 1.0])()


@pytest.mark.parametrize(
    "cls,kw,match",
    [
        (BetaBinomialAB, {"alpha": -1.0}, "alpha must be"),
        (BetaBinomialAB, {"alpha": [1.0, 2.0], "beta": [1.0, 2.0, 3.0]}, "different lengths"),
        (BetaBinomialAB, {"beta": "one"}, "beta must be"),
        (NormalNormal, {"prior_scale": 0.0}, "prior_scale must be"),
        (NormalNormal, {"prior_loc": float("inf")}, "prior_loc must be"),
        (GammaPoisson, {"rate": float("nan")}, "rate must be"),
        (DirichletMultinomial, {"concentration": [[1.0]]}, "concentration must be"),
    ],
)
def test_bad_hyperparameters(cls, kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cls(**kw)


# --------------------------------------------------------------------------------------------
# registry round trip (every registered name, whatever its module)


@pytest.mark.parametrize("name", models.available())
def test_hparams_round_trip(name):
    factory = models.get(name)
    model = factory()
    hp = json.loads(json.dumps(model.jsonable_hparams()))
    again = factory(**hp)
    assert type(again) is type(model)
    assert again.hparams == model.hparams
    for (n1, b1), (n2, b2) in zip(model.named_buffers(), again.named_buffers()):
        assert n1 == n2 and torch.equal(b1, b2)
    # Same via the class's own registered name (how a saved result is rebuilt).
    rebuilt = models.get(type(model).registered_name)(**hp)
    assert type(rebuilt) is type(model) and rebuilt.hparams == model.hparams


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_updated_model_round_trips(name):
    hp, data = EXAMPLES[name]
    upd = models.get(name)(**hp).updated(**data)
    again = models.get(name)(**json.loads(json.dumps(upd.hparams)))
    assert again.hparams == upd.hparams
