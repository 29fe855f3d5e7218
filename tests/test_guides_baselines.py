"""The practical baselines as guides: deep ensembles, SWAG, MC dropout.

Correctness where an exact answer exists: with known noise and a Gaussian prior, linear
regression's posterior is Gaussian, so its mode (what every ensemble member and SWAG's mean
converge to) is the closed-form posterior mean. Optimisation, not Monte Carlo, sets those
tolerances: Adam at the stated budget lands within ~1e-3 of the optimum on this problem,
so 0.02 posterior sd leaves a wide margin without hiding a wrong objective (a member that
optimised the likelihood alone or the prior alone would be off by > 1 sd here).
"""

from __future__ import annotations

import pytest
import torch

import pyro_models
from pyro_models import MCMCConfig, SVIConfig, guides, models
from pyro_models.inference.arviz_bridge import group_names


@pytest.fixture(scope="module")
def linreg():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 2, generator=g)
    y = x @ torch.tensor([1.5, -0.7]) + 0.4 + 0.5 * torch.randn(50, generator=g)
    model = models.get("linear_regression")(weight_scale=1.0, bias_scale=1.0, noise_scale=0.5)
    post = model.exact_joint_posterior(x, y)  # over [bias, weight_0, weight_1]
    return model, {"x": x, "y": y}, post.mean, post.covariance_matrix.diagonal().sqrt()


def _bnn_data(n=120):
    g = torch.Generator().manual_seed(1)
    x = 4 * torch.rand(n, 1, generator=g) - 2
    return {"x": x, "y": torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(n, generator=g)}


def test_every_baseline_is_registered():
    assert {"deep_ensemble", "swag", "mc_dropout"} <= set(guides.available())
    assert guides.entry("deep_ensemble").options() == {"members": 5, "init_loc": "sample"}


def test_ensemble_members_are_each_the_exact_map(linreg):
    model, data, mean, sd = linreg
    res = pyro_models.fit(model, data, SVIConfig(num_steps=1500, lr=0.05, num_posterior_samples=8),
                          guide=("deep_ensemble", {"members": 4}), seed=0, progress=False)
    assert res.config.num_particles == 4 and res.config.vectorize_particles
    assert res.guide._cycle == 0, "members must train as one vectorised batch, not one at a time"
    members = res.guide.member_values()
    got = torch.cat([members["bias"][:, None], members["weight"]], -1)  # (M, 3)
    assert ((got - mean) / sd).abs().max() < 0.02
    draws = res.samples()
    assert draws["weight"].shape == (8, 2)
    assert torch.equal(draws["weight"][:4], draws["weight"][4:])  # members in turn


def test_ensemble_members_start_apart_and_disagree_away_from_data():
    data = _bnn_data()
    model = models.get("bnn_regression")(in_features=1, hidden_sizes=[16])
    res = pyro_models.fit(model, data, SVIConfig(num_steps=800, lr=0.01, num_posterior_samples=5),
                          guide=("deep_ensemble", {"members": 5}), seed=0, progress=False)
    w = res.guide.member_values()["net.0.weight"]
    assert torch.cdist(w.flatten(1), w.flatten(1)).fill_diagonal_(1e9).min() > 1e-2  # distinct members
    pred = res.predict({"x": torch.tensor([[0.0], [6.0]])})
    assert pred.epistemic_var[1] > 10 * pred.epistemic_var[0]


