"""Bad input is rejected at the boundary, before any computation, with a useful message."""

from __future__ import annotations

import dataclasses
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_models
from pyro_models import MCMCConfig, SVIConfig, guides, models
from pyro_models.errors import NonFiniteLossError

SVI = SVIConfig(num_steps=5)


def plain(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(w * x, 1.0), obs=y)


def test_nan_in_data_names_the_field():
    with pytest.raises(ValueError, match=r"\by\b.*NaN"):
        pyro_models.fit("normal_normal", {"y": [1.0, math.nan]}, SVI, progress=False)
    with pytest.raises(ValueError, match=r"\bx\b.*NaN/inf"):
        pyro_models.fit(plain, {"x": torch.tensor([1.0, math.inf]), "y": torch.ones(2)}, SVI, progress=False)


def test_unknown_guide_lists_available():
    with pytest.raises(KeyError) as err:
        guides.get("nope")
    msg = str(err.value)
    for name in ("normal", "lowrank_mvn", "mvn", "delta", "laplace"):
        assert name in msg
    with pytest.raises(KeyError, match="normal"):
        pyro_models.fit("normal_normal", {"y": [1.0]}, SVI, guide="nope", progress=False)


def test_unknown_model_lists_available():
    with pytest.raises(KeyError, match="beta_binomial"):
        models.get("nope")
    with pytest.raises(KeyError, match="eight_schools"):
        pyro_models.fit("nope", {}, SVI)


def test_unknown_data_key():
    with pytest.raises(ValueError, match=r"unknown data key.*'z'"):
        pyro_models.fit("normal_normal", {"y": [1.0], "z": [2.0]}, SVI, progress=False)
    with pytest.raises(ValueError, match=r"unknown data key.*'z'.*accepts"):
        pyro_models.fit(plain, {"x": torch.ones(2), "y": torch.ones(2), "z": 1}, SVI, progress=False)


def test_missing_and_misshapen_fields():
    with pytest.raises(ValueError, match="missing required data field 'x'"):
        pyro_models.fit("linear_regression", {"y": [1.0, 2.0]}, SVI, progress=False)
    with pytest.raises(ValueError, match=r"y: expected shape \(N=3,\).*from x, got \(2,\)"):
        pyro_models.fit("linear_regression", {"x": torch.ones(3, 2), "y": torch.ones(2)}, SVI, progress=False)
    with pytest.raises(ValueError, match=r"x: expected shape \(N, D\)"):
        pyro_models.fit("linear_regression", {"x": torch.ones(3), "y": torch.ones(3)}, SVI, progress=False)


def test_wrong_dtype():
    with pytest.raises(TypeError, match="integer"):
        pyro_models.fit("beta_binomial", {"trials": [10.5, 10.0], "successes": [1, 2]}, SVI, progress=False)
    with pytest.raises(TypeError, match="numeric"):
        pyro_models.fit("normal_normal", {"y": ["a", "b"]}, SVI, progress=False)


def test_config_validated_on_construction():
    with pytest.raises(ValueError, match="num_steps"):
        SVIConfig(num_steps=0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        SVIConfig(optimizer="rmsprop")
    with pytest.raises(TypeError, match="num_chains must be an int"):
        MCMCConfig(num_chains=2.5)
    with pytest.raises(ValueError, match="num_chains must be >= 1"):
        MCMCConfig(num_chains=0)
    with pytest.raises(ValueError, match="kernel must be one of"):
        MCMCConfig(kernel="gibbs")
    with pytest.raises(TypeError):
        SVIConfig(100)  # keyword-only
    cfg = MCMCConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_chains = 8  # type: ignore[misc]


def test_fit_rejects_bad_arguments():
    with pytest.raises(TypeError, match="config must be"):
        pyro_models.fit("normal_normal", {"y": [1.0]}, {"num_steps": 5})
    with pytest.raises(ValueError, match="MCMC needs no guide"):
        pyro_models.fit("normal_normal", {"y": [1.0]}, MCMCConfig(), guide="normal")
    with pytest.raises(ValueError, match="seed"):
        pyro_models.fit("normal_normal", {"y": [1.0]}, SVI, seed=-1)
    with pytest.raises(TypeError, match="model must be"):
        pyro_models.fit(42, {"y": [1.0]}, SVI)
    with pytest.raises(TypeError, match="not the class"):
        pyro_models.fit(models.get("normal_normal"), {"y": [1.0]}, SVI)
    with pytest.raises(ValueError, match="CUDA is not available"):
        if torch.cuda.is_available():
            pytest.skip("CUDA present")
        pyro_models.fit("normal_normal", {"y": [1.0]}, SVI, device="cuda")
    with pytest.raises(TypeError, match="unknown option"):
        pyro_models.fit("normal_normal", {"y": [1.0]}, SVI, guide=("lowrank_mvn", {"rnak": 2}))


@pytest.mark.filterwarnings("ignore:Encountered NaN")  # Pyro's own notice of what we test
@pytest.mark.parametrize("validate", [True, False], ids=["validation_on", "validation_off"])
def test_nan_loss_stops_and_keeps_last_good_state(validate):
    """The loss turns NaN at step 6: the run stops, parameters are those of step 5.

    With Pyro's validation on, the NaN surfaces as a distribution ValueError; off, as a NaN loss.
    """
    state = {"step": 0}

    def model(y=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        bad = torch.tensor(float("nan")) if state["step"] >= 5 else torch.tensor(0.0)
        pyro.factor("trap", bad)
        with pyro.plate("data", y.shape[0]):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    seen = []

    def on_step(info):
        state["step"] = info["step"]
        seen.append({k: v.detach().clone() for k, v in res_guide[0].named_parameters()})

    res_guide = []

    class Guide(pyro.nn.PyroModule):
        def __init__(self):
            super().__init__()
            self.loc = torch.nn.Parameter(torch.tensor(0.0))

        def forward(self, y=None):
            pyro.sample("mu", dist.Normal(self.loc, 0.5))

    g = Guide()
    res_guide.append(g)
    with pytest.raises(NonFiniteLossError, match="step 6") as err, pyro.validation_enabled(validate):
        pyro_models.fit(model, {"y": torch.tensor([3.0, 3.5])}, SVIConfig(num_steps=50, lr=0.1),
                        guide=g, seed=0, progress=False, callbacks=[on_step])
    partial = err.value.result
    assert len(partial.losses) == 5 and all(math.isfinite(v) for v in partial.losses)
    # Parameters are those that produced the 5th (last finite) loss: before the 5th update.
    assert torch.equal(g.loc.detach(), seen[3]["loc"])
