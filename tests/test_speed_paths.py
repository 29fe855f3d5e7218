"""The SVI fast paths and the chunked predictive give the results of the general paths.

Correctness only; the timings live in ``benchmarks/speed_*.py``. The general path is what the
fast path replaces: Pyro's ``Trace_ELBO`` through the engine's loss module (forced here by
making the fast-path lookup return ``None``).
"""

from __future__ import annotations

import math

import pyro
import pytest
import torch

import pyro_models
from pyro_models import SVIConfig
from pyro_models.errors import NonFiniteLossError
from pyro_models.inference import predictive as pred_mod
from pyro_models.inference import svi as svi_mod
from pyro_models.inference.predictive import auto_chunk, pointwise_log_likelihood, predictive_draws
from pyro_models.models.bnn import BNNClassifier, BNNRegression
from pyro_models.models.vae import CVAE, VAE


def _cfg(**kw) -> SVIConfig:
    kw.setdefault("num_steps", 12)
    kw.setdefault("lr", 0.02)
    kw.setdefault("psis_draws", 0)
    return SVIConfig(**kw)


class _Spy:
    """Records whether ``run_svi`` found a fast ELBO."""

    def __init__(self, monkeypatch, disable: bool = False) -> None:
        self.found: list[bool] = []
        real = svi_mod._fast_elbo

        def wrapped(*args, **kwargs):
            fast = None if disable else real(*args, **kwargs)
            self.found.append(fast is not None)
            return fast

        monkeypatch.setattr(svi_mod, "_fast_elbo", wrapped)


def _fit_both(monkeypatch, make_model, data, cfg, guide):
    """The same fit with the fast path and with Pyro's ELBO; returns both results."""
    with monkeypatch.context() as m:
        spy = _Spy(m)
        fast = pyro_models.fit(make_model(), data, cfg, guide=guide, seed=3, progress=False)
        assert spy.found == [True], "the fast path was expected to apply"
    with monkeypatch.context() as m:
        spy = _Spy(m, disable=True)
        slow = pyro_models.fit(make_model(), data, cfg, guide=guide, seed=3, progress=False)
    return fast, slow


def _assert_same_run(fast, slow):
    # The same random draws and the same arithmetic up to the order of float32 sums: losses
    # agree to ~1e-6 relative at first; Adam's sign-like updates can amplify rounding later,
    # so the first steps are compared tightly and the parameters loosely.
    a, b = torch.tensor(fast.losses, dtype=torch.float64), torch.tensor(slow.losses, dtype=torch.float64)
    assert torch.allclose(a[:5], b[:5], rtol=1e-4), (a[:5], b[:5])
    assert torch.allclose(a, b, rtol=1e-2)
    pa, pb = dict(fast.guide.named_parameters()), dict(slow.guide.named_parameters())
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.allclose(pa[k], pb[k], rtol=1e-2, atol=1e-3), k


BNN_CASES = {
    "gaussian": lambda: BNNRegression(in_features=3, hidden_sizes=(8, 8)),
    "heteroscedastic": lambda: BNNRegression(in_features=3, hidden_sizes=(8,), heteroscedastic=True),
    "fixed_noise": lambda: BNNRegression(in_features=3, hidden_sizes=(8,), noise_scale=0.3),
    "laplace_and_normal": lambda: BNNRegression(in_features=3, hidden_sizes=(8,),
                                                prior={"0": "laplace", "2": {"name": "normal", "scale": 0.5}}),
    "bernoulli": lambda: BNNClassifier(in_features=3, hidden_sizes=(8,), out_features=1),
    "categorical": lambda: BNNClassifier(in_features=3, hidden_sizes=(8,), out_features=3),
    "dropout": lambda: BNNRegression(in_features=3, hidden_sizes=(8,), dropout=0.2),
}


@pytest.mark.parametrize("batch_size", [None, 16], ids=["full_batch", "minibatch"])
@pytest.mark.parametrize("case", sorted(BNN_CASES))
def test_bnn_fast_path_equals_pyro_trace_elbo(monkeypatch, case, batch_size):
    make = BNN_CASES[case]
    data = make().example_data()
    fast, slow = _fit_both(monkeypatch, make, data, _cfg(batch_size=batch_size), "normal")
    _assert_same_run(fast, slow)


def test_bnn_fast_path_with_point_estimated_layer(monkeypatch):
    from torch import nn

    from pyro_models.models.bnn import bayesian_net

    def make():
        torch.manual_seed(0)
        return bayesian_net(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)), deterministic=["2.bias"],
                            input_shape=(3,))

    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 3, generator=g)
    data = {"x": x, "y": torch.sin(x.sum(-1)) + 0.1 * torch.randn(40, generator=g)}
    fast, slow = _fit_both(monkeypatch, make, data, _cfg(), "normal")
    _assert_same_run(fast, slow)
    # The point-estimated bias is trained too (it is a model parameter, not a guide one).
    assert torch.allclose(fast.model.net[2].bias, slow.model.net[2].bias, rtol=1e-3, atol=1e-4)


