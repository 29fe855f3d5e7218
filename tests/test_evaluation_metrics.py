"""Predictive metrics and OOD scores: hand-computed cases, library references, properties.

References: scikit-learn (accuracy, log loss, Brier, calibration curve, ROC AUC, ROC curve) and
SciPy (normal CDF/PDF, numerical integration of the CRPS, root finding). Statistical checks use
z = 4 on a stated Monte Carlo / binomial standard error with a fixed seed.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, stats
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from pyro_models import evaluation as ev
from pyro_models.evaluation import metrics as M
from pyro_models.evaluation import ood

Z = 4.0  # standard errors allowed in the statistical checks (two-sided p ~ 6e-5)


def _gauss_crps_quad(mu: float, sigma: float, y: float, cdf=None) -> float:
    """CRPS = int (F(x) - 1[x >= y])^2 dx by adaptive quadrature, split at y."""
    cdf = cdf or (lambda x: stats.norm.cdf(x, mu, sigma))
    left = integrate.quad(lambda x: cdf(x) ** 2, -np.inf, y, epsabs=1e-12, epsrel=1e-10)[0]
    right = integrate.quad(lambda x: (1 - cdf(x)) ** 2, y, np.inf, epsabs=1e-12, epsrel=1e-10)[0]
    return left + right


def _probs(n: int, c: int, seed: int = 0, temp: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    probs = (torch.randn(n, c, generator=g, dtype=torch.float64) * temp).softmax(-1)
    labels = torch.randint(c, (n,), generator=g)
    return probs, labels


# --------------------------------------------------------------------------------------------
# regression: point and density scores


def test_rmse_hand_and_numpy():
    assert M.rmse(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 6.0])).item() == pytest.approx(math.sqrt(3))
    assert M.rmse(np.array([0.0, 0.0]), np.array([3.0, 4.0])).item() == pytest.approx(math.sqrt(12.5))
    with pytest.raises(ValueError, match="shape"):
        M.rmse(torch.zeros(3), torch.zeros(4))


def test_gaussian_mixture_nll_vs_scipy():
    g = np.random.default_rng(0)
    loc, scale, y = g.normal(size=(5, 7)), g.uniform(0.2, 2.0, (5, 7)), g.normal(size=7)
    ref = -np.log(stats.norm.pdf(y, loc, scale).mean(0))
    got = M.gaussian_mixture_nll(torch.tensor(loc), torch.tensor(scale), torch.tensor(y), reduction="none")
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)
    assert M.gaussian_mixture_nll(loc, scale, y).item() == pytest.approx(ref.mean(), rel=1e-12)
    assert M.gaussian_mixture_nll(loc, scale, y, reduction="sum").item() == pytest.approx(ref.sum(), rel=1e-12)
    # Homoscedastic per-draw scale (S, 1) broadcasts.
    s1 = g.uniform(0.5, 1.0, (5, 1))
    ref1 = -np.log(stats.norm.pdf(y, loc, s1).mean(0)).mean()
    assert M.gaussian_mixture_nll(loc, s1, y).item() == pytest.approx(ref1, rel=1e-12)


def test_gaussian_mixture_nll_is_stable_far_in_the_tail():
    # Every component density underflows (z = 1000): the logsumexp form stays exact.
    loc = torch.tensor([[0.0], [0.0]], dtype=torch.float64)
    scale = torch.ones(2, 1, dtype=torch.float64)
    got = M.gaussian_mixture_nll(loc, scale, torch.tensor([1000.0], dtype=torch.float64)).item()
    assert got == pytest.approx(0.5 * 1000.0**2 + 0.5 * math.log(2 * math.pi), rel=1e-14)


# --------------------------------------------------------------------------------------------
# CRPS


@pytest.mark.parametrize("mu,sigma,y", [(0.0, 1.0, 0.0), (1.0, 0.5, -0.3), (-2.0, 3.0, 4.0)])
def test_crps_gaussian_vs_quadrature(mu, sigma, y):
    got = M.crps_gaussian(torch.tensor([mu], dtype=torch.float64), torch.tensor([sigma], dtype=torch.float64),
                          torch.tensor([y], dtype=torch.float64)).item()
    assert got == pytest.approx(_gauss_crps_quad(mu, sigma, y), rel=1e-8, abs=1e-10)


def test_crps_mixture_single_component_equals_gaussian_closed_form():
    g = torch.Generator().manual_seed(1)
    mu, y = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    sigma = torch.rand(50, generator=g, dtype=torch.float64) + 0.1
    z, sd = ((y - mu) / sigma).numpy(), sigma.numpy()
    closed = sd * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi))
    got = M.crps_gaussian_mixture(mu[None], sigma[None], y, reduction="none")
    np.testing.assert_allclose(got.numpy(), closed, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(M.crps_gaussian(mu, sigma, y, reduction="none").numpy(), closed, rtol=1e-12, atol=1e-14)


def test_crps_mixture_vs_quadrature_and_blocking(monkeypatch):
    g = np.random.default_rng(2)
    loc, scale, y = g.normal(size=(3, 4)), g.uniform(0.3, 1.5, (3, 4)), g.normal(size=4)
    got = M.crps_gaussian_mixture(loc, scale, y, reduction="none").numpy()
    for i in range(4):
        cdf = lambda x, i=i: stats.norm.cdf(x, loc[:, i], scale[:, i]).mean()  # noqa: E731
        assert got[i] == pytest.approx(_gauss_crps_quad(0, 1, y[i], cdf=cdf), rel=1e-7)
    # The pairwise term evaluated one draw at a time gives the same numbers.
    monkeypatch.setattr(M, "_PAIR_BLOCK", 1)
    np.testing.assert_allclose(M.crps_gaussian_mixture(loc, scale, y, reduction="none").numpy(), got, rtol=1e-13)


def test_crps_samples_hand_and_brute_force():
    # Draws {0, 2}, y = 1: mean |x - y| = 1; sum_{s,t} |x_s - x_t| = 4 -> 1 - 4 / (2 * 4) = 0.5.
    assert M.crps_samples(torch.tensor([[0.0], [2.0]]), torch.tensor([1.0])).item() == 0.5
    assert M.crps_samples(torch.tensor([[0.0], [2.0]]), torch.tensor([1.0]), fair=True).item() == 0.0
    g = np.random.default_rng(3)
    x, y = g.normal(size=(30, 6)), g.normal(size=6)
    pair = np.abs(x[:, None] - x[None]).sum((0, 1))
    brute = np.abs(x - y).mean(0) - 0.5 * pair / 30**2
    np.testing.assert_allclose(M.crps_samples(x, y, reduction="none").numpy(), brute, rtol=1e-12)
    brute_fair = np.abs(x - y).mean(0) - 0.5 * pair / (30 * 29)
    np.testing.assert_allclose(M.crps_samples(x, y, fair=True, reduction="none").numpy(), brute_fair, rtol=1e-12)


def test_crps_samples_converges_to_gaussian_crps():
    # N points, S draws each from the exact Gaussian predictive. The fair estimator is unbiased
    # for the Gaussian CRPS, so the mean difference is zero up to Monte Carlo error, whose
    # standard error we estimate from the per-point differences (independent across points).
    n, s = 200, 2000
    g = torch.Generator().manual_seed(4)
    mu = torch.randn(n, generator=g, dtype=torch.float64)
    sigma = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    y = mu + sigma * torch.randn(n, generator=g, dtype=torch.float64)
    draws = mu + sigma * torch.randn(s, n, generator=g, dtype=torch.float64)
    exact = M.crps_gaussian(mu, sigma, y, reduction="none")
    diff = M.crps_samples(draws, y, fair=True, reduction="none") - exact
    se = diff.std() / math.sqrt(n)
    assert abs(diff.mean().item()) < Z * se.item()
    assert se.item() < 2e-3  # the check has power: MC error is small against CRPS ~ 0.5
    # The default (empirical-distribution) estimator sits E|X - X'| / (2S) above the fair one.
    gap = M.crps_samples(draws, y, reduction="none") - M.crps_samples(draws, y, fair=True, reduction="none")
    assert gap.mean().item() == pytest.approx((2 * sigma / math.sqrt(math.pi) / (2 * s)).mean().item(), rel=0.05)


# --------------------------------------------------------------------------------------------
# quantiles, intervals, PIT, coverage


def test_gaussian_mixture_quantile_vs_root_finding():
    g = np.random.default_rng(5)
    loc, scale = g.normal(size=(4, 3)) * 2, g.uniform(0.3, 1.5, (4, 3))
    qs = [0.025, 0.25, 0.5, 0.9]
    got = M.gaussian_mixture_quantile(torch.tensor(loc), torch.tensor(scale), qs).numpy()
    assert got.shape == (4, 3)
    for j in range(3):
        for i, q in enumerate(qs):
            ref = optimize.brentq(lambda x: stats.norm.cdf(x, loc[:, j], scale[:, j]).mean() - q, -30, 30, xtol=1e-14)
            assert got[i, j] == pytest.approx(ref, abs=1e-10)
    cdf = M.gaussian_mixture_cdf(loc, scale, torch.tensor(got[2])).numpy()
    np.testing.assert_allclose(cdf, 0.5, atol=1e-12)


def test_central_interval_from_draws_matches_numpy_quantile():
    x = np.random.default_rng(6).normal(size=(101, 5))
    lo, hi = M.central_interval([0.5, 0.9], y_draws=torch.tensor(x))
    np.testing.assert_allclose(lo.numpy(), np.quantile(x, [0.25, 0.05], axis=0), rtol=1e-12)
    np.testing.assert_allclose(hi.numpy(), np.quantile(x, [0.75, 0.95], axis=0), rtol=1e-12)


def test_pit_hand_cases():
    draws = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    # y = 1.5: r = 2 of S = 4 -> (2 + 0.5) / 5; a tie at y = 1 counts half -> r = 1.5.
    assert M.pit(torch.tensor([1.5]), y_draws=draws).item() == pytest.approx(0.5)
    assert M.pit(torch.tensor([1.0]), y_draws=draws).item() == pytest.approx(0.4)
    assert M.pit(torch.tensor([-9.0]), y_draws=draws).item() == pytest.approx(0.1)
    loc, scale = torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [0.5]])
    ref = 0.5 * (stats.norm.cdf(0.7, 0, 1) + stats.norm.cdf(0.7, 2, 0.5))
    assert M.pit(torch.tensor([0.7]), loc=loc, scale=scale).item() == pytest.approx(ref, rel=1e-6)


def test_interval_coverage_hand_case_from_draws():
    draws = torch.arange(11.0)[:, None].expand(11, 4)  # 0..10: 50% interval [2.5, 7.5]
    y = torch.tensor([2.0, 3.0, 7.5, 9.6])             # 90% interval [0.5, 9.5]
    cov = M.interval_coverage(y, y_draws=draws, levels=(0.5, 0.9))
    assert {k: v.item() for k, v in cov.items()} == {0.5: 0.5, 0.9: 0.75}


def _simulated_mixture(n: int, s: int, seed: int):
    """Per-point Gaussian mixtures (S components) and y drawn from each point's own mixture."""
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(s, n, generator=g, dtype=torch.float64) * 1.5
    scale = torch.rand(s, n, generator=g, dtype=torch.float64) + 0.3
    comp = torch.randint(s, (n,), generator=g)
    cols = torch.arange(n)
    y = loc[comp, cols] + scale[comp, cols] * torch.randn(n, generator=g, dtype=torch.float64)
    return loc, scale, y


