"""Posterior predictive speed and memory: pyro-models against Pyro's Predictive and hand-written torch.

Run:  .venv/bin/python benchmarks/speed_predictive.py [--reps 5] [--quick] [--threads 1]

Workload (``bnn``): the regression net of ``speed_svi.py`` (8-50-50-1, ReLU) trained briefly
with the mean-field guide (the same seed in every worker, so every variant gets the same 500
posterior draws), then predictions at 2000 new inputs: for every draw the predictive mean
``loc`` (2000,), a draw of ``y``, and the summary (predictive mean, epistemic, aleatoric and
total variance per point). Training and drawing the posterior samples are not timed.

Metrics: ``seconds`` of the prediction call (median over a few calls in the worker),
``peak_mib``, the peak resident memory the call adds (Linux high-water mark, reset before the
call, so tensors count), and ``mean_of_mean``, the average predictive mean: the same for every
variant (same draws), a check that they compute the same thing.

Variants:

- ``torch_loop`` (the reference): a hand-written loop over draws, ``F.linear`` layers with each
  draw's weights, outputs stacked, then the noise draw and the summary.
- ``torch_batched``: hand-written, all draws at once with batched matmuls (``torch.baddbmm``
  over the draw dim): the fastest to write, the most memory.
- ``pyro_parallel``: ``pyro.infer.Predictive(model, posterior_samples=draws, parallel=True)``
  with the net written as a plain Pyro model whose matmuls broadcast over leading draw dims,
  then the same summary by hand.
- ``pyro_loop``: the same with ``parallel=False`` (Pyro's default: one model run per draw).
- ``pyro_models``: ``FitResult.predict({"x": x_new})`` (validates the inputs, draws ``y``,
  ``loc`` and ``scale`` under one vectorised model run per chunk of draws, summarises).
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import PeakMemory, Workload, main  # noqa: E402

D, HIDDEN, N_TRAIN, N_TEST = 8, (50, 50), 2000, 2000


def _budget(quick: bool) -> tuple[int, int, int]:
    """(training steps, posterior draws, timed calls)."""
    return (5, 20, 1) if quick else (300, 500, 3)


def _data(n: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    w = torch.randn(D, generator=torch.Generator().manual_seed(0)) / math.sqrt(D)
    y = torch.sin(2 * x @ w) + 0.5 * x[:, 0] * x[:, 1] + 0.2 * torch.randn(n, generator=g)
    return x, y


def _fit(train_steps: int, num_draws: int):
    import pyro_models
    from pyro_models import SVIConfig

    x, y = _data(N_TRAIN, 1)
    net = pyro_models.models.get("bnn_regression")(in_features=D, hidden_sizes=list(HIDDEN))
    opts = {"num_steps": train_steps, "batch_size": 128, "lr": 0.01, "num_posterior_samples": num_draws}
    import dataclasses

    if "psis_draws" in {f.name for f in dataclasses.fields(SVIConfig)}:
        opts["psis_draws"] = 0
    res = pyro_models.fit(net, {"x": x, "y": y}, SVIConfig(**opts), guide="normal", seed=0, progress=False)
    draws = res.samples()  # cached on the result: predict() below reuses these draws
    return net, res, draws


def _summary(loc, scale):
    """Predictive mean, epistemic / aleatoric / total variance per point, from (S, N) draws."""
    mean = loc.mean(0)
    epistemic = loc.var(0, unbiased=False)
    aleatoric = (scale * scale).mean(0)
    return {"mean": mean, "epistemic_var": epistemic, "aleatoric_var": aleatoric,
            "total_var": epistemic + aleatoric}


def _torch_predict(draws, x):
    import torch

    s = draws["sigma"].shape[0]
    h = x.expand(s, *x.shape)
    names = _weight_names(draws)
    for i, wname in enumerate(names):
        w, b = draws[wname], draws[wname[: -len("weight")] + "bias"]
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if i < len(names) - 1:
            h = torch.relu(h)
    loc = h[..., 0]
    scale = draws["sigma"].unsqueeze(-1).expand_as(loc)
    y = loc + scale * torch.randn_like(loc)
    return {"y": y, **_summary(loc, scale)}


def _torch_loop(draws, x):
    import torch
    import torch.nn.functional as F

    names = _weight_names(draws)
    locs = []
    for s in range(draws["sigma"].shape[0]):
        h = x
        for i, wname in enumerate(names):
            h = F.linear(h, draws[wname][s], draws[wname[: -len("weight")] + "bias"][s])
            if i < len(names) - 1:
                h = torch.relu(h)
        locs.append(h[:, 0])
    loc = torch.stack(locs)
    scale = draws["sigma"].unsqueeze(-1).expand_as(loc)
    y = loc + scale * torch.randn_like(loc)
    return {"y": y, **_summary(loc, scale)}


def _weight_names(draws):
    names = [k for k in draws if k.startswith("net.") and k.endswith(".weight")]
    return sorted(names, key=lambda k: int(k.split(".")[1]))


def _plain_pyro_model(x, y=None):
    """The same net as a plain Pyro model; its matmuls broadcast over leading draw dims."""
    import pyro
    import pyro.distributions as dist
    import torch

    widths = [D, *HIDDEN, 1]
    h = x
    for j, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        w = pyro.sample(f"net.{2 * j}.weight", dist.Normal(0.0, 1.0).expand([b, a]).to_event(2))
        bias = pyro.sample(f"net.{2 * j}.bias", dist.Normal(0.0, 1.0).expand([b]).to_event(1))
        h = h @ w.transpose(-1, -2) + bias.unsqueeze(-2)
        if j < len(widths) - 2:
            h = torch.relu(h)
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    loc = pyro.deterministic("loc", h[..., 0])
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(loc, sigma), obs=y)


def _pyro_predict(draws, x, parallel: bool):
    from pyro.infer import Predictive

    latent = {k: v for k, v in draws.items() if k not in ("loc", "scale")}
    pred = Predictive(_plain_pyro_model, posterior_samples=latent, return_sites=("y", "loc"), parallel=parallel)
    out = pred(x=x)
    loc = out["loc"].reshape(-1, x.shape[0])
    scale = latent["sigma"].unsqueeze(-1).expand_as(loc)
    return {"y": out["y"].reshape(-1, x.shape[0]), **_summary(loc, scale)}


WORKLOADS = [
    Workload(
        name="bnn",
        title=f"Posterior predictive, BNN {D}-{HIDDEN[0]}-{HIDDEN[1]}-1, 500 draws x {N_TEST} points",
        variants=("torch_loop", "torch_batched", "pyro_parallel", "pyro_loop", "pyro_models"),
        reference="torch_loop",
        metric="seconds",
        higher_is_better=False,
        columns=("seconds", "peak_mib", "mean_of_mean"),
        notes={
            "torch_loop": "hand-written loop over draws, F.linear per layer (reference)",
            "torch_batched": "hand-written batched matmuls over all draws at once",
            "pyro_parallel": "pyro.infer.Predictive(plain Pyro model, posterior_samples, parallel=True)",
            "pyro_loop": "pyro.infer.Predictive(plain Pyro model, posterior_samples) (parallel=False, Pyro's default)",
            "pyro_models": "FitResult.predict({'x': x_new})",
        },
    )
]


def worker(workload: str, variant: str, rep: int, quick: bool) -> dict:
    import torch

    steps, num_draws, calls = _budget(quick)
    net, res, draws = _fit(steps, num_draws)
    x_new, _ = _data(N_TEST, 2)
    if variant == "torch_loop":
        call = lambda: _torch_loop(draws, x_new)  # noqa: E731
    elif variant == "torch_batched":
        call = lambda: _torch_predict(draws, x_new)  # noqa: E731
    elif variant in ("pyro_parallel", "pyro_loop"):
        call = lambda: _pyro_predict(draws, x_new, parallel=variant == "pyro_parallel")  # noqa: E731
    else:
        call = lambda: res.predict({"x": x_new})  # noqa: E731
    torch.manual_seed(rep)
    times, peaks = [], []
    with torch.no_grad():
        for _ in range(calls):
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                out = call()
                times.append(time.perf_counter() - t0)
            peaks.append(mem.peak / 2**20)
            # The same posterior draws everywhere: the predictive means agree across variants.
            check = float((out["mean"] if "mean" in out else out.mean).mean())
            del out
    return {"seconds": statistics.median(times), "peak_mib": max(peaks), "mean_of_mean": check,
            "draws": num_draws}


if __name__ == "__main__":
    main(__doc__, WORKLOADS, worker, script=__file__, default_reps=3)
