"""SVI speed: a Bayesian neural net trained by pyro-models, plain Pyro and hand-written PyTorch.

Run:  .venv/bin/python benchmarks/speed_svi.py [--reps 5] [--quick] [--threads 1]

Workload (``bnn``): regression net 8-50-50-1 (ReLU), N(0, 1) priors on every weight,
``sigma ~ HalfNormal(1)``, 8000 synthetic points (fixed seed), minibatches of 128 (each epoch
a fresh permutation), mean-field Gaussian guide, Adam lr 0.01, single-sample ELBO. Metric:
optimisation steps per second over a fixed number of steps after a warm-up (the first steps
create parameters and warm caches; they are not timed).

Variants:

- ``torch`` (the reference): hand-written PyTorch. Reparameterised mean-field Gaussian weights
  (softplus scales), the same single-sample ELBO (log-likelihood scaled by N / batch, log prior,
  minus log q, with the log-Jacobian of ``sigma = exp(u)``), ``torch.optim.Adam``.
- ``pyro``: plain Pyro, ``SVI(model, AutoNormal(model), pyro.optim.Adam, Trace_ELBO())`` with
  the model written as a Pyro function and ``pyro.plate(subsample=...)`` for the minibatch.
- ``pyro_models``: ``pyro_models.fit(bnn_regression(in_features=8, hidden_sizes=[50, 50]),
  data, SVIConfig(batch_size=128, lr=0.01), guide="normal")``; steps are timed by a callback
  between the end of the warm-up and the last step, so result assembly is not counted.

``final_loss`` (mean loss over the last tenth of the timed steps) is a sanity check that every
variant optimises the same objective; the initialisations differ, so it agrees only roughly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import Workload, main  # noqa: E402

N, D, HIDDEN, BATCH, LR = 8000, 8, (50, 50), 128, 0.01


def _budget(quick: bool) -> tuple[int, int]:
    """(warm-up steps, timed steps).

    The warm-up covers the first epoch (63 batches), during which pyro-models still runs Pyro's
    argument validation on every step: the timed steps are the steady state.
    """
    return (3, 10) if quick else (100, 1000)


def _data():
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    w = torch.randn(D, generator=g) / math.sqrt(D)
    f = torch.sin(2 * x @ w) + 0.5 * (x[:, 0] * x[:, 1])
    y = f + 0.2 * torch.randn(N, generator=g)
    return x, (y - y.mean()) / y.std()


def _epoch_batches(seed: int):
    """Index tensors of successive minibatches: a fresh permutation every epoch."""
    import torch

    epoch = 0
    while True:
        perm = torch.randperm(N, generator=torch.Generator().manual_seed(seed + 7919 * epoch))
        for j in range(math.ceil(N / BATCH)):
            yield perm[j * BATCH:(j + 1) * BATCH]
        epoch += 1


def _torch(x, y, warmup: int, steps: int, seed: int) -> tuple[float, list[float]]:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    widths = [D, *HIDDEN, 1]
    shapes = []
    for a, b in zip(widths[:-1], widths[1:]):
        shapes += [(b, a), (b,)]
    inv_softplus_01 = math.log(math.expm1(0.1))
    locs = [(0.1 * torch.randn(s)).requires_grad_() for s in shapes]
    raws = [torch.full(s, inv_softplus_01).requires_grad_() for s in shapes]
    sig_loc = torch.zeros((), requires_grad=True)
    sig_raw = torch.full((), inv_softplus_01, requires_grad=True)
    opt = torch.optim.Adam([*locs, *raws, sig_loc, sig_raw], lr=LR)
    batches = _epoch_batches(seed)
    losses: list[float] = []

    def step(_: int) -> None:
        idx = next(batches)
        xb, yb = x[idx], y[idx]
        log_q = log_p = 0.0
        ws = []
        for loc, raw in zip(locs, raws):
            scale = F.softplus(raw)
            eps = torch.randn_like(loc)
            w = loc + scale * eps
            log_q = log_q + (-0.5 * eps**2 - scale.log() - half_log_2pi).sum()
            log_p = log_p + (-0.5 * w**2 - half_log_2pi).sum()
            ws.append(w)
        s_scale = F.softplus(sig_raw)
        u = sig_loc + s_scale * torch.randn(())
        sigma = u.exp()
        log_q = log_q + (-0.5 * ((u - sig_loc) / s_scale) ** 2 - s_scale.log() - half_log_2pi) - u
        log_p = log_p + math.log(2) - half_log_2pi - 0.5 * sigma**2  # HalfNormal(1)
        h = xb
        for i in range(0, len(ws) - 2, 2):
            h = torch.relu(F.linear(h, ws[i], ws[i + 1]))
        mu = F.linear(h, ws[-2], ws[-1])[:, 0]
        loglik = (-0.5 * ((yb - mu) / sigma) ** 2 - sigma.log() - half_log_2pi).sum() * (N / len(idx))
        loss = -(loglik + log_p - log_q)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))

    from _harness import timed_steps

    return timed_steps(step, warmup, steps), losses


def _pyro(x, y, warmup: int, steps: int, seed: int) -> tuple[float, list[float]]:
    import pyro
    import pyro.distributions as dist
    import torch
    import torch.nn.functional as F
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal

    widths = [D, *HIDDEN, 1]

    def model(x, y, idx):
        ws = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            ws.append(pyro.sample(f"w{i}", dist.Normal(0.0, 1.0).expand([b, a]).to_event(2)))
            ws.append(pyro.sample(f"b{i}", dist.Normal(0.0, 1.0).expand([b]).to_event(1)))
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        with pyro.plate("data", N, subsample=idx):
            h = x[idx]
            for i in range(0, len(ws) - 2, 2):
                h = torch.relu(F.linear(h, ws[i], ws[i + 1]))
            mu = F.linear(h, ws[-2], ws[-1])[:, 0]
            pyro.sample("y", dist.Normal(mu, sigma), obs=y[idx])

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = AutoNormal(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    batches = _epoch_batches(seed)
    losses: list[float] = []

    def step(_: int) -> None:
        losses.append(svi.step(x, y, next(batches)))

    from _harness import timed_steps

    return timed_steps(step, warmup, steps), losses


def _pyro_models(x, y, warmup: int, steps: int, seed: int) -> tuple[float, list[float]]:
    import pyro_models
    from pyro_models import SVIConfig

    marks: dict[int, float] = {}

    class Clock:
        def on_step(self, info):
            if info["step"] in (warmup, warmup + steps):
                marks[info["step"]] = time.perf_counter()

    opts = {"num_steps": warmup + steps, "batch_size": BATCH, "lr": LR, "num_posterior_samples": 10}
    fields = {f.name for f in dataclasses.fields(SVIConfig)}
    if "psis_draws" in fields:
        opts["psis_draws"] = 0  # a post-fit diagnostic: not part of the training loop
    net = pyro_models.models.get("bnn_regression")(in_features=D, hidden_sizes=list(HIDDEN))
    res = pyro_models.fit(net, {"x": x, "y": y}, SVIConfig(**opts), guide="normal", seed=seed,
                          progress=False, callbacks=[Clock()])
    if warmup == 0:
        raise ValueError("pyro_models timing needs a warm-up of at least one step")
    return marks[warmup + steps] - marks[warmup], list(res.losses[warmup:])


VARIANTS = {"torch": _torch, "pyro": _pyro, "pyro_models": _pyro_models}

WORKLOADS = [
    Workload(
        name="bnn",
        title=f"SVI, BNN {D}-{HIDDEN[0]}-{HIDDEN[1]}-1 on {N} points, batch {BATCH}, mean-field guide",
        variants=("torch", "pyro", "pyro_models"),
        reference="torch",
        metric="steps_per_s",
        higher_is_better=True,
        columns=("steps_per_s", "ms_per_step", "final_loss"),
        notes={
            "torch": "hand-written reparameterised mean-field ELBO + torch.optim.Adam (reference)",
            "pyro": "SVI + AutoNormal + Trace_ELBO + pyro.optim.Adam, plate subsampling",
            "pyro_models": "fit(bnn_regression, SVIConfig(batch_size=128), guide='normal')",
        },
    )
]


def worker(workload: str, variant: str, rep: int, quick: bool) -> dict:
    x, y = _data()
    warmup, steps = _budget(quick)
    secs, losses = VARIANTS[variant](x, y, warmup, steps, seed=rep)
    tail = losses[-max(1, steps // 10):]
    return {"steps_per_s": steps / secs, "ms_per_step": 1000 * secs / steps,
            "final_loss": sum(tail) / len(tail), "steps": steps}


if __name__ == "__main__":
    main(__doc__, WORKLOADS, worker, script=__file__, default_reps=3)
