"""Plain Pyro models with the site kinds a user's model brings: ``pyro.factor`` terms, masked
observations, observed fields that size a plate, and discrete latents.

Each case once gave a wrong number or an unhelpful crash (a robustness probe with models not
in the package found them); the checks compare with quantities computed here directly.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import pyro_models
from pyro_models import MCMCConfig, SVIConfig

SVI = dict(num_steps=300, lr=0.05, psis_draws=0, num_posterior_samples=400)


def _fit(model, data, **kw):
    return pyro_models.fit(model, data, SVIConfig(**{**SVI, **kw}), guide="normal", seed=0, progress=False)


def test_factor_sites_are_part_of_the_joint_but_not_data():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        pyro.factor("soft_prior", -0.5 * (mu / 100.0) ** 2)  # a prior term, not an observation
        with pyro.plate("data", y.shape[0]):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    y = torch.randn(25, generator=torch.Generator().manual_seed(0)) + 1.0
    res = _fit(model, {"y": y})
    assert res.observed_sites == ("y",)
    assert set(res.log_likelihood()) == {"y"} and set(res.predict()) == {"y"}
    idata = res.to_inference_data()
    assert list(idata.log_likelihood.data_vars) == ["y"]
    assert list(idata.posterior_predictive.data_vars) == ["y"]


def test_factor_terms_still_shape_the_posterior_under_nuts():
    # A factor that is the whole likelihood: N(y_i; mu, 1) written as pyro.factor. With a flat
    # prior the posterior of mu is N(mean(y), 1/n) exactly; NUTS must see the factor.
    y = torch.tensor([0.3, 1.9, 1.2, 0.8, 1.5, 2.2, 0.1, 1.0])

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1000.0))
        pyro.factor("lik", dist.Normal(mu, 1.0).log_prob(y).sum())

    res = pyro_models.fit(model, {"y": y}, MCMCConfig(num_chains=2, num_warmup=300, num_samples=1000),
                          seed=0, progress=False)
    mu = res.samples()["mu"].reshape(-1)
    sd = 1 / math.sqrt(len(y))
    # 2000 draws with ESS well above 500: the mean's Monte Carlo error is < sd / sqrt(500).
    assert abs(float(mu.mean()) - float(y.mean())) < 4 * sd / math.sqrt(500)
    assert abs(float(mu.std()) / sd - 1) < 0.1
    assert res.observed_sites == () and res.log_likelihood() == {}


def test_masked_observations_add_nothing_to_the_pointwise_log_likelihood():
    def model(y, mask):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", y.shape[0]), poutine.mask(mask=mask):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    y = torch.tensor([1.0, 2.0, 100.0, 1.5])  # 100 is a placeholder, masked out
    mask = torch.tensor([True, True, False, True])
    res = _fit(model, {"y": y, "mask": mask})
    mu = res.samples()["mu"]
    assert abs(float(mu.mean()) - 1.5) < 0.3  # the fit ignores the placeholder
    ll = res.log_likelihood()["y"]
    exact = dist.Normal(mu[:, None], 1.0).log_prob(y)
    # As in Pyro's log joint: masked entries contribute 0, the others their exact log density.
    assert torch.equal(ll[:, 2], torch.zeros(len(mu)))
    torch.testing.assert_close(ll[:, mask], exact[:, mask])


def test_obs_mask_keeps_only_the_observed_entries_in_the_log_likelihood():
    def model(y, obs_mask):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", y.shape[0]):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y, obs_mask=obs_mask)

    y = torch.tensor([1.0, 2.0, 0.0, 1.5, 0.0])
    obs_mask = torch.tensor([True, True, False, True, False])
    res = _fit(model, {"y": y, "obs_mask": obs_mask})
    ll = res.log_likelihood()
    assert set(ll) == {"y_observed"}
    mu = res.samples()["mu"]
    exact = dist.Normal(mu[:, None], 1.0).log_prob(y)
    assert torch.equal(ll["y_observed"][:, ~obs_mask], torch.zeros(len(mu), 2))
    torch.testing.assert_close(ll["y_observed"][:, obs_mask], exact[:, obs_mask])


def test_predict_with_the_training_dict_when_an_observed_field_sizes_a_plate():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("data", y.shape[0]):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    y = torch.full((20,), 3.0)
    res = _fit(model, {"y": y})
    torch.manual_seed(0)
    pred = res.predict({"y": y})["y"]
    assert pred.shape == (400, 20)
    # Sampled, not conditioned: y_rep = mu + N(0, 1), so the draws spread around mu by ~1.
    resid = pred - res.samples()["mu"][:, None]
    assert abs(float(resid.std()) - 1) < 0.05  # 8000 values: the sd's standard error is 0.008
    assert not torch.equal(pred[0], y)


@pytest.mark.parametrize("config", [MCMCConfig(num_chains=1, num_warmup=5, num_samples=5), SVIConfig(num_steps=5)],
                         ids=["nuts", "svi"])
def test_discrete_latents_are_refused_by_name(config):
    @pyro.infer.config_enumerate
    def model(y):
        w = pyro.sample("w", dist.Dirichlet(torch.ones(2)))
        locs = pyro.sample("locs", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
        with pyro.plate("data", y.shape[0]):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("y", dist.Normal(locs[z], 1.0), obs=y)

    guide = None if isinstance(config, MCMCConfig) else "normal"
    with pytest.raises(ValueError, match=r"discrete latent site 'z' \(enumerated Categorical\).*continuous"):
        pyro_models.fit(model, {"y": torch.randn(10)}, config, guide=guide, seed=0, progress=False)


def test_subsampled_plates_are_evaluated_over_every_observation():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", y.shape[0], subsample_size=10) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y.index_select(0, idx))

    y = torch.arange(40.0) / 10
    res = _fit(model, {"y": y})
    mu = res.samples()["mu"]
    ll = res.log_likelihood()["y"]
    # Every observation, in order, the same on every call (not a fresh random minibatch).
    torch.testing.assert_close(ll, dist.Normal(mu[:, None], 1.0).log_prob(y))
    assert torch.equal(ll, res.log_likelihood()["y"])
    assert res.predict()["y"].shape == (400, 40)
    idata = res.to_inference_data()
    assert (idata.observed_data["y"].values == y.numpy()).all()


def test_local_latents_in_a_subsampled_plate():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("groups", y.shape[0], subsample_size=5) as idx:
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            pyro.sample("y", dist.Normal(theta, 0.5), obs=y.index_select(0, idx))

    y = torch.linspace(-1.0, 1.0, 20)
    res = _fit(model, {"y": y}, num_steps=100)
    assert res.samples()["theta"].shape == (400, 20)
    assert res.log_likelihood()["y"].shape == (400, 20)