VAE_CASES = {
    "bernoulli": lambda: VAE(in_features=16, latent_dim=2, hidden_sizes=(16,)),
    "gaussian": lambda: VAE(in_features=16, latent_dim=2, hidden_sizes=(16,), likelihood="gaussian"),
    "continuous_bernoulli": lambda: VAE(in_features=16, latent_dim=2, hidden_sizes=(16,),
                                        likelihood="continuous_bernoulli"),
    "cvae": lambda: CVAE(in_features=16, num_classes=3, latent_dim=2, hidden_sizes=(16,)),
}


@pytest.mark.parametrize("batch_size", [None, 16], ids=["full_batch", "minibatch"])
@pytest.mark.parametrize("case", sorted(VAE_CASES))
def test_vae_fast_path_equals_pyro_trace_elbo(monkeypatch, case, batch_size):
    make = VAE_CASES[case]
    data = make().example_data()

    def seeded():
        torch.manual_seed(0)  # the same initial networks for both runs
        return make()

    fast, slow = _fit_both(monkeypatch, seeded, data, _cfg(batch_size=batch_size, lr=0.005), "amortized")
    _assert_same_run(fast, slow)


@pytest.mark.parametrize("options, guide", [
    ({"elbo": "meanfield"}, "normal"),
    ({"num_particles": 2}, "normal"),
    ({"num_particles": 2, "vectorize_particles": True}, "normal"),
    ({}, "mvn"),
    ({}, "delta"),
], ids=["meanfield_elbo", "two_particles", "vectorized_particles", "mvn_guide", "delta_guide"])
def test_fast_path_declines_what_it_does_not_compute(monkeypatch, options, guide):
    spy = _Spy(monkeypatch)
    model = BNNRegression(in_features=2, hidden_sizes=(4,))
    res = pyro_models.fit(model, model.example_data(), _cfg(**options), guide=guide, seed=0, progress=False)
    assert spy.found == [False]
    assert all(math.isfinite(v) for v in res.losses)


def test_fast_path_declines_a_model_that_overrides_forward(monkeypatch):
    class Shifted(BNNRegression):
        def forward(self, x, y=None):
            return super().forward(x + 1.0, y)

    spy = _Spy(monkeypatch)
    model = Shifted(in_features=2, hidden_sizes=(4,))
    pyro_models.fit(model, model.example_data(), _cfg(), seed=0, progress=False)
    assert spy.found == [False]


def test_fast_path_is_refused_when_it_disagrees_with_pyro(monkeypatch):
    """The check in build() is real: a fast loss off by a constant is not used."""
    real_call = svi_mod._FastBNNELBO.__call__
    monkeypatch.setattr(svi_mod._FastBNNELBO, "__call__", lambda self, batch: real_call(self, batch) + 1.0)
    spy = _Spy(monkeypatch)
    model = BNNRegression(in_features=2, hidden_sizes=(4,))
    pyro_models.fit(model, model.example_data(), _cfg(), seed=0, progress=False)
    assert spy.found == [False]


def test_fast_path_keeps_the_nan_guard(monkeypatch):
    """A non-finite fast loss stops the run with the parameters of the last finite step."""
    real_call = svi_mod._FastBNNELBO.__call__
    calls = {"n": 0}
    seen = []

    def flaky(self, batch):
        loss = real_call(self, batch)
        calls["n"] += 1
        # Call 1 is build()'s check, call k + 1 is step k + 1 (step 1 runs Pyro's loss): NaN at step 7.
        return loss * float("nan") if calls["n"] >= 7 else loss

    monkeypatch.setattr(svi_mod._FastBNNELBO, "__call__", flaky)
    model = BNNRegression(in_features=2, hidden_sizes=(4,))
    guide_params = []

    def on_step(info):
        seen.append({k: v.detach().clone() for k, v in guide_params[0].named_parameters()})

    from pyro_models import guides

    g = guides.get("normal")(model)
    guide_params.append(g)
    with pytest.raises(NonFiniteLossError, match="step 7") as err:
        pyro_models.fit(model, model.example_data(), _cfg(num_steps=50), guide=g, seed=0, progress=False,
                        callbacks=[on_step])
    assert len(err.value.result.losses) == 6
    # Restored to the parameters that produced the 6th (last finite) loss: before the 6th update.
    for k, v in g.named_parameters():
        assert torch.equal(v.detach(), seen[4][k])