def test_coverage_of_correctly_specified_mixture_is_nominal():
    # y_i comes from its own predictive, so each "inside" indicator is Bernoulli(p): the observed
    # coverage has binomial standard error sqrt(p (1 - p) / N); allow Z = 4 of them.
    n = 4000
    loc, scale, y = _simulated_mixture(n, 4, seed=7)
    levels = (0.5, 0.8, 0.9, 0.95)
    cov = M.interval_coverage(y, loc=loc, scale=scale, levels=levels)
    for p in levels:
        assert abs(cov[p].item() - p) < Z * math.sqrt(p * (1 - p) / n), (p, cov[p].item())
    # The bisection intervals of central_interval() contain exactly the same points.
    lower, upper = M.central_interval(list(levels), loc=loc, scale=scale)
    for i, p in enumerate(levels):
        assert cov[p].item() == ((lower[i] <= y) & (y <= upper[i])).double().mean().item()


def test_coverage_from_draws_is_nominal():
    # With y exchangeable with the S draws, E F(X_(k)) = k / (S + 1), so the interval between
    # the interpolated quantiles at 0-based positions q (S - 1) has expected coverage about
    # p (S - 1) / (S + 1) (0.945 for p = 0.95, S = 400); the points are independent, so the
    # observed coverage is binomial around it. Allow Z binomial SEs plus 1/S for interpolation.
    n, s = 4000, 400
    loc, scale, y = _simulated_mixture(n, 1, seed=8)
    draws = loc + scale * torch.randn(s, n, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    cov = M.interval_coverage(y, y_draws=draws)
    for p, c in cov.items():
        centre = p * (s - 1) / (s + 1)
        assert abs(c.item() - centre) < Z * math.sqrt(p * (1 - p) / n) + 1 / s, (p, c.item())


def test_regression_calibration_curve_calibrated_and_overdispersed():
    n = 4000
    loc, scale, y = _simulated_mixture(n, 3, seed=10)
    exp, obs = M.regression_calibration_curve(y, loc=loc, scale=scale)
    assert exp.shape == obs.shape == (19,)
    np.testing.assert_allclose(exp.numpy(), np.arange(1, 20) / 20)
    band = Z * np.sqrt(exp.numpy() * (1 - exp.numpy()) / n)
    assert np.all(np.abs(obs.numpy() - exp.numpy()) < band)
    # Doubling every scale makes intervals too wide: observed coverage above nominal.
    _, wide = M.regression_calibration_curve(y, loc=loc, scale=2 * scale, levels=[0.5, 0.9])
    assert np.all(wide.numpy() > np.array([0.5, 0.9]) + np.array(band[[9, 17]]))
    # From draws: the same curve up to the binomial band and the 1/(S+1) PIT grid.
    draws = loc[0] + scale[0] * torch.randn(999, n, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    y1 = loc[0] + scale[0] * torch.randn(n, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    _, obs_d = M.regression_calibration_curve(y1, y_draws=draws)
    assert np.all(np.abs(obs_d.numpy() - exp.numpy()) < band + 2 / 1000)


# --------------------------------------------------------------------------------------------
# classification


def test_accuracy_and_nll_vs_sklearn():
    probs, labels = _probs(300, 4, seed=13)
    assert M.accuracy(probs, labels).item() == pytest.approx(
        skm.accuracy_score(labels.numpy(), probs.argmax(-1).numpy()), abs=1e-15)
    assert M.nll(probs, labels).item() == pytest.approx(
        skm.log_loss(labels.numpy(), probs.numpy(), labels=range(4)), rel=1e-12)
    # Hand case: -(log 0.5 + log 0.9) / 2 and -log(0.1).
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=torch.float64)
    assert M.nll(p, torch.tensor([0, 0])).item() == pytest.approx(-(math.log(0.5) + math.log(0.9)) / 2)
    assert M.nll(p, torch.tensor([0, 1]), reduction="none")[1].item() == pytest.approx(-math.log(0.1))
    # A confident mistake is clamped at eps instead of infinity.
    assert M.nll(torch.tensor([[1.0, 0.0]]), torch.tensor([1]), eps=1e-6).item() == pytest.approx(-math.log(1e-6))


def test_brier_hand_binary_and_multiclass():
    # Hand: [(0.8-1)^2 + 0.2^2] = 0.08 and [0.5^2 + 0.5^2] = 0.5 -> 0.29.
    p = torch.tensor([[0.8, 0.2], [0.5, 0.5]], dtype=torch.float64)
    assert M.brier(p, torch.tensor([0, 1])).item() == pytest.approx(0.29)
    p3 = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=torch.float64)
    # (0.09 + 0.04 + 0.01) and (0.01 + 0.81 + 0.64) -> mean 0.8
    assert M.brier(p3, torch.tensor([0, 1])).item() == pytest.approx(0.8)
    # Binary: twice sklearn's (p_1 - y)^2 version.
    probs, labels = _probs(200, 2, seed=14)
    ref = skm.brier_score_loss(labels.numpy(), probs[:, 1].numpy())
    assert M.brier(probs, labels).item() == pytest.approx(2 * ref, rel=1e-12)


def test_brier_multiclass_vs_sklearn():
    import inspect
    if "scale_by_half" not in inspect.signature(skm.brier_score_loss).parameters:
        pytest.skip("multi-class brier_score_loss needs scikit-learn >= 1.7")
    probs, labels = _probs(200, 5, seed=15)
    ref = skm.brier_score_loss(labels.numpy(), probs.numpy(), labels=range(5), scale_by_half=False)
    assert M.brier(probs, labels).item() == pytest.approx(ref, rel=1e-12)


def test_ece_and_reliability_hand_case():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.55, 0.45]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0, 0])
    # Top-label confidences 0.9, 0.8, 0.6, 0.7, 0.55; correct 1, 0, 1, 0, 1.
    d = M.reliability_diagram_data(probs, labels, num_bins=4)
    # Bins (0, .25], (.25, .5], (.5, .75], (.75, 1]
    assert d["count"].tolist() == [0, 0, 3, 2]
    assert d["confidence"][2:].tolist() == pytest.approx([(0.6 + 0.7 + 0.55) / 3, 0.85])
    assert d["accuracy"][2:].tolist() == pytest.approx([2 / 3, 0.5])
    want = 3 / 5 * abs(2 / 3 - 1.85 / 3) + 2 / 5 * abs(0.5 - 0.85)
    assert M.ece(probs, labels, num_bins=4).item() == pytest.approx(want)
    # Adaptive, 2 bins: sorted confidences .55 .6 .7 | .8 .9 -> sizes 3 and 2 (the larger first).
    da = M.reliability_diagram_data(probs, labels, num_bins=2, binning="adaptive")
    assert da["count"].tolist() == [3, 2]
    assert da["edges"].tolist() == pytest.approx([0.0, 0.75, 1.0])
    assert M.ece(probs, labels, num_bins=2, binning="adaptive").item() == pytest.approx(want)
    # A confidence exactly on an edge goes to the bin it closes: 0.5 is in (0, 0.5].
    de = M.reliability_diagram_data(torch.tensor([[0.5, 0.5], [0.75, 0.25]]), torch.tensor([0, 0]), num_bins=2)
    assert de["count"].tolist() == [1, 1]


