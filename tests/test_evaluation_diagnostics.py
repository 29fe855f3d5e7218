"""Diagnostics through ArviZ, PSIS-LOO and compare, PSIS k-hat of SVI fits, predictive checks."""

from __future__ import annotations

import math
import warnings

import arviz as az
import matplotlib
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from matplotlib.figure import Figure
from scipy import special, stats

matplotlib.use("Agg")

import pyro_models  # noqa: E402
from pyro_models import FitResult, MCMCConfig, SVIConfig  # noqa: E402
from pyro_models.evaluation import (  # noqa: E402
    KHAT_BAD,
    ParetoKWarning,
    PSISWarning,
    bfmi,
    compare,
    loo,
    mcmc_diagnostics,
    plot_ppc,
    plot_prior_predictive,
    prior_predictive,
    psis_khat,
    psis_log_weights,
)
from pyro_models.evaluation import diagnostics  # noqa: E402
from pyro_models.inference.arviz_bridge import to_arviz  # noqa: E402
from pyro_models.models import get  # noqa: E402

# --------------------------------------------------------------------------------------------
# a Bayesian linear regression with known noise: exact leave-one-out densities in closed form

NOISE, BIAS_SCALE, WEIGHT_SCALE = 0.5, 5.0, 2.0


def _regression_data():
    g = np.random.default_rng(1)
    x = g.normal(size=(30, 2))
    y = 0.3 + x @ np.array([1.0, -0.5]) + NOISE * g.normal(size=30)
    # One influential point: far out in x and off the line, so leaving it out moves the
    # posterior a lot (its Pareto k is large) -- PSIS-LOO must flag it.
    x[0], y[0] = [3.0, -3.0], y[0] + 2.0
    return x, y


def _exact_loo(x, y):
    """log p(y_i | y_-i) for each i: the posterior without point i is Gaussian (conjugacy)."""
    z = np.column_stack([np.ones(len(y)), x])
    prior_precision = np.diag([BIAS_SCALE**-2] + [WEIGHT_SCALE**-2] * x.shape[1])
    out = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        cov = np.linalg.inv(prior_precision + z[keep].T @ z[keep] / NOISE**2)
        mean = cov @ z[keep].T @ y[keep] / NOISE**2
        out.append(stats.norm.logpdf(y[i], z[i] @ mean, np.sqrt(NOISE**2 + z[i] @ cov @ z[i])))
    return np.array(out)


def _regression_model():
    return get("linear_regression")(weight_scale=WEIGHT_SCALE, bias_scale=BIAS_SCALE, noise_scale=NOISE)