def test_permuted_copy_and_gather_give_the_same_batches(monkeypatch):
    model = BNNRegression(in_features=2, hidden_sizes=(4,))
    data = model.example_data()
    cfg = _cfg(num_steps=20, batch_size=7)  # 40 points: epochs of 6 batches, the last one of 5
    a = pyro_models.fit(BNNRegression(in_features=2, hidden_sizes=(4,)), data, cfg, seed=1, progress=False)
    monkeypatch.setattr(svi_mod, "_PERMUTE_COPY_BYTES", 0)
    b = pyro_models.fit(BNNRegression(in_features=2, hidden_sizes=(4,)), data, cfg, seed=1, progress=False)
    assert a.losses == b.losses


def test_minibatcher_visits_every_datum_once_per_epoch():
    data = {"x": torch.arange(10.0).unsqueeze(-1), "k": 3}
    for copy_bytes in (0, 10**9):
        mb = svi_mod._Minibatcher(data, ("x",), 10, 4, seed=0, device=torch.device("cpu"))
        mb.copy = copy_bytes > 0
        for epoch in range(2):
            seen = []
            for j in range(mb.per_epoch):
                batch, size = mb.batch(epoch * mb.per_epoch + j)
                assert batch["k"] == 3 and size == batch["x"].shape[0] == (4 if j < 2 else 2)
                assert torch.equal(batch["x"][:, 0].long(), mb.indices(epoch * mb.per_epoch + j))
                seen += batch["x"][:, 0].tolist()
            assert sorted(seen) == list(map(float, range(10)))


def test_validation_covers_the_first_epoch_then_is_off_and_restored():
    states = []
    model = BNNRegression(in_features=2, hidden_sizes=(4,))
    before = pyro.infer.util.is_validation_enabled()
    with pyro.validation_enabled(True):
        pyro_models.fit(model, model.example_data(), _cfg(num_steps=12, batch_size=10), seed=0, progress=False,
                        callbacks=[lambda info: states.append(pyro.infer.util.is_validation_enabled())])
        assert pyro.infer.util.is_validation_enabled()
    assert pyro.infer.util.is_validation_enabled() == before
    # 40 points in batches of 10: steps 1-4 run validated, the rest not.
    assert states == [True] * 4 + [False] * 8


# ------------------------------------------------------------------------------- predictive
def _linreg_draws(s: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {"bias": torch.randn(s, generator=g), "weight": torch.randn(s, d, generator=g),
            "sigma": 0.5 + torch.rand(s, generator=g)}


def _count_runs(monkeypatch):
    runs = []
    real = pred_mod._vectorized_trace

    def counted(model, proto, samples, data):
        runs.append(pred_mod._num(samples))
        return real(model, proto, samples, data)

    monkeypatch.setattr(pred_mod, "_vectorized_trace", counted)
    return runs


def test_chunked_predictive_matches_closed_form_linear_regression(monkeypatch):
    model = pyro_models.models.get("linear_regression")()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 3, generator=g)
    draws = _linreg_draws(500, 3)
    runs = _count_runs(monkeypatch)
    torch.manual_seed(0)
    out = predictive_draws(model, draws, {"x": x, "y": None}, ["y"], chunk=7)
    assert runs == [7] * 71 + [3]
    # y = bias + x @ weight + sigma * z: the standardised residuals are N(0, 1). 25000 values:
    # the mean has sd 1/sqrt(25000) = 0.0063 and the variance sd sqrt(2/25000) = 0.0089; 4 sd.
    loc = draws["bias"][:, None] + draws["weight"] @ x.T
    z = (out["y"] - loc) / draws["sigma"][:, None]
    assert abs(float(z.mean())) < 4 * 0.0063
    assert abs(float(z.var()) - 1) < 4 * 0.0089
    # The pointwise log-likelihood is exact and the same however the draws are chunked.
    y = loc[0] + 0.1
    ll_a = pointwise_log_likelihood(model, draws, {"x": x, "y": y}, ["y"], chunk=13)["y"]
    ll_b = pointwise_log_likelihood(model, draws, {"x": x, "y": y}, ["y"])["y"]
    exact = torch.distributions.Normal(loc, draws["sigma"][:, None]).log_prob(y)
    assert torch.allclose(ll_a, exact, rtol=1e-5, atol=1e-5)
    assert torch.equal(ll_a, ll_b)