def test_reliability_data_vs_sklearn_calibration_curve():
    # For binary problems the top-label diagram is sklearn's calibration_curve of the
    # correctness indicator against the top-label confidence (uniform bins, none on an edge).
    probs, labels = _probs(500, 2, seed=16, temp=2.0)
    conf, pred = probs.max(-1)
    correct = (pred == labels).long().numpy()
    prob_true, prob_pred = calibration_curve(correct, conf.numpy(), n_bins=10, strategy="uniform")
    d = M.reliability_diagram_data(probs, labels, num_bins=10)
    keep = d["count"] > 0
    np.testing.assert_allclose(d["accuracy"][keep].numpy(), prob_true, rtol=1e-12)
    np.testing.assert_allclose(d["confidence"][keep].numpy(), prob_pred, rtol=1e-12)


@pytest.mark.parametrize("binning", ["equal_width", "adaptive"])
def test_ece_of_calibrated_classifier_is_binomial_noise(binning):
    # Labels drawn from the predicted probabilities: accuracy_b - confidence_b in each bin is a
    # mean of n_b independent centred terms with variance <= 1/(4 n_b) (the bins depend on the
    # probabilities only), so E[ECE] <= sum_b (n_b / N) sqrt(1 / (4 n_b)) <= sqrt(B / (4 N)) by
    # Jensen and Cauchy-Schwarz, and sd[ECE] <= sqrt(sum_b (n_b / N)^2 / (4 n_b)) = sqrt(1 / (4 N));
    # allow the mean bound + Z sd (0.028 here).
    n, c, b = 20000, 3, 15
    probs, _ = _probs(n, c, seed=17, temp=2.0)
    labels = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(18)).squeeze(-1)
    bound = math.sqrt(b / (4 * n)) + Z * math.sqrt(1 / (4 * n))
    assert M.ece(probs, labels, num_bins=b, binning=binning).item() < bound
    # Overconfident by construction (true accuracy 0.7 at confidence 0.9): ECE ~ 0.2.
    over = torch.tensor([[0.9, 0.1]], dtype=torch.float64).expand(n, 2)
    wrong = (torch.rand(n, generator=torch.Generator().manual_seed(19)) > 0.7).long()
    got = M.ece(over, wrong, num_bins=b, binning=binning).item()
    assert abs(got - 0.2) < Z * math.sqrt(0.21 / n)


