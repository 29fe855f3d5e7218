"""Every registered model x every registered guide, parametrised from the registries.

A new model or guide registration is tested here with no edit. Pairs a guide declares
incompatible (its registry ``check``) must be refused by ``fit`` with that reason; every
other pair must train (short budget), give finite losses and draws on the data's device and
dtype, and feed ``predict``, ``log_likelihood`` and ``to_inference_data`` like any result.
Accuracy lives elsewhere (tests/test_guides_*.py, benchmarks/guide_accuracy.py).
"""

from __future__ import annotations

import pytest
import torch

import pyro_models
from pyro_models import SVIConfig, guides
from pyro_models.inference.arviz_bridge import group_names

MODELS = pyro_models.models.available()
GUIDES = guides.available()
PAIRS = [(m, g) for m in MODELS for g in GUIDES]

# Guides that turn a MAP fit into a Gaussian from the Hessian need the MAP search to have
# reached a mode (they refuse a saddle with a clear error): a longer, still short, run.
NEEDS_A_MODE = {"laplace", "last_layer_laplace"}


def _config(guide: str) -> SVIConfig:
    if guide in NEEDS_A_MODE:
        return SVIConfig(num_steps=300, lr=0.05, num_posterior_samples=6, psis_draws=0)
    return SVIConfig(num_steps=12, lr=0.01, num_posterior_samples=6, psis_draws=0)


@pytest.mark.parametrize(("model_name", "guide_name"), PAIRS, ids=[f"{m}-{g}" for m, g in PAIRS])
def test_model_guide_pair(model_name, guide_name):
    model = pyro_models.models.get(model_name)()
    data = model.example_data(seed=0)
    reason = guides.incompatibility(guide_name, model)
    config = _config(guide_name)
    if reason is not None:
        with pytest.raises(ValueError) as info:
            pyro_models.fit(model, data, config, guide=guide_name, seed=0, progress=False)
        assert str(info.value) == reason
        return
    try:
        res = pyro_models.fit(model, data, config, guide=guide_name, seed=0, progress=False)
    except ValueError as exc:
        # Some posteriors have no mode at all (centred eight schools: the density grows without
        # bound down the funnel); the Laplace guides refuse them with this documented error.
        # Shown as a skip, never a silent pass; the Laplace guides' accuracy is tested exactly
        # in tests/test_guides_laplace.py.
        if guide_name in NEEDS_A_MODE and "has not reached a mode" in str(exc):
            pytest.skip(f"{guide_name} on {model_name}: {exc}")
        raise
    assert res.engine == "svi" and res.device == torch.device("cpu")
    assert len(res.losses) == config.num_steps
    assert all(torch.isfinite(torch.tensor(res.losses))), "non-finite loss"
    draws = res.samples()
    assert set(res.latent_sites) <= set(draws)
    for site, v in draws.items():
        assert v.shape[0] == 6, f"{site}: {tuple(v.shape)}"
        assert bool(torch.isfinite(v.float()).all()), f"non-finite draws at {site}"
        assert v.device.type == "cpu"
    pred = res.predict()
    assert set(pred) == set(res.observed_sites)
    for site, v in pred.items():
        assert v.shape[0] == 6
    for site, v in res.log_likelihood().items():
        assert v.shape[0] == 6 and bool(torch.isfinite(v).all()), f"log-likelihood of {site}"
    groups = set(group_names(res.to_inference_data()))
    assert {"posterior", "posterior_predictive", "log_likelihood", "observed_data"} <= groups


def _bnn(dropout: float = 0.0):
    return pyro_models.models.get("bnn_regression")(in_features=1, hidden_sizes=[8], activation="tanh",
                                                    dropout=dropout)


@pytest.mark.parametrize("guide_name", GUIDES)
def test_every_guide_fits_a_bnn_regression(guide_name):
    """Every guide trains a BNN regression (mc_dropout on its dropout variant) or refuses it
    with its declared reason, and its result feeds the same evaluation code as NUTS."""
    from pyro_models.evaluation import gaussian_mixture_nll, interval_coverage, rmse

    model = _bnn(0.1 if guide_name == "mc_dropout" else 0.0)
    data = model.example_data(seed=0)
    reason = guides.incompatibility(guide_name, model)
    if reason is not None:
        # Only guides for other model families may refuse a BNN (the amortised encoder guide).
        assert guide_name == "amortized", reason
        with pytest.raises(ValueError, match="amortized"):
            pyro_models.fit(model, data, SVIConfig(num_steps=5), guide=guide_name, progress=False)
        return
    # The full Laplace needs a mode of the whole net; the others get a short run.
    steps = 1500 if guide_name == "laplace" else 300
    res = pyro_models.fit(model, data, SVIConfig(num_steps=steps, lr=0.02, num_posterior_samples=50, psis_draws=0),
                          guide=guide_name, seed=0, progress=False)
    test = _bnn().example_data(seed=1)
    pred = res.predict({"x": test["x"]}, return_sites=["y", "loc", "scale"])
    assert pred.mean.shape == test["y"].shape
    assert bool((pred.epistemic_var >= 0).all()) and bool((pred.aleatoric_var > 0).all())
    torch.testing.assert_close(pred.total_var, pred.epistemic_var + pred.aleatoric_var)
    nll = gaussian_mixture_nll(pred["loc"], pred["scale"], test["y"])
    assert torch.isfinite(nll) and torch.isfinite(rmse(pred.mean, test["y"]))
    cover = interval_coverage(test["y"], loc=pred["loc"], scale=pred["scale"])
    assert all(0.0 <= float(c) <= 1.0 for c in cover.values())