def test_auto_chunk_bounds_the_draws_per_run(monkeypatch):
    model = pyro_models.models.get("linear_regression")()
    x = torch.randn(2000, 3)
    draws = _linreg_draws(300, 3)
    runs = _count_runs(monkeypatch)
    out = predictive_draws(model, draws, {"x": x, "y": None}, ["y"])
    # One draw's site values: bias, weight (3), sigma and y (2000) = 2005 numbers.
    per_run = auto_chunk(2005)
    assert per_run == pred_mod.CHUNK_ELEMENTS // 2005 and runs == [per_run, per_run, 300 - 2 * per_run]
    assert out["y"].shape == (300, 2000)
    monkeypatch.setattr(pred_mod, "CHUNK_ELEMENTS", 10**9)
    runs.clear()
    predictive_draws(model, draws, {"x": x, "y": None}, ["y"])
    assert runs == [300]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_chunk_is_refused(bad):
    model = pyro_models.models.get("linear_regression")()
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        predictive_draws(model, _linreg_draws(4, 2), {"x": torch.zeros(3, 2), "y": None}, ["y"], chunk=bad)
    with pytest.raises(ValueError, match="chunk_elements must be a positive int"):
        predictive_draws(model, _linreg_draws(4, 2), {"x": torch.zeros(3, 2), "y": None}, ["y"], chunk_elements=bad)


def test_chunk_elements_sets_the_budget(monkeypatch):
    model = pyro_models.models.get("linear_regression")()
    draws = _linreg_draws(300, 3)
    runs = _count_runs(monkeypatch)
    predictive_draws(model, draws, {"x": torch.randn(2000, 3), "y": None}, ["y"], chunk_elements=100 * 2005)
    assert runs == [100, 100, 100]


def test_one_chunk_outputs_do_not_alias_the_draws():
    """With every draw in one chunk the site values are kept, not copied, except a latent site,
    whose values are the caller's own draws: that one is copied."""
    model = pyro_models.models.get("linear_regression")()
    draws = _linreg_draws(20, 3)
    out = predictive_draws(model, draws, {"x": torch.randn(5, 3), "y": None}, ["weight", "y"])
    torch.testing.assert_close(out["weight"], draws["weight"])
    out["weight"].add_(1.0)
    assert not torch.equal(out["weight"], draws["weight"])
    assert out["y"].shape == (20, 5) and out["y"].is_contiguous()


def test_bnn_predict_matches_a_hand_written_loop():
    """FitResult.predict (vectorised, chunked) against an independent per-draw computation."""
    import torch.nn.functional as F

    model = BNNRegression(in_features=3, hidden_sizes=(16, 16))
    data = model.example_data()
    res = pyro_models.fit(model, data, _cfg(num_steps=30, num_posterior_samples=200), seed=0, progress=False)
    draws = res.samples()
    g = torch.Generator().manual_seed(5)
    x_new = torch.randn(3000, 3, generator=g)  # 3000 points: several automatic chunks
    torch.manual_seed(0)
    pred = res.predict({"x": x_new}, return_sites=["y", "loc", "scale"])
    locs = []
    for s in range(200):
        h = torch.relu(F.linear(x_new, draws["net.0.weight"][s], draws["net.0.bias"][s]))
        h = torch.relu(F.linear(h, draws["net.2.weight"][s], draws["net.2.bias"][s]))
        locs.append(F.linear(h, draws["net.4.weight"][s], draws["net.4.bias"][s])[:, 0])
    loc = torch.stack(locs)
    assert torch.allclose(pred["loc"], loc, rtol=1e-4, atol=1e-5)
    assert torch.allclose(pred["scale"], draws["sigma"][:, None].expand_as(loc))
    assert torch.allclose(pred.mean, loc.mean(0), rtol=1e-4, atol=1e-5)
    # y | draw ~ Normal(loc, sigma): 600000 standardised residuals, mean sd 0.0013, var sd 0.0018.
    z = (pred["y"] - loc) / draws["sigma"][:, None]
    assert abs(float(z.mean())) < 4 * 0.0013
    assert abs(float(z.var()) - 1) < 4 * 0.0018


def test_fit_result_predict_and_log_likelihood_take_a_chunk(monkeypatch):
    """``chunk`` reaches the vectorised runs from the public methods and changes nothing else."""
    model = pyro_models.models.get("linear_regression")()
    data = model.example_data()
    res = pyro_models.fit(model, data, _cfg(num_steps=5, num_posterior_samples=50), seed=0, progress=False)
    runs = _count_runs(monkeypatch)
    torch.manual_seed(0)
    a = res.predict({"x": data["x"]}, chunk=16)
    assert runs[-4:] == [16, 16, 16, 2]
    torch.manual_seed(0)
    b = res.predict({"x": data["x"]})
    assert a["y"].shape == b["y"].shape == (50, len(data["y"]))
    runs.clear()
    ll = res.log_likelihood(chunk=7)["y"]
    assert runs[-8:] == [7] * 7 + [1]
    assert torch.equal(ll, res.log_likelihood()["y"])  # exact, whatever the chunking
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        res.predict({"x": data["x"]}, chunk=0)
