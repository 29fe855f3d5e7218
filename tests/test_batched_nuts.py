"""The batched many-chain NUTS engine (``MCMCConfig(backend="batched")``).

Tolerances come from Monte Carlo error: for a scalar with ArviZ bulk ESS ``n``, the mean's
standard error is ``sd / sqrt(n)`` and, for light-tailed targets, the sd's is about
``sd / sqrt(2 n)``. Every check allows Z = 4 standard errors, so a correct sampler fails a
given comparison with probability ~6e-5; seeds are fixed, so a run always passes or always
fails.
"""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_models
from pyro_models import DivergenceWarning, MCMCConfig, models
from pyro_models.inference.batched_nuts import BatchedNUTS, ModelNotVectorizableError, adaptation_schedule
from pyro_models.inference.batched_potential import BatchedPotential
from pyro_models.inference.checkpoint import CHECKPOINT_NAME
from pyro_models.inference.mcmc import BatchedFallbackWarning

from posterior_reference import assert_matches, compare, eight_schools_noncentered, flatten_draws

Z = 4.0


def _run(nuts: BatchedNUTS, warmup: int, draws: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(chain, draw, D) draws and (chain, draw) stats after ``warmup`` iterations."""
    for _ in range(warmup):
        nuts.step()
    out = [nuts.step() for _ in range(draws)]
    z = torch.stack([o["z"] for o in out], 1).numpy()
    stats = {k: torch.stack([o[k] for o in out], 1).numpy() for k in out[0] if k != "z"}
    return z, stats


def _check_mean_sd(x: np.ndarray, mean: float, sd: float, what: str) -> None:
    """x (chain, draw): mean and sd within Z Monte Carlo standard errors of the exact values."""
    ess = float(az.ess(x, method="bulk"))
    assert ess > 200, f"{what}: ESS {ess:.0f} too low for a meaningful check"
    assert abs(x.mean() - mean) < Z * sd / np.sqrt(ess), (what, x.mean(), mean, ess)
    assert abs(x.std(ddof=1) / sd - 1) < Z / np.sqrt(2 * ess), (what, x.std(ddof=1), sd, ess)


# ------------------------------------------------------------------ closed-form targets


def test_standard_normal_and_lockstep_masks_with_per_chain_targets():
    """Each chain gets its own scale (rows of a batched potential are independent), with a
    fixed step size, so chains need very different tree depths at every iteration: a chain
    that stops early must freeze while the others keep doubling, and still target its own
    N(0, scale_c^2) exactly."""
    scales = torch.tensor([0.4, 1.0, 2.5]).repeat_interleave(2).unsqueeze(-1)  # (6, 1)

    def pot(q):
        return 0.5 * ((q / scales) ** 2).sum(-1), q / scales**2

    nuts = BatchedNUTS(pot, torch.zeros(6, 2), num_warmup=0, step_size=0.4, seed=1,
                       adapt_step_size=False, adapt_mass_matrix=False)
    z, stats = _run(nuts, 20, 800)
    depth, steps = stats["tree_depth"], stats["n_steps"]
    # Trees stop at different depths within the same iterations...
    assert (depth.max(0) > depth.min(0)).mean() > 0.8
    assert depth[:2].mean() < 2.5 < depth[-2:].mean()
    # ... and each stopped tree holds between 2^(d-1) and 2^d - 1 leapfrog steps.
    assert np.all(steps >= 2 ** (depth - 1)) and np.all(steps <= 2**depth - 1)
    assert not stats["diverging"].any()
    for c in range(6):
        for j in range(2):
            _check_mean_sd(z[c : c + 1, :, j], 0.0, float(scales[c]), f"chain {c} dim {j}")


@pytest.mark.parametrize("dense", [False, True], ids=["diag_mass", "dense_mass"])
def test_correlated_gaussian_covariance(dense):
    """N(m, S) with correlation 0.9 and scales 1 / 10: means, sds and the covariance."""
    mean = torch.tensor([1.0, -2.0])
    sd = torch.tensor([1.0, 10.0])
    cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]]) * sd.outer(sd)
    prec = torch.linalg.inv(cov)

    def pot(q):
        d = q - mean
        g = d @ prec
        return 0.5 * (g * d).sum(-1), g

    nuts = BatchedNUTS(pot, torch.zeros(8, 2), num_warmup=250, dense_mass=dense, seed=2)
    z, stats = _run(nuts, 250, 300)
    for j in range(2):
        _check_mean_sd(z[..., j], float(mean[j]), float(sd[j]), f"dim {j}")
    # The covariance as the mean of the centred product, with its own Monte Carlo error.
    prod = (z[..., 0] - float(mean[0])) * (z[..., 1] - float(mean[1]))
    se = float(az.mcse(prod, method="mean"))
    assert abs(prod.mean() - float(cov[0, 1])) < Z * se, (prod.mean(), float(cov[0, 1]), se)
    if dense:
        # A dense metric makes this target isotropic: short trees, near-independent draws.
        assert stats["tree_depth"].mean() < 3.0
    assert nuts.inverse_mass_matrix.shape == ((8, 2, 2) if dense else (8, 2))


def test_adaptation_schedule_matches_stan():
    assert adaptation_schedule(1000) == [(0, 74), (75, 99), (100, 149), (150, 249), (250, 449),
                                         (450, 949), (950, 999)]
    assert adaptation_schedule(100) == [(0, 14), (15, 89), (90, 99)]
    assert adaptation_schedule(0) == []


# ------------------------------------------------------------------ registry models via fit()

_g = torch.Generator().manual_seed(123)
CONJUGATE = {
    "beta_binomial": ({}, {"trials": [1000, 1000], "successes": [112, 135]}, "p"),
    "normal_normal": ({"prior_loc": 0.0, "prior_scale": 10.0, "noise_scale": 1.0},
                      {"y": (torch.randn(50, generator=_g) + 1.3).tolist()}, "mu"),
    "gamma_poisson": ({"concentration": 2.0, "rate": 1.0},
                      {"counts": torch.poisson(torch.full((40,), 3.2), generator=_g).long().tolist()}, "rate"),
    # A simplex latent: K = 3 constrained numbers but 2 unconstrained ones, so the flat
    # vector's layout differs from the site's shape.
    "dirichlet_multinomial": ({"concentration": [1.0, 2.0, 1.5]},
                              {"counts": [[2, 5, 3], [1, 0, 1]]}, "probs"),
}


@pytest.mark.parametrize("name", sorted(CONJUGATE))
def test_conjugate_models_match_exact_posterior(name):
    hp, data, site = CONJUGATE[name]
    model = models.get(name)(**hp)
    post = model.exact_posterior(**model.validate_data(data))[site]
    mean, sd = post.mean.flatten(), post.variance.sqrt().flatten()
    cfg = MCMCConfig(num_chains=8, num_warmup=200, num_samples=200, backend="batched")
    res = pyro_models.fit(model, data, cfg, seed=0, progress=False)
    draws = res.samples()[site].reshape(8, 200, -1).numpy()
    assert set(res.sample_stats) == {"diverging", "energy", "tree_depth", "n_steps", "step_size",
                                     "acceptance_rate", "lp"}
    assert all(v.shape == (8, 200) for v in res.sample_stats.values())
    for j in range(draws.shape[-1]):
        _check_mean_sd(draws[..., j], mean[j].item(), sd[j].item(), f"{name}[{j}]")


def correlated_pair(y, scale):
    """Bivariate normal with known scales; only the correlation (via LKJCholesky) is latent."""
    chol = pyro.sample("L", dist.LKJCholesky(2, 2.0))
    with pyro.plate("n", y.shape[0]):
        pyro.sample("y", dist.MultivariateNormal(torch.zeros(2), scale_tril=scale[:, None] * chol), obs=y)


def test_lkj_cholesky_correlation_matches_quadrature():
    """A 2 x 2 correlation Cholesky factor has 4 constrained entries and 1 unconstrained one.

    Its only free entry is rho = L[1, 0], so the exact posterior of rho is a 1-d integral:
    prior and likelihood are evaluated on a fine grid with the distributions' own log_prob,
    independently of the sampler's transforms and Jacobians.
    """
    g = torch.Generator().manual_seed(7)
    scale = torch.tensor([1.0, 2.0])
    true_cov = torch.tensor([[1.0, 0.6], [0.6, 1.0]]) * scale.outer(scale)
    y = torch.randn(15, 2, generator=g) @ torch.linalg.cholesky(true_cov).T

    # Exact posterior moments of rho by quadrature (float64, 40001 points on (-1, 1): the
    # trapezoid error is far below the Monte Carlo error of the check).
    rho = torch.linspace(-1, 1, 40003, dtype=torch.float64)[1:-1]
    chol = torch.zeros(rho.shape + (2, 2), dtype=torch.float64)
    chol[:, 0, 0], chol[:, 1, 0], chol[:, 1, 1] = 1.0, rho, (1 - rho**2).sqrt()
    scale64 = scale.double()
    logp = dist.LKJCholesky(2, torch.tensor(2.0, dtype=torch.float64)).log_prob(chol)
    logp = logp + dist.MultivariateNormal(torch.zeros(2, dtype=torch.float64),
                                          scale_tril=scale64[:, None] * chol[:, None]).log_prob(y.double()).sum(-1)
    w = (logp - logp.max()).exp()
    w = w / torch.trapezoid(w, rho)
    mean = float(torch.trapezoid(w * rho, rho))
    sd = float(torch.trapezoid(w * (rho - mean) ** 2, rho).sqrt())

    cfg = MCMCConfig(num_chains=8, num_warmup=200, num_samples=250, backend="batched")
    res = pyro_models.fit(correlated_pair, {"y": y, "scale": scale}, cfg, seed=0, progress=False)
    draws = res.samples()["L"]
    assert draws.shape == (8, 250, 2, 2)
    # Every draw is a valid correlation Cholesky factor: lower triangular, unit-norm rows.
    assert torch.all(draws[..., 0, 1] == 0)
    assert torch.allclose(draws.square().sum(-1), torch.ones(()), atol=1e-5)
    _check_mean_sd(draws[..., 1, 0].numpy(), mean, sd, "rho")


def mixed_layout(counts, y):
    """Sites whose unconstrained sizes differ from their constrained ones, next to one
    whose do not, so that a wrong offset for one shifts all the others."""
    corr = pyro.sample("corr", dist.LKJCholesky(3, 1.5))  # 9 constrained, 3 unconstrained
    sd = pyro.sample("sd", dist.HalfNormal(torch.ones(3)).to_event(1))
    with pyro.plate("groups", counts.shape[0]):
        probs = pyro.sample("probs", dist.Dirichlet(torch.ones(4)))  # (2, 4) -> (2, 3)
        pyro.sample("counts", dist.Multinomial(20, probs), obs=counts)
    with pyro.plate("n", y.shape[0]):
        pyro.sample("y", dist.MultivariateNormal(torch.zeros(3), scale_tril=sd[..., None] * corr), obs=y)


def test_batched_potential_layout_matches_pyro_for_dimension_changing_sites():
    """Potential and gradient against Pyro's per-chain potential at random points (exact up
    to float32 rounding), and constrain / unconstrain round trips."""
    g = torch.Generator().manual_seed(3)
    data = {"counts": torch.tensor([[5.0, 5, 5, 5], [1, 2, 3, 14]]), "y": torch.randn(20, 3, generator=g)}
    pyro.set_rng_seed(0)
    pot = BatchedPotential(mixed_layout, data, num_chains=4, max_plate_nesting=1)
    assert pot.dim == 3 + 3 + 2 * 3
    assert pot.site_shapes() == {"corr": (3, 3), "sd": (3,), "probs": (2, 4)}
    q = pot.initial_params + 0.5 * torch.randn(pot.initial_params.shape, generator=g)
    pot.verify(q)
    x = pot.constrain(q)
    assert {k: tuple(v.shape) for k, v in x.items()} == {"corr": (4, 3, 3), "sd": (4, 3), "probs": (4, 2, 4)}
    assert torch.allclose(x["probs"].sum(-1), torch.ones(()), atol=1e-6)
    assert torch.allclose(pot.unconstrain(x), q, atol=1e-4)


def test_eight_schools_compiled_matches_posteriordb(posteriordb):
    """Compiled batched NUTS against Stan's reference (criteria of test_posteriordb.py).

    8 x 1250 draws: bulk ESS above ~2500 for every parameter puts the bounds (0.15 sd on the
    mean, 10% on the sd) beyond 4 standard errors, including tau's heavy-tailed sd.
    """
    ref = posteriordb("eight_schools-eight_schools_noncentered")
    d = ref["data"]
    data = {"J": d["J"], "sigma": torch.tensor(d["sigma"]), "y": torch.tensor(d["y"])}
    cfg = MCMCConfig(num_chains=8, num_warmup=1000, num_samples=1250, target_accept=0.9,
                     backend="batched", jit_compile=True)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always", DivergenceWarning)
        res = pyro_models.fit(eight_schools_noncentered, data, cfg, seed=0, progress=False)
    draws = {k: v.numpy() for k, v in res.samples().items()}
    assert draws["theta"].shape == (8, 1250, 8)  # deterministic site, as on the Pyro path
    rows = compare(flatten_draws(draws, list(ref["reference"]["params"])), ref)
    assert_matches(rows)
    assert res.num_divergences <= 0.005 * 10000


def test_centred_eight_schools_flags_divergences():
    """A step size the funnel's neck cannot take: most trajectories there blow up."""
    data = {"y": [28.0, 8, -3, 7, -1, 1, 18, 12], "sigma": [15.0, 10, 16, 11, 9, 11, 10, 18]}
    cfg = MCMCConfig(num_chains=4, num_warmup=0, num_samples=150, step_size=1.0, max_tree_depth=6,
                     backend="batched")
    with pytest.warns(DivergenceWarning, match="target_accept"):
        res = pyro_models.fit("eight_schools_centered", data, cfg, seed=0, progress=False)
    div = res.sample_stats["diverging"]
    assert div.dtype == torch.bool and int(div.sum()) == res.num_divergences > 100
    # A divergent trajectory stops at once: its tree is never longer than the others'.
    depth = res.sample_stats["tree_depth"].float()
    assert depth[div].mean() <= depth[~div].mean()