def test_plot_reliability_diagram_returns_axes():
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    probs, labels = _probs(100, 3, seed=20)
    ax = M.plot_reliability_diagram(probs, labels, num_bins=5)
    assert isinstance(ax, Axes) and "ECE" in ax.get_title()
    ax.figure.savefig(io.BytesIO(), format="png")
    given = Figure().add_subplot()
    assert M.plot_reliability_diagram(probs, labels, binning="adaptive", ax=given) is given


# --------------------------------------------------------------------------------------------
# selective prediction


def test_accuracy_retention_hand_case_and_area():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    # Confidence order: 0.9 (right), 0.8 (right), 0.7 (wrong), 0.6 (wrong).
    r, a = M.accuracy_retention_curve(probs, labels)
    assert r.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert a.tolist() == pytest.approx([1.0, 1.0, 2 / 3, 0.5])
    assert M.area_under_retention_curve(probs, labels).item() == pytest.approx((1 + 1 + 2 / 3 + 0.5) / 4)
    # A custom score reverses the order: wrong ones first.
    _, a_rev = M.accuracy_retention_curve(probs, labels, score=-probs.max(-1).values)
    assert a_rev.tolist() == pytest.approx([0.0, 0.0, 1 / 3, 0.5])


def test_accuracy_retention_ties_use_expected_accuracy():
    # All scores tie: the expected accuracy of a random subset is the overall accuracy, at
    # every retention, whatever the input order.
    probs, labels = _probs(50, 3, seed=21)
    flat = torch.ones(50)
    _, a = M.accuracy_retention_curve(probs, labels, score=flat)
    np.testing.assert_allclose(a.numpy(), M.accuracy(probs, labels).item(), rtol=1e-12)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(22))
    s = torch.randint(3, (50,), generator=torch.Generator().manual_seed(23)).double()
    _, a1 = M.accuracy_retention_curve(probs, labels, score=s)
    _, a2 = M.accuracy_retention_curve(probs[perm], labels[perm], score=s[perm])
    np.testing.assert_allclose(a1.numpy(), a2.numpy(), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# OOD


def test_ood_scores_hand_and_decomposition():
    p = torch.tensor([[[0.9, 0.1], [1.0, 0.0]], [[0.9, 0.1], [0.0, 1.0]]], dtype=torch.float64)
    out = ood.ood_scores(p)
    h09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert out["entropy"].tolist() == pytest.approx([h09, math.log(2)])
    assert out["mutual_info"].tolist() == pytest.approx([0.0, math.log(2)], abs=1e-15)
    assert out["max_prob"].tolist() == pytest.approx([0.9, 0.5])
    with pytest.raises(ValueError, match=r"\(S, N, C\)"):
        ood.ood_scores(p[0])


@pytest.mark.parametrize("discrete", [False, True], ids=["continuous", "ties"])
def test_auroc_vs_sklearn(discrete):
    g = np.random.default_rng(24)
    s_in, s_out = g.normal(size=300), g.normal(0.8, 1.0, size=200)
    if discrete:  # many ties, inside and across groups
        s_in, s_out = np.round(s_in), np.round(s_out)
    y = np.r_[np.zeros(300), np.ones(200)]
    ref = skm.roc_auc_score(y, np.r_[s_in, s_out])
    assert ood.auroc(torch.tensor(s_in), torch.tensor(s_out)).item() == pytest.approx(ref, rel=1e-12)
    # Hand case: pairs (out > in) = 3 + 2, one tie (0.5 vs 0.5) -> (5 + 0.5) / 6.
    assert ood.auroc([0.1, 0.4, 0.5], [0.5, 0.9]).item() == pytest.approx(5.5 / 6)


@pytest.mark.parametrize("n_out,discrete", [(20, False), (200, False), (137, True)])
def test_fpr_at_95_tpr_vs_sklearn_roc_curve(n_out, discrete):
    g = np.random.default_rng(n_out)
    s_in, s_out = g.normal(size=250), g.normal(1.5, 1.0, size=n_out)
    if discrete:
        s_in, s_out = np.round(2 * s_in), np.round(2 * s_out)
    fpr, tpr, _ = skm.roc_curve(np.r_[np.zeros(250), np.ones(n_out)], np.r_[s_in, s_out], drop_intermediate=False)
    ref = fpr[np.searchsorted(tpr, 0.95, side="left")]
    assert ood.fpr_at_95_tpr(torch.tensor(s_in), torch.tensor(s_out)).item() == pytest.approx(ref, abs=1e-15)


def test_fpr_at_95_tpr_hand_case():
    # 20 OOD scores 5..24: 19 must be flagged -> threshold 6; in-scores 0..9 >= 6: four of ten.
    assert ood.fpr_at_95_tpr(torch.arange(10.0), torch.arange(20.0) + 5).item() == pytest.approx(0.4)
    assert ood.fpr_at_95_tpr([0.0, 1.0], [5.0, 6.0], tpr=1.0).item() == 0.0


# --------------------------------------------------------------------------------------------
# decomposition identities (random inputs, float64: equal to rounding)


def test_decompose_regression_law_of_total_variance():
    g = torch.Generator().manual_seed(25)
    loc = torch.randn(40, 6, generator=g, dtype=torch.float64)
    scale = torch.rand(40, 6, generator=g, dtype=torch.float64) + 0.1
    d = ev.decompose_regression(loc, scale)
    torch.testing.assert_close(d["total_var"], d["aleatoric_var"] + d["epistemic_var"], rtol=0, atol=1e-15)
    # The mixture's variance from its moments: E[X^2] - E[X]^2.
    second = (scale**2 + loc**2).mean(0)
    torch.testing.assert_close(d["total_var"], second - loc.mean(0) ** 2, rtol=1e-12, atol=1e-12)


def test_decompose_classification_entropy_identity():
    g = torch.Generator().manual_seed(26)
    p = (torch.randn(30, 8, 5, generator=g, dtype=torch.float64) * 2).softmax(-1)
    d = ev.decompose_classification(p)
    torch.testing.assert_close(d["entropy"], d["expected_entropy"] + d["mutual_info"], rtol=0, atol=1e-14)
    ref = stats.entropy(p.mean(0).numpy(), axis=-1)
    np.testing.assert_allclose(d["entropy"].numpy(), ref, rtol=1e-12)
    assert bool((d["mutual_info"] >= 0).all())


# --------------------------------------------------------------------------------------------
# validation


def _ok():
    return torch.tensor([[0.7, 0.3], [0.2, 0.8]]), torch.tensor([0, 1])


@pytest.mark.parametrize(
    "probs,labels,exc,match",
    [
        (torch.tensor([[0.7, 0.4], [0.2, 0.8]]), torch.tensor([0, 1]), ValueError, "sum to 1"),
        (torch.tensor([[2.0, -1.0], [0.2, 0.8]]), torch.tensor([0, 1]), ValueError, r"\[0, 1\]"),
        (torch.tensor([[float("nan"), 0.3], [0.2, 0.8]]), torch.tensor([0, 1]), ValueError, "NaN"),
        (torch.tensor([0.7, 0.3]), torch.tensor([0]), ValueError, r"\(N, C\)"),
        (_ok()[0], torch.tensor([0, 2]), ValueError, "class indices"),
        (_ok()[0], torch.tensor([0, -1]), ValueError, "class indices"),
        (_ok()[0], torch.tensor([0.0, 1.0]), TypeError, "integer"),
        (_ok()[0], torch.tensor([0, 1, 1]), ValueError, r"shape \(N,\)"),
    ],
    ids=["not-normalised", "out-of-range", "nan", "1d", "label-too-big", "label-negative",
         "float-labels", "label-shape"],
)
@pytest.mark.parametrize("fn", [M.accuracy, M.nll, M.brier, M.ece, M.accuracy_retention_curve],
                         ids=lambda f: f.__name__)
def test_classification_validation(fn, probs, labels, exc, match):
    with pytest.raises(exc, match=match):
        fn(probs, labels)


def test_regression_validation():
    loc, scale, y = torch.zeros(3, 4), torch.ones(3, 4), torch.zeros(4)
    with pytest.raises(ValueError, match="leading draw dimension"):
        M.gaussian_mixture_nll(torch.zeros(4), torch.ones(4), y)
    with pytest.raises(ValueError, match="> 0"):
        M.crps_gaussian_mixture(loc, torch.zeros(3, 4), y)
    with pytest.raises(ValueError, match="NaN"):
        M.crps_samples(loc, torch.tensor([0.0, float("nan"), 0.0, 0.0]))
    with pytest.raises(ValueError, match="broadcast"):
        M.gaussian_mixture_nll(loc, torch.ones(2, 4), y)
    with pytest.raises(ValueError, match="either"):
        M.interval_coverage(y, y_draws=loc, loc=loc, scale=scale)
    with pytest.raises(ValueError, match="either"):
        M.pit(y)
    with pytest.raises(ValueError, match="both loc and scale"):
        M.regression_calibration_curve(y, loc=loc)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        M.interval_coverage(y, loc=loc, scale=scale, levels=(0.5, 1.0))
    with pytest.raises(ValueError, match="reduction"):
        M.crps_samples(loc, y, reduction="avg")
    with pytest.raises(ValueError, match="binning"):
        M.ece(*_ok(), binning="quantile")
    with pytest.raises(ValueError, match="num_bins"):
        M.ece(*_ok(), num_bins=0)
    with pytest.raises(ValueError, match="1-D"):
        ood.auroc(torch.zeros(2, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="tpr"):
        ood.fpr_at_95_tpr(torch.zeros(2), torch.zeros(3), tpr=0.0)


def test_numpy_inputs_match_torch():
    probs, labels = _probs(40, 3, seed=27)
    assert M.ece(probs.numpy(), labels.numpy()).item() == M.ece(probs, labels).item()
    g = np.random.default_rng(28)
    x, y = g.normal(size=(50, 5)), g.normal(size=5)
    assert M.crps_samples(x, y).item() == M.crps_samples(torch.tensor(x), torch.tensor(y)).item()


def test_public_api_is_exported():
    for name in M.__all__ + ood.__all__:
        assert getattr(ev, name) is getattr(M if name in M.__all__ else ood, name)
        assert name in ev.__all__
