"""The practical baselines as guides: deep ensembles, SWAG, MC dropout.

Correctness where an exact answer exists: with known noise and a Gaussian prior, linear
regression's posterior is Gaussian, so its mode (what every ensemble member and SWAG's mean
converge to) is the closed-form posterior mean. Optimisation, not Monte Carlo, sets those
tolerances: Adam at the stated budget lands within ~1e-3 of the optimum on this problem,
so 0.02 posterior sd leaves a wide margin without hiding a wrong objective (a member that
optimised the likelihood alone or the prior alone would be off by > 1 sd here).
"""

from __future__ import annotations

import contextlib
import dataclasses

import pyro
import pyro.distributions as dist
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


_SIGMA, _PRIOR = 0.5, 1.0  # known noise sd, prior sd of each coefficient


def _plain_linreg(broadcast: bool):
    """A plain-function linear regression with known noise: ``X @ beta`` (as users write it,
    no extra leading dim allowed) or the same mean written to broadcast over one."""
    def model(X, y=None):
        beta = pyro.sample("beta", dist.Normal(torch.zeros(3), _PRIOR).to_event(1))
        mean = (X * beta).sum(-1) if broadcast else X @ beta
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(mean, _SIGMA), obs=y)
    return model


@pytest.fixture(scope="module")
def plain_linreg_data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 3, generator=g)
    y = X @ torch.tensor([1.0, -1.0, 0.5]) + _SIGMA * torch.randn(30, generator=g)
    return {"X": X, "y": y}


@pytest.mark.parametrize("broadcast", [False, True], ids=["matmul_loops", "broadcasting_vectorises"])
def test_ensemble_of_a_model_without_a_member_dim_trains_each_member_to_the_map(broadcast, plain_linreg_data):
    X, y = plain_linreg_data["X"].double(), plain_linreg_data["y"].double()
    # Normal prior, known noise: the posterior is Gaussian and its mode is the ridge solution.
    prec = X.T @ X / _SIGMA**2 + torch.eye(3) / _PRIOR**2
    ridge = torch.linalg.solve(prec, X.T @ y / _SIGMA**2)
    sd = torch.linalg.inv(prec).diagonal().sqrt()
    ols = torch.linalg.solve(X.T @ X, X.T @ y)
    # The prior moves the mode by > 0.1 sd, so the 1e-3 sd below tells the MAP from the MLE.
    assert ((ols - ridge) / sd).abs().max() > 0.1
    model = _plain_linreg(broadcast)
    # Full-batch SGD on this quadratic converges geometrically; 300 steps reach float32's floor
    # (~1e-5 sd here), which 1e-3 sd clears by two orders of magnitude.
    cfg = SVIConfig(num_steps=300, lr=0.005, optimizer="sgd", num_posterior_samples=8)
    start = pyro_models.fit(model, plain_linreg_data, dataclasses.replace(cfg, num_steps=1, lr=1e-12),
                            guide=("deep_ensemble", {"members": 4}), seed=0, progress=False)
    # One step of lr 1e-12 moves nothing a float32 can see: these are the initial values.
    init = start.guide.member_values()["beta"].detach()
    assert torch.cdist(init, init).fill_diagonal_(1e9).min() > 0.1  # independent draws from the prior
    res = pyro_models.fit(model, plain_linreg_data, cfg, guide=("deep_ensemble", {"members": 4}),
                          seed=0, progress=False)
    assert res.config.vectorize_particles is broadcast
    # Vectorised, the guide runs once per step over all members; looped, once per member per
    # step (the first evaluation creates the parameters and is step 1's loss).
    assert res.guide._cycle == (0 if broadcast else 4 * cfg.num_steps)
    members = res.guide.member_values()["beta"].detach()
    assert ((members.double() - ridge) / sd).abs().max() < 1e-3
    draws = res.samples()["beta"]
    assert torch.equal(draws, members[torch.arange(8) % 4])  # members in turn
    # Predictive's own loop over draws warns when the model does not broadcast over them.
    loops = pytest.warns(RuntimeWarning, match="loop") if not broadcast else contextlib.nullcontext()
    x_new = torch.eye(3)
    with loops:
        pred = res.predict({"X": x_new})
    assert pred["y"].shape == (8, 3) and bool(torch.isfinite(pred["y"]).all())
    with loops:
        loglik = res.log_likelihood()["y"]
    # Draw i is member i % 4; the means differ only by float32 rounding (matmul against the
    # broadcast sum), ~1e-6 on log densities of order 1.
    exact = dist.Normal(draws @ plain_linreg_data["X"].T, _SIGMA).log_prob(plain_linreg_data["y"])
    assert torch.allclose(loglik, exact, atol=1e-5)
    with loops:
        idata = res.to_inference_data()
    assert {"posterior", "posterior_predictive", "log_likelihood"} <= set(group_names(idata))


