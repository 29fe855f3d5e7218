"""Every registered model, parametrised from the registry: a new registration is tested with no edit.

Plumbing only (tiny budgets): the model fits its own ``example_data`` with SVI and, when it
supports MCMC, with NUTS; draws, predictions, the pointwise log-likelihood and the ArviZ
export all come out with consistent shapes and finite values. Correctness against exact
posteriors lives in each family's own test file.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import pyro_models
from pyro_models import DivergenceWarning, MCMCConfig, SVIConfig
from pyro_models.inference.arviz_bridge import group_names

NAMES = pyro_models.models.available()


def _model_and_data(name):
    model = pyro_models.models.get(name)()
    return model, model.example_data(seed=0)


def _check_result(res, num_draws):
    draws = res.samples()
    assert draws, "no posterior draws"
    for site, v in draws.items():
        assert bool(torch.isfinite(v.float()).all()), f"non-finite draws at {site}"
    pred = res.predict()
    assert set(pred) == set(res.observed_sites)
    for site, v in pred.items():
        assert v.shape[0] == num_draws
    ll = res.log_likelihood()
    for site, v in ll.items():
        assert v.shape[0] == num_draws and bool(torch.isfinite(v).all()), f"log-likelihood of {site}"
    groups = set(group_names(res.to_inference_data()))
    assert {"posterior", "posterior_predictive", "log_likelihood", "observed_data"} <= groups


@pytest.mark.parametrize("name", NAMES)
def test_svi_fit_predict_export(name):
    model, data = _model_and_data(name)
    res = pyro_models.fit(model, data, SVIConfig(num_steps=20, lr=0.01, num_posterior_samples=8),
                          seed=0, progress=False)
    assert len(res.losses) == 20 and all(torch.isfinite(torch.tensor(res.losses)))
    _check_result(res, 8)


@pytest.mark.parametrize("name", NAMES)
def test_nuts_fit_predict_export(name):
    model, data = _model_and_data(name)
    config = MCMCConfig(num_chains=1, num_warmup=15, num_samples=10, max_tree_depth=5)
    if not model.supports_mcmc:
        with pytest.raises(ValueError, match="SVIConfig"):
            pyro_models.fit(model, data, config, seed=0, progress=False)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)  # 15 warmup steps do not adapt a step size
        res = pyro_models.fit(model, data, config, seed=0, progress=False)
    _check_result(res, 10)
