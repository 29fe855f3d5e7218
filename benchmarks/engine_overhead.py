"""What does pyro-models' engine cost over plain Pyro and a hand-written PyTorch loop?

Run:  .venv/bin/python benchmarks/engine_overhead.py [--reps 3]

Each variant runs in a fresh process; repetitions are interleaved (A B C A B C ...) and the
median is reported, with ratios to plain Pyro. Workloads:

* NUTS, eight schools non-centred, 1 chain, 500 warmup + 500 draws: seconds and ESS/s
  (minimum bulk ESS over parameters, computed by ArviZ).
* SVI, Bayesian linear regression N=2000, D=10, mean-field Gaussian guide, 1000 steps:
  steps per second (plain Pyro SVI, a hand-written PyTorch ELBO loop, pyro-models fit()).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

Y = [28.0, 8, -3, 7, -1, 1, 18, 12]
SIGMA = [15.0, 10, 16, 11, 9, 11, 10, 18]


def _eight_schools():
    import pyro
    import pyro.distributions as dist

    def model(J, sigma, y=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("schools", J):
            tt = pyro.sample("theta_trans", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(mu + tau * tt, sigma), obs=y)

    return model


def _min_ess(samples: dict) -> float:
    """Minimum bulk ESS over all parameters (one chain), through ArviZ."""
    import numpy as np

    from pyro_models.inference.arviz_bridge import ess_bulk_min, to_arviz

    return ess_bulk_min(to_arviz({"posterior": {k: np.asarray(v)[None] for k, v in samples.items()}}))


def nuts(variant: str, seed: int) -> dict:
    import pyro
    import torch

    model = _eight_schools()
    data = {"J": 8, "sigma": torch.tensor(SIGMA), "y": torch.tensor(Y)}
    t0 = time.perf_counter()
    if variant == "pyro":
        from pyro.infer import MCMC, NUTS

        pyro.set_rng_seed(seed)
        mc = MCMC(NUTS(model), num_samples=500, warmup_steps=500, disable_progbar=True)
        mc.run(**data)
        samples = {k: v.numpy() for k, v in mc.get_samples().items()}
    else:
        import pyro_models

        res = pyro_models.fit(model, data, pyro_models.MCMCConfig(num_chains=1, num_warmup=500, num_samples=500),
                              seed=seed, progress=False)
        samples = {k: v[0].numpy() for k, v in res.samples().items()}
    secs = time.perf_counter() - t0
    ess = _min_ess(samples)
    return {"seconds": secs, "min_ess": ess, "ess_per_s": ess / secs}


def svi(variant: str, seed: int) -> dict:
    import pyro
    import pyro.distributions as dist
    import torch

    steps = 1000
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 10, generator=g)
    y = x @ torch.linspace(-1, 1, 10) + 0.5 + 0.3 * torch.randn(2000, generator=g)
    torch.manual_seed(seed)
    if variant == "torch":
        # Hand-written mean-field ELBO for the same model: w ~ N(0,1), b ~ N(0,10), sigma ~ HalfNormal(1).
        loc = torch.zeros(12, requires_grad=True)
        log_scale = torch.full((12,), -2.3, requires_grad=True)
        opt = torch.optim.Adam([loc, log_scale], lr=0.01)
        prior_scale = torch.cat([torch.ones(10), torch.tensor([10.0])])
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            z = loc + log_scale.exp() * torch.randn(12)
            w, b, log_sigma = z[:10], z[10], z[11]
            sigma = log_sigma.exp()
            loglik = torch.distributions.Normal(x @ w + b, sigma).log_prob(y).sum()
            logprior = (torch.distributions.Normal(0.0, prior_scale).log_prob(z[:11]).sum()
                        + torch.distributions.HalfNormal(1.0).log_prob(sigma) + log_sigma)
            entropy = log_scale.sum()
            loss = -(loglik + logprior + entropy)
            loss.backward()
            opt.step()
        return {"steps_per_s": steps / (time.perf_counter() - t0)}

    def model(x, y=None):
        w = pyro.sample("weight", dist.Normal(torch.zeros(10), 1.0).to_event(1))
        b = pyro.sample("bias", dist.Normal(0.0, 10.0))
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(x @ w + b, sigma), obs=y)

    if variant == "pyro":
        from pyro.infer import SVI, Trace_ELBO
        from pyro.infer.autoguide import AutoNormal

        pyro.clear_param_store()
        guide = AutoNormal(model)
        svi_ = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
        svi_.step(x, y)  # parameter creation outside the timing, as for the others
        t0 = time.perf_counter()
        for _ in range(steps):
            svi_.step(x, y)
        return {"steps_per_s": steps / (time.perf_counter() - t0)}
    import pyro_models

    res = pyro_models.fit(model, {"x": x, "y": y}, pyro_models.SVIConfig(num_steps=steps, lr=0.01),
                          guide="normal", seed=seed, progress=False)
    return {"steps_per_s": steps / res.fit_time}


WORKLOADS = {"nuts_eight_schools": (nuts, ["pyro", "pyro_models"]),
             "svi_linear_regression": (svi, ["pyro", "torch", "pyro_models"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--worker", nargs=3, metavar=("WORKLOAD", "VARIANT", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        name, variant, seed = args.worker
        print(json.dumps(WORKLOADS[name][0](variant, int(seed))))
        return
    for name, (_, variants) in WORKLOADS.items():
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for rep in range(args.reps):
            for v in variants:
                out = subprocess.run([sys.executable, __file__, "--worker", name, v, str(rep)],
                                     check=True, capture_output=True, text=True).stdout
                runs[v].append(json.loads(out.strip().splitlines()[-1]))
        print(f"\n## {name} (median of {args.reps} fresh-process runs)")
        metrics = list(runs[variants[0]][0])
        print("| variant | " + " | ".join(metrics) + " | ratio to pyro |")
        print("|---|" + "---|" * (len(metrics) + 1))
        key = metrics[-1]
        base = statistics.median(r[key] for r in runs["pyro"])
        for v in variants:
            med = {m: statistics.median(r[m] for r in runs[v]) for m in metrics}
            print(f"| {v} | " + " | ".join(f"{med[m]:.3g}" for m in metrics) + f" | {med[key] / base:.2f}x |")


if __name__ == "__main__":
    main()
