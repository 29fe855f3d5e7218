"""Eight schools: posteriordb priors, both parameterisations, registry entries, validation."""

from __future__ import annotations

import json

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from scipy import stats

from pyro_models import models
from pyro_models.errors import DataValidationError
from pyro_models.models import hierarchical
from pyro_models.models.hierarchical import (
    EIGHT_SCHOOLS_DATA,
    EightSchools,
    EightSchoolsCentered,
    EightSchoolsNonCentered,
)

NAMES = {"eight_schools": False, "eight_schools_centered": True, "eight_schools_noncentered": False}


@pytest.fixture(autouse=True)
def _seed():
    pyro.set_rng_seed(0)


@pytest.fixture
def data():
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in EIGHT_SCHOOLS_DATA.items()}


def test_every_registered_name_is_covered():
    names = [n for n in models.available()
             if getattr(models.get(n), "__module__", None) == hierarchical.__name__]
    assert sorted(names) == sorted(NAMES)


def test_rubin_data():
    assert EIGHT_SCHOOLS_DATA == {
        "y": [28, 8, -3, 7, -1, 1, 18, 12],
        "sigma": [15, 10, 16, 11, 9, 11, 10, 18],
    }
    json.dumps(EIGHT_SCHOOLS_DATA)


@pytest.mark.parametrize("name,centered", sorted(NAMES.items()))
def test_registered_defaults_and_round_trip(name, centered):
    model = models.get(name)()
    assert model.centered is centered and model.hparams == {"centered": centered}
    again = models.get(type(model).registered_name)(**model.hparams)
    assert type(again) is type(model) and again.centered is centered
    # The other setting is still available under every name.
    assert models.get(name)(centered=not centered).centered is (not centered)


def test_registered_names_of_classes():
    assert EightSchools.registered_name == "eight_schools"
    assert EightSchoolsCentered.registered_name == "eight_schools_centered"
    assert EightSchoolsNonCentered.registered_name == "eight_schools_noncentered"


# --------------------------------------------------------------------------------------------
# log densities vs scipy (posteriordb priors: mu ~ N(0, 5), tau ~ HalfCauchy(5))


_MU, _TAU = 4.0, 3.0
_THETA_TRANS = np.linspace(-1.5, 1.5, 8)


def _hyper() -> dict:
    return {"mu": torch.tensor(_MU, dtype=torch.float64), "tau": torch.tensor(_TAU, dtype=torch.float64)}


def _prior_ref() -> float:
    return stats.norm.logpdf(_MU, 0, 5) + stats.halfcauchy.logpdf(_TAU, scale=5)


def test_noncentered_log_density(data):
    values = {**_hyper(), "theta_trans": torch.tensor(_THETA_TRANS)}
    tr = poutine.trace(poutine.condition(EightSchools(centered=False), data=values)).get_trace(**data)
    theta = _MU + _TAU * _THETA_TRANS
    np.testing.assert_allclose(tr.nodes["theta"]["value"].numpy(), theta, rtol=1e-12)
    ref = (_prior_ref() + stats.norm.logpdf(_THETA_TRANS).sum()
           + stats.norm.logpdf(data["y"].numpy(), theta, data["sigma"].numpy()).sum())
    assert float(tr.log_prob_sum()) == pytest.approx(ref, rel=1e-12)


def test_centered_log_density(data):
    theta = _MU + _TAU * _THETA_TRANS
    values = {**_hyper(), "theta": torch.tensor(theta)}
    tr = poutine.trace(poutine.condition(EightSchools(centered=True), data=values)).get_trace(**data)
    ref = (_prior_ref() + stats.norm.logpdf(theta, _MU, _TAU).sum()
           + stats.norm.logpdf(data["y"].numpy(), theta, data["sigma"].numpy()).sum())
    assert float(tr.log_prob_sum()) == pytest.approx(ref, rel=1e-12)
    free = poutine.trace(EightSchools(centered=True)).get_trace(**data)
    latent = [n for n, s in free.nodes.items()
              if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)]
    assert latent == ["mu", "tau", "theta"]


# --------------------------------------------------------------------------------------------
# predictive and vectorisation


@pytest.mark.parametrize("centered", [False, True], ids=["noncentered", "centered"])
def test_predictive_and_vectorised_shapes(data, centered):
    model = EightSchools(centered=centered)
    y = model(sigma=data["sigma"])
    assert y.shape == (8,) and y.dtype == torch.float64
    with pyro.plate("draws", 7, dim=-2):
        tr = poutine.trace(model).get_trace(sigma=data["sigma"])
        tr_obs = poutine.trace(model).get_trace(**data)
    assert tr.nodes["y"]["value"].shape == (7, 8)
    assert tr.nodes["theta"]["value"].shape == (7, 8)
    assert tr.nodes["mu"]["value"].shape == (7, 1)
    tr_obs.compute_log_prob()
    assert tr_obs.nodes["y"]["log_prob"].shape == (7, 8)
    if not centered:
        nodes = tr_obs.nodes
        expect = nodes["mu"]["value"] + nodes["tau"]["value"] * nodes["theta_trans"]["value"]
        torch.testing.assert_close(tr_obs.nodes["theta"]["value"], expect)


# --------------------------------------------------------------------------------------------
# validation


def test_validation():
    m = EightSchools()
    good = dict(EIGHT_SCHOOLS_DATA)
    zero = r"sigma: standard errors must be > 0, got 0 for school\(s\) \[2\]"
    with pytest.raises(DataValidationError, match=zero):
        m.validate_data({**good, "sigma": [15, 10, 0, 11, 9, 11, 10, 18]})
    with pytest.raises(DataValidationError, match="sigma: values must be >= 0"):
        m.validate_data({**good, "sigma": [15, 10, -1, 11, 9, 11, 10, 18]})
    with pytest.raises(ValueError, match="y: contains 1 NaN"):
        m.validate_data({**good, "y": [28, 8, float("nan"), 7, -1, 1, 18, 12]})
    with pytest.raises(DataValidationError, match="sigma: expected shape .*J=8"):
        m.validate_data({**good, "sigma": [15, 10]})
    with pytest.raises(DataValidationError, match="unknown data key"):
        m.validate_data({**good, "J": 8})
    with pytest.raises(TypeError, match="centered must be a bool"):
        EightSchools(centered="yes")
    # Prediction needs only sigma.
    assert set(m.validate_data({"sigma": good["sigma"]}, require_observed=False)) == {"sigma"}