def test_swag_mean_is_the_map_and_draws_spread(linreg):
    model, data, mean, sd = linreg
    cfg = SVIConfig(num_steps=2000, lr=0.01, num_posterior_samples=400)
    res = pyro_models.fit(model, data, cfg, guide=("swag", {"rank": 5, "swa_start": 0.5, "collect_every": 2}),
                          seed=0, progress=False)
    assert int(res.guide.num_collected) == 500  # steps 1001..2000, every 2nd
    draws = res.samples()
    got = torch.cat([draws["bias"][:, None], draws["weight"]], -1)
    # SWAG's centre is the running mean of the late trajectory, which sits on the MAP.
    swa = res.guide.mean_values()
    centre = torch.cat([swa["bias"][None], swa["weight"]])
    assert ((centre - mean) / sd).abs().max() < 0.05
    assert bool(torch.isfinite(got).all())
    # Full-batch gradients are deterministic, so the trajectory (and SWAG) collapses onto the
    # MAP; the spread SWAG reads as uncertainty comes from minibatch gradient noise.
    assert got.std(0).max() < 0.05 * sd.min()
    noisy = pyro_models.fit(model, data, SVIConfig(num_steps=2000, lr=0.01, batch_size=10, num_posterior_samples=400),
                            guide=("swag", {"rank": 5}), seed=0, progress=False)
    d = noisy.samples()
    spread = torch.cat([d["bias"][:, None], d["weight"]], -1).std(0)
    assert bool((spread > 10 * got.std(0)).all())


def test_swag_diagonal_and_too_few_snapshots(linreg):
    model, data, *_ = linreg
    res = pyro_models.fit(model, data, SVIConfig(num_steps=200, lr=0.05, num_posterior_samples=50),
                          guide=("swag", {"rank": 0}), seed=0, progress=False)
    assert res.samples()["weight"].shape == (50, 2)
    with pytest.raises(RuntimeError, match="at least 2"):
        pyro_models.fit(model, data, SVIConfig(num_steps=2, lr=0.05), guide=("swag", {"swa_start": 0.9}),
                        seed=0, progress=False)
    with pytest.raises(ValueError, match="rank"):
        guides.get("swag")(model, rank=1)


def test_mc_dropout_needs_dropout_and_varies_by_masks_only():
    data = _bnn_data()
    plain = models.get("bnn_regression")(in_features=1, hidden_sizes=[16])
    assert guides.incompatibility("mc_dropout", plain) is not None
    with pytest.raises((TypeError, ValueError), match="dropout"):
        pyro_models.fit(plain, data, SVIConfig(num_steps=5), guide="mc_dropout", seed=0, progress=False)
    model = models.get("bnn_regression")(in_features=1, hidden_sizes=[32], dropout=0.2)
    res = pyro_models.fit(model, data, SVIConfig(num_steps=600, lr=0.01, num_posterior_samples=50),
                          guide="mc_dropout", seed=0, progress=False)
    w = res.samples()["net.0.weight"]
    assert torch.equal(w, w[:1].expand_as(w))  # one set of weights: the MAP
    pred = res.predict({"x": torch.tensor([[0.0], [1.0]])})
    assert bool((pred.epistemic_var > 0).all())  # T passes with fresh dropout masks differ
    with pytest.raises(ValueError, match="SVIConfig"):
        pyro_models.fit(model, data, MCMCConfig(num_samples=5, num_warmup=5), seed=0, progress=False)


@pytest.mark.parametrize("guide", ["deep_ensemble", "swag", "mc_dropout"])
def test_baseline_results_behave_like_every_result(guide, tmp_path):
    model = models.get("bnn_regression")(in_features=1, hidden_sizes=[8], dropout=0.1 if guide == "mc_dropout" else 0.0)
    data = _bnn_data(60)
    res = pyro_models.fit(model, data, SVIConfig(num_steps=100, lr=0.01, num_posterior_samples=20),
                          guide=guide, seed=0, progress=False)
    assert res.samples()["sigma"].shape == (20,)
    pred = res.predict({"x": torch.zeros(7, 1)})
    assert pred["y"].shape == (20, 7) and pred.total_var.shape == (7,)
    assert res.log_likelihood()["y"].shape == (20, 60)
    assert "sigma" in res.summary().index
    assert {"posterior", "posterior_predictive", "log_likelihood"} <= set(group_names(res.to_inference_data()))
    again = pyro_models.FitResult.load(res.save(tmp_path / guide))
    if guide != "mc_dropout":  # dropout masks are fresh random draws, weights are equal
        assert torch.allclose(again.samples()["sigma"], res.samples()["sigma"])
    assert torch.equal(again.samples()["net.0.weight"][0], res.samples()["net.0.weight"][0]) or guide == "swag"
