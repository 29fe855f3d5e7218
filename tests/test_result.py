"""FitResult: samples, predict, summary, ArviZ export, save/load without pickle."""

from __future__ import annotations

import json

import arviz as az
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_models
from pyro_models import FitResult, MCMCConfig, SVIConfig
from pyro_models.inference.arviz_bridge import group_names

ES = {"y": [28.0, 8, -3, 7, -1, 1, 18, 12], "sigma": [15.0, 10, 16, 11, 9, 11, 10, 18]}


@pytest.fixture(scope="module")
def mcmc_result():
    return pyro_models.fit("eight_schools", ES, MCMCConfig(num_chains=2, num_warmup=200, num_samples=200),
                           seed=0, progress=False)


@pytest.fixture(scope="module")
def svi_result():
    x = torch.linspace(-2, 2, 30).unsqueeze(-1)
    y = 1.5 * x[:, 0] - 0.5 + 0.3 * torch.sin(5 * x[:, 0])
    return pyro_models.fit("linear_regression", {"x": x, "y": y}, SVIConfig(num_steps=400, lr=0.05,
                           num_posterior_samples=300), seed=0, progress=False)


def test_mcmc_samples_keep_chain_dim(mcmc_result):
    s = mcmc_result.samples()
    assert s["mu"].shape == (2, 200) and s["theta_trans"].shape == (2, 200, 8) and s["theta"].shape == (2, 200, 8)
    # deterministic site is computed from the latent draws
    assert torch.allclose(s["theta"], s["mu"][..., None] + s["tau"][..., None] * s["theta_trans"], atol=1e-5)
    thin = mcmc_result.samples(100)
    assert thin["mu"].shape == (2, 50)
    stats = mcmc_result.sample_stats
    assert set(stats) >= {"diverging", "energy", "tree_depth", "step_size", "acceptance_rate"}
    assert stats["diverging"].dtype == torch.bool and stats["energy"].shape == (2, 200)
    assert bool(torch.isfinite(stats["energy"]).all()) and bool((stats["tree_depth"] >= 1).all())


def test_predict_shapes_and_new_data(mcmc_result, svi_result):
    pp = mcmc_result.predict()
    assert pp["y"].shape == (400, 8)
    assert pp["y"].std(0).min() > 5  # predictive spread includes the measurement noise (sigma >= 9)
    new = svi_result.predict({"x": torch.zeros(5, 1)}, num_samples=50)
    assert new["y"].shape == (50, 5)
    with pytest.raises(ValueError, match="unknown data key"):
        svi_result.predict({"x": torch.zeros(5, 1), "q": 1})


def test_summary_through_arviz(mcmc_result, svi_result):
    table = mcmc_result.summary()
    for col in ("mean", "sd", "q5", "q50", "q95", "ess_bulk", "ess_tail", "r_hat"):
        assert col in table.columns
    assert "divergences" in table.attrs and table.attrs["divergences"] == mcmc_result.num_divergences
    assert "mu" in table.index and "theta[0]" in table.index
    svi_table = svi_result.summary()
    assert "bias" in svi_table.index


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")  # 400 draws; k-hat is not under test
@pytest.mark.parametrize("which", ["mcmc_result", "svi_result"])
def test_to_inference_data_works_with_arviz(which, request):
    res = request.getfixturevalue(which)
    idata = res.to_inference_data()
    groups = set(group_names(idata))
    assert {"posterior", "observed_data", "posterior_predictive", "log_likelihood"} <= groups
    if which == "mcmc_result":
        assert "sample_stats" in groups
    table = az.summary(idata)
    assert len(table) > 0
    loo = az.loo(idata)
    assert loo is not None


def test_save_load_mcmc_roundtrip(mcmc_result, tmp_path):
    path = mcmc_result.save(tmp_path / "res")
    assert sorted(p.name for p in path.iterdir()) == ["metadata.json", "tensors.safetensors"]
    json.loads((path / "metadata.json").read_text())
    loaded = FitResult.load(path)
    for k, v in mcmc_result.samples().items():
        assert torch.equal(v, loaded.samples()[k])
    assert loaded.summary().round(6).equals(mcmc_result.summary().round(6))
    assert loaded.predict(num_samples=10)["y"].shape == (10, 8)


@pytest.mark.parametrize("guide", ["normal", "laplace", "lowrank_mvn", "delta", "mvn"])
def test_save_load_svi_roundtrip(guide, tmp_path):
    res = pyro_models.fit("normal_normal", {"y": [0.5, 1.0, 1.5]}, SVIConfig(num_steps=50, num_posterior_samples=100),
                          guide=guide, seed=0, progress=False)
    loaded = FitResult.load(res.save(tmp_path / guide))
    assert torch.allclose(res.samples()["mu"], loaded.samples()["mu"])
    assert loaded.losses == res.losses


def test_load_plain_callable_needs_model(tmp_path):
    def model(y=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 3):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    res = pyro_models.fit(model, {"y": torch.tensor([0.1, 0.2, 0.3])}, MCMCConfig(num_chains=1, num_warmup=200,
                          num_samples=50), seed=0, progress=False)
    path = res.save(tmp_path / "plain")
    with pytest.raises(ValueError, match="pass it as FitResult.load"):
        FitResult.load(path)
    assert torch.equal(FitResult.load(path, model=model).samples()["mu"], res.samples()["mu"])


def test_result_is_read_only(mcmc_result):
    with pytest.raises(AttributeError):
        mcmc_result.engine = "svi"
    with pytest.raises(TypeError):
        FitResult(_token=None, engine="svi")


def _registered(name):
    """A registered model built with its defaults and its own example data."""
    model = pyro_models.models.get(name)()
    return model, model.example_data(seed=0)


@pytest.mark.parametrize("name", pyro_models.models.available())
def test_every_registered_model_has_valid_example_data(name):
    model, data = _registered(name)
    model.validate_data(data)


@pytest.mark.parametrize("name", pyro_models.models.available())
def test_posterior_predictive_replicates_training_data(name):
    """predict() with no data draws y_rep shaped like the observations, and really samples."""
    model, data = _registered(name)
    res = pyro_models.fit(model, data, SVIConfig(num_steps=30, num_posterior_samples=60), seed=0,
                          progress=False)
    pp = res.predict()
    obs = {k: torch.as_tensor(v) for k, v in res._observed_values().items()}
    for site, draws in pp.items():
        assert draws.shape == (60,) + obs[site].shape
        assert draws.float().std(0).max() > 0
    groups = set(group_names(res.to_inference_data()))
    assert {"posterior", "posterior_predictive", "log_likelihood", "observed_data"} <= groups


def test_load_detects_a_torn_save(mcmc_result, tmp_path):
    """A save interrupted between its two files must not load as a mix of two results."""
    path = mcmc_result.save(tmp_path / "torn")
    blob = bytearray((path / "tensors.safetensors").read_bytes())
    blob[-1] ^= 0xFF  # a different tensor file than the metadata describes
    (path / "tensors.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="does not match metadata"):
        FitResult.load(path)