def test_ensemble_of_a_model_without_a_member_dim_saves_and_loads(tmp_path):
    """The reported model as written (latent noise, ``X @ beta``), through save and load."""
    def model(X, y=None):
        beta = pyro.sample("beta", dist.Normal(torch.zeros(3), 10.0).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(X @ beta, sigma), obs=y)

    g = torch.Generator().manual_seed(2)
    X = torch.randn(30, 3, generator=g)
    data = {"X": X, "y": X @ torch.tensor([1.0, -1.0, 0.5]) + 0.5 * torch.randn(30, generator=g)}
    res = pyro_models.fit(model, data, SVIConfig(num_steps=20, num_posterior_samples=6),
                          guide=("deep_ensemble", {"members": 3}), seed=0, progress=False)
    assert not res.config.vectorize_particles
    assert res.samples()["sigma"].shape == (6,) and res.samples()["beta"].shape == (6, 3)
    again = pyro_models.FitResult.load(res.save(tmp_path / "ens"), model=model)
    for k, v in res.samples().items():
        assert torch.equal(again.samples()[k], v)


def test_ensemble_fallback_raises_the_models_own_error(plain_linreg_data):
    def model(X, y=None):
        beta = pyro.sample("beta", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        if y is not None:
            raise ValueError("this model refuses its data")
        pyro.sample("y", dist.Normal(X @ beta, 1.0).to_event(1), obs=y)

    # Both the vectorised attempt and the loop fail; the error raised is the model's, as is.
    with pytest.raises(ValueError, match="refuses its data"):
        pyro_models.fit(model, plain_linreg_data, SVIConfig(num_steps=5), guide="deep_ensemble", seed=0,
                        progress=False)


def test_ensemble_members_start_apart_and_disagree_away_from_data():
    data = _bnn_data()
    model = models.get("bnn_regression")(in_features=1, hidden_sizes=[16])
    res = pyro_models.fit(model, data, SVIConfig(num_steps=800, lr=0.01, num_posterior_samples=5),
                          guide=("deep_ensemble", {"members": 5}), seed=0, progress=False)
    w = res.guide.member_values()["net.0.weight"]
    assert torch.cdist(w.flatten(1), w.flatten(1)).fill_diagonal_(1e9).min() > 1e-2  # distinct members
    pred = res.predict({"x": torch.tensor([[0.0], [6.0]])})
    assert pred.epistemic_var[1] > 10 * pred.epistemic_var[0]


def test_ensemble_members_can_start_from_the_nets_default_initialisation():
    # init_loc="net": each member is a fresh nn.Linear default init (uniform within
    # 1/sqrt(fan_in)), not a draw from the N(0, 1) prior, which for a heteroscedastic net puts
    # the predicted noise scales orders of magnitude off and the first losses near 1e15.
    net = models.get("bnn_regression")(in_features=6, hidden_sizes=[50], heteroscedastic=True)
    data = {"x": torch.randn(200, 6, generator=torch.Generator().manual_seed(0)), "y": torch.randn(200) * 0.1}
    cfg = SVIConfig(num_steps=1, lr=1e-12, num_posterior_samples=4, psis_draws=0)
    start = {}
    for init in ("net", "sample"):
        res = pyro_models.fit(net, data, cfg, guide=("deep_ensemble", {"members": 4, "init_loc": init}),
                              seed=0, progress=False)
        start[init] = res.guide.member_values()["net.0.weight"].detach()  # (4, 50, 6)
    bound = 6 ** -0.5  # PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert float(start["net"].abs().max()) <= bound
    assert float(start["sample"].abs().max()) > 2 * bound  # prior draws are on another scale
    # Independent initialisations: no two members share their weights.
    flat = start["net"].reshape(4, -1)
    assert float(torch.cdist(flat, flat).add(torch.eye(4) * 1e9).min()) > 1.0
    with pytest.raises(ValueError, match="init_loc='net' needs a model with initial_values"):
        guides.get("deep_ensemble")(models.get("linear_regression")(), init_loc="net")


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