def _intercept_only(x, y=None):
    """A clearly wrong model for the same data: ignores x."""
    bias = pyro.sample("bias", dist.Normal(torch.zeros((), dtype=x.dtype), 5.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(bias, NOISE), obs=y)


NUTS = MCMCConfig(num_chains=2, num_warmup=200, num_samples=500, jit_compile=True)


@pytest.fixture(scope="module")
def regression():
    x, y = _regression_data()
    data = {"x": torch.tensor(x), "y": torch.tensor(y)}
    return data, pyro_models.fit(_regression_model(), data, NUTS, seed=0, progress=False)


@pytest.fixture(scope="module")
def normal_svi():
    """normal_normal fitted well by the mean-field guide (the exact posterior is in its family)."""
    model = get("normal_normal")(prior_scale=2.0, noise_scale=1.0)
    y = torch.tensor([0.5, 1.5, 1.0, 0.2, 0.9], dtype=torch.float64)
    cfg = SVIConfig(num_steps=500, lr=0.05, lr_schedule="exponential", lr_final_factor=0.02,
                    num_particles=8, vectorize_particles=True)
    return model, {"y": y}, pyro_models.fit(model, {"y": y}, cfg, guide="normal", seed=0, progress=False)


# --------------------------------------------------------------------------------------------
# MCMC diagnostics


def test_mcmc_diagnostics_are_arviz_numbers(regression):
    _, res = regression
    table = mcmc_diagnostics(res)
    assert list(table.columns) == ["mean", "sd", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat"]
    assert list(table.index) == ["bias", "weight[0]", "weight[1]"]
    idata = res.to_inference_data(predictive=False, log_likelihood=False)
    post = idata.posterior
    # Computed by ArviZ, not re-implemented: the same numbers as ArviZ's own functions.
    np.testing.assert_allclose(table.loc["bias", "r_hat"], float(az.rhat(post)["bias"]), rtol=1e-12)
    np.testing.assert_allclose(table.loc["weight[1]", "ess_bulk"],
                               float(az.ess(post, method="bulk")["weight"][1]), rtol=1e-12)
    np.testing.assert_allclose(table.loc["weight[0]", "ess_tail"],
                               float(az.ess(post, method="tail")["weight"][0]), rtol=1e-12)
    np.testing.assert_allclose(table.loc["bias", "mcse_mean"], float(az.mcse(post, method="mean")["bias"]), rtol=1e-12)
    np.testing.assert_allclose(table.loc["bias", "mcse_sd"], float(az.mcse(post, method="sd")["bias"]), rtol=1e-12)
    assert table.attrs["num_chains"] == 2 and table.attrs["num_draws"] == 500
    assert table.attrs["divergences"] == res.num_divergences == 0
    np.testing.assert_allclose(table.attrs["bfmi"], az.bfmi(idata), rtol=1e-12)
    np.testing.assert_allclose(bfmi(res), az.bfmi(idata), rtol=1e-12)
    # A linear-Gaussian posterior is easy for NUTS: every check passes.
    assert table.attrs["problems"] == []
    # The ArviZ object works as input too.
    assert mcmc_diagnostics(idata, var_names="bias").index.tolist() == ["bias"]


def test_mcmc_diagnostics_names_every_problem():
    g = np.random.default_rng(0)
    chains, draws = 2, 100
    # Two chains stuck in different places, strongly autocorrelated; the energy a random walk
    # (tiny changes between draws relative to its spread: E-BFMI near 0); three divergences.
    walk = np.cumsum(g.normal(size=(chains, draws)), axis=1) * 0.1
    theta = walk + np.array([[0.0], [5.0]])
    energy = np.cumsum(g.normal(size=(chains, draws)), axis=1) * 10
    diverging = np.zeros((chains, draws), dtype=bool)
    diverging[0, :3] = True
    idata = to_arviz({"posterior": {"theta": theta},
                      "sample_stats": {"energy": energy, "diverging": diverging}})
    table = mcmc_diagnostics(idata)
    problems = " | ".join(table.attrs["problems"])
    assert "R-hat > 1.01 for theta" in problems
    assert "bulk ESS < 200" in problems and "tail ESS < 200" in problems
    assert "3 divergent transition(s)" in problems
    assert "E-BFMI < 0.3 in chain(s) [0, 1]" in problems
    assert table.attrs["divergences"] == 3


def test_mcmc_diagnostics_refuse_svi_and_junk(normal_svi):
    _, _, res = normal_svi
    with pytest.raises(ValueError, match="psis_khat"):
        mcmc_diagnostics(res)
    with pytest.raises(ValueError, match="psis_khat"):
        bfmi(res)
    with pytest.raises(TypeError, match="InferenceData"):
        mcmc_diagnostics({"theta": [1, 2]})
    no_energy = to_arviz({"posterior": {"a": np.zeros((2, 10))}, "sample_stats": {"diverging": np.zeros((2, 10), bool)}})
    with pytest.raises(ValueError, match="energy"):
        bfmi(no_energy)


# --------------------------------------------------------------------------------------------
# PSIS-LOO and compare


def test_loo_matches_exact_leave_one_out(regression):
    data, res = regression
    exact = _exact_loo(data["x"].numpy(), data["y"].numpy())
    # 1000 draws: k above min(1 - 1/log10(1000), 0.7) = 0.67 is unreliable
    with pytest.warns(ParetoKWarning, match=r"of 'y' have Pareto k > 0\.67 \(at 0[,;]"):
        out = loo(res, pointwise=True)
    assert out.n_samples == 1000 and out.n_data_points == 30 and out.elpd_i.shape == (30,)
    assert out.pareto_k[0] > 0.7 and out.warning and out.num_bad_k >= 1
    np.testing.assert_allclose(out.elpd, out.elpd_i.sum(), rtol=1e-12)

    # Where PSIS is reliable (k < 0.5) each estimate is a self-normalised importance sampling
    # estimate of p(y_i | y_-i) with ratios 1/p(y_i | theta); by the delta method its log has
    # Monte Carlo sd ~ CV_s(1/p(y_i | theta_s)) / sqrt(ESS). The errors of different points
    # share the draws, so the error of their sum is bounded by the sum of the sds.
    reliable = out.pareto_k < 0.5
    assert reliable.sum() >= 25
    inv = np.exp(-res.log_likelihood()["y"].double().numpy())
    ess = mcmc_diagnostics(res)["ess_bulk"].min()
    sd = inv.std(0) / inv.mean(0) / np.sqrt(ess)
    err = out.elpd_i - exact
    assert np.all(np.abs(err[reliable]) < 5 * sd[reliable]), (err[reliable], sd[reliable])
    assert abs(err[reliable].sum()) < 3 * sd[reliable].sum()
    # The whole elpd, bad point included, is far inside ArviZ's own (data) standard error.
    assert abs(out.elpd - exact.sum()) < 0.5 * out.se

    with pytest.warns(ParetoKWarning):
        summary = loo(res)
    assert summary.elpd_i is None and summary.pareto_k is None
    assert summary.elpd == out.elpd


def test_loo_of_svi_uses_guide_draws_as_one_chain(normal_svi):
    _, data, res = normal_svi
    out = loo(res, pointwise=True)
    assert out.n_samples == res.config.num_posterior_samples and out.n_data_points == 5
    assert not out.warning  # 1000 independent draws, no influential point
    # The same numbers ArviZ gives on the result's own InferenceData.
    ref = az.loo(res.to_inference_data(predictive=False), pointwise=True)
    np.testing.assert_allclose(out.elpd, ref["elpd_loo"], rtol=1e-10)
    np.testing.assert_allclose(out.pareto_k, ref["pareto_k"].values, rtol=1e-10)


def test_compare_ranks_the_correct_model_first(regression):
    data, res = regression
    wrong = pyro_models.fit(_intercept_only, data, MCMCConfig(num_chains=2, num_warmup=150, num_samples=300,
                                                               jit_compile=True), seed=0, progress=False)
    with pytest.warns(ParetoKWarning, match="of model 'linear'"):
        table = compare({"intercept only": wrong, "linear": res})
    assert list(table.index) == ["linear", "intercept only"]
    assert list(table.columns) == ["rank", "elpd", "p", "elpd_diff", "weight", "se", "dse", "warning"]
    assert table.loc["linear", "rank"] == 0 and table.loc["linear", "elpd_diff"] == 0
    # The intercept-only model misses a signal of sd ~1.1 against noise 0.5 at 30 points: it is
    # worse by tens of nats, beyond twice the standard error of the difference (the usual bar;
    # dse is wide here because the misfit is concentrated on the points far from the mean).
    assert table.loc["intercept only", "elpd_diff"] > 20
    assert table.loc["intercept only", "elpd_diff"] > 2 * table.loc["intercept only", "dse"]
    np.testing.assert_allclose(table["weight"].sum(), 1.0, atol=1e-6)
    assert table.loc["linear", "weight"] > 0.99
    assert bool(table.loc["linear", "warning"]) and not bool(table.loc["intercept only", "warning"])


def test_compare_validates_its_input(regression, normal_svi):
    _, res = regression
    _, _, other = normal_svi
    with pytest.raises(ValueError, match="at least two"):
        compare({"a": res})
    with pytest.raises(TypeError, match="dict of model name"):
        compare({"a": res, "b": "not a fit"})
    with pytest.raises(ValueError, match="ic must be 'loo'"):
        compare({"a": res, "b": res}, ic="waic")
    with pytest.raises(ValueError, match="method must be one of"):
        compare({"a": res, "b": res}, method="vote")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        with pytest.raises(ValueError, match="same observations"):
            compare({"regression": res, "normal": other})
    with pytest.raises(KeyError, match="no observed site 'z'"):
        loo(res, var_name="z")
    with pytest.raises(TypeError, match="FitResult"):
        loo("fit")


# --------------------------------------------------------------------------------------------
# PSIS k-hat of SVI fits


def test_khat_of_a_well_trained_guide_is_small(normal_svi):
    _, _, res = normal_svi
    assert res.psis_khat is not None and res.psis_khat < 0.5
    # fit's hook and the standalone function draw the same weights (seeded from the fit).
    assert psis_khat(res, num_draws=res.config.psis_draws) == res.psis_khat
    assert psis_khat(res, num_draws=2000, seed=1) < 0.5


def _exact_marginal_normal_normal(model, y):
    n = y.shape[0]
    cov = model.noise_scale.double() ** 2 * torch.eye(n, dtype=torch.float64) + model.prior_scale.double() ** 2
    return float(dist.MultivariateNormal(model.prior_loc.double().expand(n), cov).log_prob(y))


def test_khat_of_the_exact_posterior_has_constant_weights():
    model = get("normal_normal")(prior_scale=2.0, noise_scale=1.0)
    y = torch.tensor([0.5, 1.5, 1.0, 0.2, 0.9], dtype=torch.float64)
    post = model.exact_posterior(y)["mu"]

    def exact_guide(y=None):
        # fit needs a trainable parameter; one Adam step of lr 1e-9 leaves q = posterior.
        shift = pyro.param("exact_shift", torch.zeros((), dtype=torch.float64))
        pyro.sample("mu", dist.Normal(post.loc + shift, post.scale))

    res = pyro_models.fit(model, {"y": y}, SVIConfig(num_steps=1, lr=1e-9), guide=exact_guide, seed=0, progress=False)
    log_w = psis_log_weights(res, num_draws=500)
    # log p(y, mu) - log q(mu) = log p(y) for every mu when q is the posterior.
    assert np.std(log_w) < 1e-7
    np.testing.assert_allclose(log_w, _exact_marginal_normal_normal(model, y), atol=1e-7)
    assert res.psis_khat < 0.5 and psis_khat(res) < 0.5


def test_khat_of_a_too_narrow_guide_warns():
    model = get("normal_normal")(prior_scale=2.0, noise_scale=1.0)
    y = torch.tensor([0.5, 1.5, 1.0, 0.2, 0.9])
    post_sd = float(model.exact_posterior(y)["mu"].scale)

    def narrow_guide(y=None):
        # Right location, a third of the posterior sd: for Gaussians the weights' tail has
        # k = 1 - (sd_q / sd_p)^2 = 0.89.
        loc = pyro.param("narrow_loc", torch.tensor(0.0))
        pyro.sample("mu", dist.Normal(loc, post_sd / 3))

    with pytest.warns(PSISWarning, match="the guide misses posterior mass; importance-weighted estimates are "
                                         r"unreliable; try a richer guide \(lowrank_mvn, mvn, iaf\) or more steps"):
        res = pyro_models.fit(model, {"y": y}, SVIConfig(num_steps=300, lr=0.05), guide=narrow_guide, seed=0,
                              progress=False)
    assert res.psis_khat > KHAT_BAD
    with pytest.warns(PSISWarning, match="k-hat = "):
        psis_khat(res)
    assert psis_khat(res, warn=False) > KHAT_BAD


@pytest.mark.parametrize(("name", "vectorized"), [("gamma_poisson", True), ("beta_binomial", True),
                                                  ("beta_binomial", False)],
                         ids=["gamma_poisson", "beta_binomial", "beta_binomial-looped"])
def test_log_weights_estimate_the_exact_marginal_likelihood(name, vectorized, monkeypatch):
    """mean(w) estimates p(x): checks log p(x, z) - log q(z) including the Jacobians of
    constrained latents (rates > 0, probabilities in (0, 1))."""
    model = get(name)()
    if name == "gamma_poisson":
        data = {"counts": torch.tensor([3, 5, 2, 4, 6, 3])}
        a, b = float(model.concentration), float(model.rate)
        c, n = data["counts"].double().numpy(), len(data["counts"])
        # Poisson-Gamma marginal: Gamma(a + sum c) b^a / (Gamma(a) (b + n)^(a + sum c) prod c!)
        exact = (special.gammaln(a + c.sum()) - special.gammaln(a) + a * np.log(b)
                 - (a + c.sum()) * np.log(b + n) - special.gammaln(c + 1).sum())
    else:
        data = {"trials": torch.tensor([30, 40]), "successes": torch.tensor([9, 16])}
        exact = sum(stats.betabinom.logpmf(k, n, 1.0, 1.0) for k, n in ((9, 30), (16, 40)))
    res = pyro_models.fit(model, data, SVIConfig(num_steps=400, lr=0.05, psis_draws=0), guide="normal", seed=0,
                          progress=False)
    if not vectorized:  # force the loop over draws (models whose shapes do not broadcast)
        monkeypatch.setattr(diagnostics, "_VECTORIZE", False)
    log_w = psis_log_weights(res, num_draws=4000 if vectorized else 500)  # a loop is slower
    w = np.exp(log_w - log_w.max())
    estimate = log_w.max() + np.log(w.mean())
    # Importance sampling: sd of log mean(w) ~ sd(w) / (mean(w) sqrt(S)), valid for k < 0.5.
    assert diagnostics._khat(log_w) < 0.5
    se = w.std() / w.mean() / np.sqrt(len(w))
    assert abs(estimate - exact) < 4 * se + 1e-6, (estimate, exact, se)


def test_khat_is_none_where_it_does_not_apply(regression):
    _, mcmc = regression
    assert mcmc.psis_khat is None
    with pytest.raises(ValueError, match="MCMC fit"):
        psis_khat(mcmc)
    model = get("normal_normal")()
    data = model.example_data()
    cfg = SVIConfig(num_steps=50, lr=0.05)
    for guide in ("delta", ("deep_ensemble", {"members": 2}), "swag"):
        res = pyro_models.fit(model, data, cfg, guide=guide, seed=0, progress=False)
        assert res.psis_khat is None, guide
        with pytest.raises(ValueError, match="needs a guide with a density"):
            psis_khat(res)
    skipped = pyro_models.fit(model, data, SVIConfig(num_steps=50, lr=0.05, psis_draws=0), seed=0, progress=False)
    assert skipped.psis_khat is None
    with pytest.raises(ValueError, match="num_draws must be >= 25"):
        psis_khat(skipped, num_draws=10)


def test_khat_survives_save_and_load(normal_svi, tmp_path):
    model, _, res = normal_svi
    res.save(tmp_path / "fit")
    again = FitResult.load(tmp_path / "fit", model=model)
    assert again.psis_khat == res.psis_khat
    assert psis_khat(again) == res.psis_khat  # the same guide, the same seeded draws


# --------------------------------------------------------------------------------------------
# prior predictive


def test_prior_predictive_normal_normal_matches_closed_form():
    model = get("normal_normal")(prior_loc=1.0, prior_scale=2.0, noise_scale=0.5)
    s = 4000
    draws = prior_predictive(model, {"y": torch.zeros(3)}, num_samples=s, seed=0)
    assert draws["mu"].shape == (s,) and draws["y"].shape == (s, 3)
    y = draws["y"].double().numpy()
    # y_n = mu + e_n: mean 1, variance 2^2 + 0.5^2 = 4.25, covariance 4 between n != m.
    # Standard errors: sqrt(4.25 / S) = 0.033 for means; var * sqrt(2 / S) = 0.095 for variances.
    np.testing.assert_allclose(y.mean(0), 1.0, atol=4 * math.sqrt(4.25 / s))
    np.testing.assert_allclose(y.var(0), 4.25, atol=4 * 4.25 * math.sqrt(2 / s))
    np.testing.assert_allclose(np.cov(y.T)[0, 1], 4.0, atol=4 * 4.25 * math.sqrt(2 / s))
    assert not np.allclose(y, 0.0)  # the observed zeros fixed N only; they were replaced


def test_prior_predictive_beta_binomial_matches_closed_form():
    a, b = 2.0, 3.0
    trials = torch.tensor([10, 40])
    s = 4000
    draws = prior_predictive(get("beta_binomial")(alpha=a, beta=b), {"trials": trials}, num_samples=s, seed=1)
    k = draws["successes"].double().numpy()
    for j, n in enumerate(trials.tolist()):
        mean = n * a / (a + b)
        var = n * a * b * (a + b + n) / ((a + b) ** 2 * (a + b + 1))
        # sd of a sample mean sqrt(var / S); of a sample variance ~ var sqrt((kurtosis - 1) / S),
        # below 3 var / sqrt(S) for this bounded distribution.
        assert abs(k[:, j].mean() - mean) < 4 * math.sqrt(var / s)
        assert abs(k[:, j].var() - var) < 4 * 3 * var / math.sqrt(s)
    np.testing.assert_allclose(draws["p"].mean(0).numpy(), a / (a + b), atol=4 * 0.2 / math.sqrt(s))


def test_prior_predictive_plain_callable_seed_and_errors():
    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.deterministic("f", w * x)
            pyro.sample("y", dist.Normal(w * x, 0.1), obs=y)

    x = torch.linspace(-1, 1, 4)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = prior_predictive(model, {"x": x, "y": torch.zeros(4)}, num_samples=50, seed=7)
    assert torch.equal(torch.get_rng_state(), before)  # a seeded call leaves the global RNG alone
    b = prior_predictive(model, {"x": x}, num_samples=50, seed=7)
    assert set(a) == {"w", "f", "y"} and a["y"].shape == (50, 4) and a["f"].shape == (50, 4)
    torch.testing.assert_close(a["w"], b["w"])
    torch.testing.assert_close(a["f"], a["w"][:, None] * x)
    with pytest.raises(ValueError, match="improper"):
        prior_predictive(get("linear_regression")(weight_scale=None), {"x": torch.ones(3, 2)})
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        prior_predictive(model, {"x": x}, num_samples=0)
    with pytest.raises(ValueError, match="seed"):
        prior_predictive(model, {"x": x}, seed=-1)
    with pytest.raises(ValueError, match="y: expected shape"):
        prior_predictive("linear_regression", {"x": torch.ones(3, 2), "y": torch.ones(2)})


# --------------------------------------------------------------------------------------------
# plots


def _stairs(ax):
    return [p for p in ax.patches if type(p).__name__ == "StepPatch"]


def test_plot_ppc_kde_and_hist(normal_svi):
    _, data, res = normal_svi
    fig = plot_ppc(res, num_draws=20)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    # 20 replicates, their pooled density, the observed data
    assert len(fig.axes[0].lines) == 22
    fig = plot_ppc(res, kind="hist", num_draws=15)
    ax = fig.axes[0]
    steps = _stairs(ax)
    assert len(steps) == 17 and not ax.lines
    observed = steps[-1]
    edges = observed.get_data().edges
    expected = np.histogram(data["y"].numpy(), bins=edges, density=True)[0]
    np.testing.assert_allclose(observed.get_data().values, expected)
    assert observed.get_label() == "observed"


def test_plot_ppc_new_data_given_axes_and_errors(normal_svi):
    _, _, res = normal_svi
    fig = Figure()
    ax = fig.subplots()
    out = plot_ppc(res, {"y": torch.tensor([0.1, 0.4, 2.0])}, num_draws=5, ax=ax)
    assert out is fig and len(ax.lines) == 7
    with pytest.raises(ValueError, match="kind must be one of"):
        plot_ppc(res, kind="violin")
    with pytest.raises(ValueError, match="num_draws must be >= 1"):
        plot_ppc(res, num_draws=0)
    with pytest.raises(KeyError, match="unknown observed site"):
        plot_ppc(res, var_names="z")
    with pytest.raises(ValueError, match="need 1 axes"):
        plot_ppc(res, ax=list(Figure().subplots(1, 2)))
    with pytest.raises(TypeError, match="FitResult"):
        plot_ppc(None)


def test_plot_ppc_discrete_data_uses_integer_bins():
    data = {"trials": torch.tensor([30, 40, 50]), "successes": torch.tensor([9, 16, 20])}
    res = pyro_models.fit("beta_binomial", data, SVIConfig(num_steps=100, lr=0.05), seed=0, progress=False)
    ax = plot_ppc(res, kind="kde", num_draws=10).axes[0]
    steps = _stairs(ax)
    assert len(steps) == 12 and not ax.lines  # integer counts have no density: histograms
    np.testing.assert_allclose(np.diff(steps[0].get_data().edges), 1.0)


def test_plot_prior_predictive():
    fig = plot_prior_predictive("normal_normal", {"y": torch.tensor([0.5, 1.5, 1.0, 3.0])}, num_draws=10, seed=0)
    assert isinstance(fig, Figure) and len(fig.axes[0].lines) == 12
    # Without observed values: replicates and their pooled density, no observed curve.
    ax = plot_prior_predictive("linear_regression", {"x": torch.randn(8, 2)}, num_draws=6, seed=0).axes[0]
    assert len(ax.lines) == 7 and all(line.get_label() != "observed" for line in ax.lines)
    # One value per replicate (normal_normal draws N = 1 without y): the pooled density only.
    ax = plot_prior_predictive("normal_normal", {}, num_draws=50, seed=0, kind="hist").axes[0]
    assert len(_stairs(ax)) == 1
    with pytest.raises(ValueError, match="improper"):
        plot_prior_predictive(get("linear_regression")(weight_scale=None), {"x": torch.ones(3, 2)})
