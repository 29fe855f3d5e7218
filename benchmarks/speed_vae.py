"""VAE training speed: pyro-models' ``vae`` + ``amortized`` guide against a plain PyTorch VAE.

Run:  .venv/bin/python benchmarks/speed_vae.py [--reps 5] [--quick] [--threads 1]

Workload (``digits``): scikit-learn's 8x8 digits (1797 images, pixels / 16 in [0, 1]),
Bernoulli decoder, 8 latent dimensions, one hidden layer of 128 ReLU units in the encoder and
the decoder, minibatches of 128 (15 steps per epoch, a fresh permutation each epoch), Adam
lr 1e-3, single-sample ELBO with a Monte Carlo KL term (what ``Trace_ELBO`` computes).
Metric: seconds per epoch, timed over several epochs after a warm-up epoch.

Variants:

- ``torch`` (the reference): a plain PyTorch VAE with the same layers (``nn.Linear``,
  softplus encoder scales), the loss ``-(N / batch) * sum_i [log p(x_i | z_i) + log p(z_i) -
  log q(z_i | x_i)]`` written by hand, ``torch.optim.Adam``.
- ``pyro_models``: ``pyro_models.fit(VAE(in_features=64, latent_dim=8, hidden_sizes=(128,)),
  {"x": x}, SVIConfig(batch_size=128, lr=1e-3), guide="amortized")``; epochs are timed by a
  callback at epoch boundaries after the warm-up epoch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import Workload, main  # noqa: E402

LATENT, HIDDEN, BATCH, LR = 8, 128, 128, 1e-3


def _budget(quick: bool) -> tuple[int, int]:
    """(warm-up epochs, timed epochs)."""
    return (1, 1) if quick else (1, 20)


def _digits():
    import torch
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data / 16.0, dtype=torch.float32)


def _torch(x, warmup: int, epochs: int, seed: int) -> tuple[float, list[float]]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    n, d = x.shape
    enc = nn.Sequential(nn.Linear(d, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * LATENT))
    dec = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, d))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=LR)
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    losses: list[float] = []
    per_epoch = math.ceil(n / BATCH)

    def epoch(e: int) -> None:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919 * e))
        for j in range(per_epoch):
            xb = x[perm[j * BATCH:(j + 1) * BATCH]]
            loc, raw = enc(xb).split(LATENT, -1)
            scale = F.softplus(raw) + 1e-5
            eps = torch.randn_like(loc)
            z = loc + scale * eps
            log_px = -F.binary_cross_entropy_with_logits(dec(z), xb, reduction="sum")
            log_pz = (-0.5 * z * z - half_log_2pi).sum()
            log_qz = (-0.5 * eps * eps - scale.log() - half_log_2pi).sum()
            loss = -(n / len(xb)) * (log_px + log_pz - log_qz)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))

    from _harness import timed_steps

    return timed_steps(epoch, warmup, epochs), losses


def _pyro_models(x, warmup: int, epochs: int, seed: int) -> tuple[float, list[float]]:
    import pyro_models
    from pyro_models import SVIConfig
    from pyro_models.models.vae import VAE

    per_epoch = math.ceil(x.shape[0] / BATCH)
    first, last = warmup * per_epoch, (warmup + epochs) * per_epoch
    marks: dict[int, float] = {}

    class Clock:
        def on_step(self, info):
            if info["step"] in (first, last):
                marks[info["step"]] = time.perf_counter()

    opts = {"num_steps": last, "batch_size": BATCH, "lr": LR, "num_posterior_samples": 1}
    if "psis_draws" in {f.name for f in dataclasses.fields(SVIConfig)}:
        opts["psis_draws"] = 0  # a post-fit diagnostic, not training
    model = VAE(in_features=x.shape[1], latent_dim=LATENT, hidden_sizes=(HIDDEN,), likelihood="bernoulli")
    res = pyro_models.fit(model, {"x": x}, SVIConfig(**opts), guide="amortized", seed=seed, progress=False,
                          callbacks=[Clock()])
    return marks[last] - marks[first], list(res.losses[first:])


VARIANTS = {"torch": _torch, "pyro_models": _pyro_models}

WORKLOADS = [
    Workload(
        name="digits",
        title=f"VAE, one epoch on scikit-learn digits (1797 x 64), batch {BATCH}, latent {LATENT}, hidden {HIDDEN}",
        variants=("torch", "pyro_models"),
        reference="torch",
        metric="seconds_per_epoch",
        higher_is_better=False,
        columns=("seconds_per_epoch", "final_loss"),
        notes={
            "torch": "plain PyTorch VAE, same layers, hand-written single-sample ELBO (reference)",
            "pyro_models": "fit(VAE(64, 8, (128,)), SVIConfig(batch_size=128), guide='amortized')",
        },
    )
]


def worker(workload: str, variant: str, rep: int, quick: bool) -> dict:
    x = _digits()
    warmup, epochs = _budget(quick)
    secs, losses = VARIANTS[variant](x, warmup, epochs, seed=rep)
    per_epoch = math.ceil(x.shape[0] / BATCH)
    tail = losses[-per_epoch:]
    return {"seconds_per_epoch": secs / epochs, "final_loss": sum(tail) / len(tail), "epochs": epochs}


if __name__ == "__main__":
    main(__doc__, WORKLOADS, worker, script=__file__, default_reps=3)