# ------------------------------------------------------------------ fallback, plumbing


def branchy(y):
    """Python control flow on a latent value: fine for one chain, impossible to batch."""
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    scale = 1.0 if x > 0 else 2.0
    pyro.sample("y", dist.Normal(x, scale), obs=y)


def test_unbatchable_model_falls_back_or_raises():
    data = {"y": torch.tensor(0.3)}
    with pytest.raises(ModelNotVectorizableError, match="backend='pyro'"):
        pyro_models.fit(branchy, data, MCMCConfig(num_chains=2, num_warmup=10, num_samples=10, backend="batched"),
                        seed=0, progress=False)
    cfg = MCMCConfig(num_chains=1, num_warmup=10, num_samples=10, backend="auto")
    with pytest.warns(BatchedFallbackWarning, match="falling back to Pyro"):
        res = pyro_models.fit(branchy, data, cfg, seed=0, progress=False)
    assert res.samples()["x"].shape == (1, 10)


def test_config_validates_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        MCMCConfig(backend="jax")
    with pytest.raises(ValueError, match="NUTS only"):
        MCMCConfig(backend="batched", kernel="hmc")


def test_reproducible_and_resumable(tmp_path):
    data = {"y": [0.5, 1.5, 1.0, 2.0]}
    cfg = MCMCConfig(num_chains=3, num_warmup=40, num_samples=60, checkpoint_every=20, backend="batched")
    full = pyro_models.fit("normal_normal", data, cfg, seed=4, progress=False)
    again = pyro_models.fit("normal_normal", data, cfg, seed=4, progress=False)
    assert torch.equal(full.samples()["mu"], again.samples()["mu"])
    other = pyro_models.fit("normal_normal", data, cfg, seed=5, progress=False)
    assert not torch.equal(full.samples()["mu"], other.samples()["mu"])

    class Interrupt:
        def __init__(self):
            self.seen = 0

        def on_step(self, info):
            assert info["engine"] == "mcmc" and 0 <= info["chain"] < 3
            self.seen += 1
            if info["iteration"] == 40 + 50 and info["chain"] == 1:
                raise KeyboardInterrupt

    cb = Interrupt()
    with pytest.raises(KeyboardInterrupt):
        pyro_models.fit("normal_normal", data, cfg, seed=4, progress=False, checkpoint_dir=tmp_path, callbacks=[cb])
    assert cb.seen == 3 * 89 + 2  # every chain, every iteration, until the interrupt
    ck = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert ck["engine"] == "mcmc_batched" and ck["done"] == 50 and not ck["complete"]
    resumed = pyro_models.fit("normal_normal", data, cfg, seed=4, progress=False, checkpoint_dir=tmp_path)
    assert torch.equal(full.samples()["mu"], resumed.samples()["mu"])
    assert torch.equal(full.sample_stats["n_steps"], resumed.sample_stats["n_steps"])
    # A completed run is reloaded, not rerun.
    calls = []
    pyro_models.fit("normal_normal", data, cfg, seed=4, progress=False, checkpoint_dir=tmp_path,
                    callbacks=[lambda info: calls.append(info)])
    assert calls == []


@pytest.mark.gpu
def test_many_chains_on_cuda():
    data = {"y": (torch.randn(50, generator=torch.Generator().manual_seed(0)) + 1.3).tolist()}
    model = models.get("normal_normal")()
    post = model.exact_posterior(**model.validate_data(data))["mu"]
    cfg = MCMCConfig(num_chains=256, num_warmup=200, num_samples=100, backend="batched")
    res = pyro_models.fit(model, data, cfg, seed=0, progress=False, device="cuda")
    x = res.samples()["mu"].numpy()
    assert x.shape == (256, 100)
    _check_mean_sd(x, float(post.mean), float(post.stddev), "mu")
