"""Engine options: minibatch scaling, HMC, optimisers, schedules, ELBOs, callbacks, divergences."""

from __future__ import annotations

import math

import arviz as az
import numpy as np
import pytest
import torch

import pyro_models
from pyro_models import DivergenceWarning, MCMCConfig, SVIConfig, models

_g = torch.Generator().manual_seed(11)
Y200 = (torch.randn(200, generator=_g) * 1.0 + 0.7)


def _normal_exact():
    m = models.get("normal_normal")(prior_loc=0.0, prior_scale=10.0, noise_scale=1.0)
    post = m.exact_posterior(y=Y200)["mu"]
    return m, float(post.mean), float(post.stddev)


def test_minibatch_svi_scales_the_likelihood():
    """With N=200 and batches of 20, an unscaled likelihood would give a posterior sd
    sqrt(10) ~ 3.2x too wide; correct plate scaling recovers the exact posterior."""
    model, mean, sd = _normal_exact()
    cfg = SVIConfig(num_steps=3000, lr=0.05, batch_size=20, lr_schedule="exponential", lr_final_factor=0.01,
                    num_posterior_samples=4000)
    res = pyro_models.fit(model, {"y": Y200}, cfg, guide="normal", seed=0, progress=False)
    mu = res.samples()["mu"]
    assert abs(mu.mean().item() - mean) < 0.1 * sd + 4 * sd / math.sqrt(4000)
    assert abs(mu.std().item() / sd - 1) < 0.1


def test_hmc_kernel_matches_exact():
    model, mean, sd = _normal_exact()
    res = pyro_models.fit(model, {"y": Y200}, MCMCConfig(kernel="hmc", num_steps=8, num_chains=2, num_warmup=200,
                          num_samples=500), seed=0, progress=False)
    x = res.samples()["mu"].numpy()
    ess = float(az.ess(x))
    assert abs(x.mean() - mean) < 4 * sd / np.sqrt(ess)
    assert abs(x.std(ddof=1) / sd - 1) < 4 / np.sqrt(2 * ess)
    # HMC keeps the trajectory length fixed, so the adapted step size fixes the step count.
    steps = res.sample_stats["n_steps"]
    assert bool((steps == steps[:, :1]).all()) and bool((steps >= 1).all())


@pytest.mark.parametrize("optimizer", ["adam", "clipped_adam"])
@pytest.mark.parametrize("elbo", ["trace", "meanfield", "tracegraph"])
def test_optimizers_and_elbos_train(optimizer, elbo):
    cfg = SVIConfig(num_steps=400, lr=0.05, optimizer=optimizer, elbo=elbo, num_particles=2)
    res = pyro_models.fit("normal_normal", {"y": Y200[:20]}, cfg, seed=0, progress=False)
    assert all(math.isfinite(v) for v in res.losses)
    assert np.mean(res.losses[-50:]) < np.mean(res.losses[:50])


@pytest.mark.parametrize("schedule", ["constant", "exponential", "cosine"])
def test_learning_rate_schedules(schedule):
    lrs = []
    cfg = SVIConfig(num_steps=100, lr=0.1, lr_schedule=schedule, lr_final_factor=0.1)
    pyro_models.fit("normal_normal", {"y": [1.0]}, cfg, seed=0, progress=False,
                    callbacks=[lambda info: lrs.append(info["lr"])])
    expected_end = 0.1 if schedule == "constant" else 0.01
    assert lrs[-1] == pytest.approx(expected_end, rel=1e-6)
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:]))


def test_vectorized_particles_match_sequential_in_expectation():
    cfg = dict(num_steps=300, lr=0.05, num_particles=4)
    a = pyro_models.fit("normal_normal", {"y": Y200[:10]}, SVIConfig(vectorize_particles=True, **cfg), seed=0,
                        progress=False)
    b = pyro_models.fit("normal_normal", {"y": Y200[:10]}, SVIConfig(vectorize_particles=False, **cfg), seed=0,
                        progress=False)
    assert abs(np.mean(a.losses[-100:]) - np.mean(b.losses[-100:])) < 1.0


def test_callbacks_receive_steps_and_result():
    seen = {"steps": 0, "end": None, "ck": 0}

    class CB:
        def on_step(self, info):
            seen["steps"] += 1

        def on_fit_end(self, result):
            seen["end"] = result

        def on_checkpoint(self, path):
            seen["ck"] += 1

    res = pyro_models.fit("normal_normal", {"y": [1.0]}, SVIConfig(num_steps=20, checkpoint_every=10), seed=0,
                          progress=False, callbacks=[CB()], checkpoint_dir=None)
    assert seen["steps"] == 20 and seen["end"] is res and seen["ck"] == 0
    with pytest.raises(TypeError, match="callback"):
        pyro_models.fit("normal_normal", {"y": [1.0]}, SVIConfig(num_steps=2), callbacks=[object()])


def test_centred_eight_schools_divergences_are_counted_and_warned():
    data = {"y": [28.0, 8, -3, 7, -1, 1, 18, 12], "sigma": [15.0, 10, 16, 11, 9, 11, 10, 18]}
    with pytest.warns(DivergenceWarning, match="target_accept"):
        res = pyro_models.fit("eight_schools_centered", data,
                              MCMCConfig(num_chains=2, num_warmup=300, num_samples=300, target_accept=0.6),
                              seed=0, progress=False)
    assert res.num_divergences > 0
    assert res.summary().attrs["divergences"] == res.num_divergences
    assert int(res.sample_stats["diverging"].sum()) == res.num_divergences


def test_minibatch_refused_for_local_latents_with_autoguide():
    data = {"y": [28.0, 8, -3, 7, -1, 1, 18, 12], "sigma": [15.0, 10, 16, 11, 9, 11, 10, 18]}
    with pytest.raises(ValueError, match="local latent"):
        pyro_models.fit("eight_schools", data, SVIConfig(num_steps=5, batch_size=4), progress=False)


def test_seed_makes_runs_reproducible():
    a = pyro_models.fit("normal_normal", {"y": [1.0, 2.0]}, SVIConfig(num_steps=50), seed=5, progress=False)
    b = pyro_models.fit("normal_normal", {"y": [1.0, 2.0]}, SVIConfig(num_steps=50), seed=5, progress=False)
    assert a.losses == b.losses and torch.equal(a.samples()["mu"], b.samples()["mu"])


def test_progress_bar_only_on_a_terminal(monkeypatch):
    from pyro_models.inference.engine_common import progress_bar

    class FakeStderr:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

        def write(self, s):
            pass

        def flush(self):
            pass

    monkeypatch.setattr("sys.stderr", FakeStderr(False))
    assert progress_bar(True, 10, "x").disable
    monkeypatch.setattr("sys.stderr", FakeStderr(True))
    assert not progress_bar(True, 10, "x").disable
    assert progress_bar(False, 10, "x").disable
