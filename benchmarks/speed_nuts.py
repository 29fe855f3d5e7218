"""NUTS speed: effective samples per second of pyro-models, plain Pyro and NumPyro.

Run:  .venv/bin/python benchmarks/speed_nuts.py [--reps 3] [--quick] [--only eight_schools]

Workloads (4 chains each, the same model and priors in every library):

- ``eight_schools``: eight schools, non-centred (``mu ~ N(0, 5)``, ``tau ~ HalfCauchy(5)``,
  ``theta_trans ~ N(0, 1)``), 1000 warm-up + 1000 draws per chain.
- ``logistic``: logistic regression, N=5000, D=25 (synthetic, fixed seed), ``w ~ N(0, 1)``,
  ``b ~ N(0, 5)``, 500 warm-up + 500 draws per chain.

Metric: ``ess_per_s`` = smallest bulk ESS over every scalar parameter (``arviz.ess``,
``method="bulk"``, all chains) divided by the wall time of the sampling call, warm-up and JIT
compilation included, imports excluded. ``--quick`` runs a few draws (the ESS is then noise).

Variants:

- ``pyro``: ``pyro.infer.MCMC(NUTS(model))``, one chain after another in the worker (Pyro
  would otherwise fork a process per chain; every variant here uses one process, one thread).
- ``pyro_jit``: the same with ``NUTS(jit_compile=True)``.
- ``numpyro`` (the reference when installed): ``numpyro.infer.MCMC(NUTS(model),
  chain_method="sequential")``, chains one after another like ``pyro``.
- ``numpyro_vectorized``: the same with ``chain_method="vectorized"`` (all chains in one
  batched computation).
- ``numpyro_vectorized_cached``: the same with JAX's persistent compilation cache on (it is
  off by default), so that both libraries can reuse a compiled program across processes.
- ``pyro_models``: ``pyro_models.fit(model, data, MCMCConfig(num_chains=4, ...))`` with the
  default engine.
- ``pyro_models_batched``: the same with ``MCMCConfig(backend="batched")`` (all chains as one
  batch); skipped with a message when ``MCMCConfig`` has no ``backend`` field.
- ``pyro_models_batched_jit``: the same with ``jit_compile=True``. Inductor keeps compiled
  kernels on disk, so this is the cost of every run after the first on a machine.
- ``pyro_models_batched_jit_cold``: the same with an empty Inductor cache (the first run).

NumPyro variants are skipped with a message when ``numpyro`` is not installed
(``pip install numpyro`` installs it with a CPU build of JAX).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import Workload, main  # noqa: E402

Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
SIGMA = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]
N_LOGISTIC, D_LOGISTIC = 5000, 25
CHAINS = 4
BUDGETS = {"eight_schools": (1000, 1000), "logistic": (500, 500)}
QUICK = (20, 20)


def _budget(workload: str, quick: bool) -> tuple[int, int]:
    return QUICK if quick else BUDGETS[workload]


def _logistic_data():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((N_LOGISTIC, D_LOGISTIC)).astype(np.float32)
    w = (rng.standard_normal(D_LOGISTIC) * 0.5).astype(np.float32)
    logits = x @ w + 0.3
    y = (rng.random(N_LOGISTIC) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    return x, y


# ----------------------------------------------------------------------------- torch models
def _torch_problem(workload: str):
    import pyro
    import pyro.distributions as dist
    import torch

    if workload == "eight_schools":
        def model(J, sigma, y=None):
            mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
            tau = pyro.sample("tau", dist.HalfCauchy(5.0))
            with pyro.plate("schools", J):
                theta_trans = pyro.sample("theta_trans", dist.Normal(0.0, 1.0))
                pyro.sample("y", dist.Normal(mu + tau * theta_trans, sigma), obs=y)

        return model, {"J": 8, "sigma": torch.tensor(SIGMA), "y": torch.tensor(Y)}

    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1]), 1.0).to_event(1))
        b = pyro.sample("b", dist.Normal(0.0, 5.0))
        with pyro.plate("data", x.shape[0]):
            # (x * w).sum(-1), not x @ w: the same numbers, but it also broadcasts when w carries
            # a leading chain dim (C, 1, D), which the batched engine needs; x @ w refuses it.
            pyro.sample("y", dist.Bernoulli(logits=(x * w).sum(-1) + b), obs=y)

    x, y = _logistic_data()
    return model, {"x": torch.from_numpy(x), "y": torch.from_numpy(y)}


def _pyro(workload: str, seed: int, quick: bool, jit: bool) -> tuple[float, dict]:
    import pyro
    from pyro.infer import MCMC, NUTS

    model, data = _torch_problem(workload)
    warmup, draws = _budget(workload, quick)
    chains = []
    t0 = time.perf_counter()
    for c in range(CHAINS):
        pyro.set_rng_seed(seed * 1009 + c)
        kernel = NUTS(model, jit_compile=jit, ignore_jit_warnings=True)
        mc = MCMC(kernel, num_samples=draws, warmup_steps=warmup, disable_progbar=True)
        mc.run(**data)
        chains.append({k: v.numpy() for k, v in mc.get_samples().items()})
    secs = time.perf_counter() - t0
    import numpy as np

    return secs, {k: np.stack([ch[k] for ch in chains]) for k in chains[0]}


def _pyro_models(workload: str, seed: int, quick: bool, backend: str | None,
                 jit: bool = False) -> tuple[float, dict] | str:
    import pyro_models
    from pyro_models import MCMCConfig

    model, data = _torch_problem(workload)
    warmup, draws = _budget(workload, quick)
    opts = {"num_chains": CHAINS, "num_warmup": warmup, "num_samples": draws}
    if backend is not None:
        if "backend" not in {f.name for f in dataclasses.fields(MCMCConfig)}:
            return "MCMCConfig has no 'backend' field in this version: the batched engine is not there yet"
        opts["backend"] = backend
        opts["jit_compile"] = jit
    t0 = time.perf_counter()
    res = pyro_models.fit(model, data, MCMCConfig(**opts), seed=seed, progress=False)
    secs = time.perf_counter() - t0
    return secs, {k: v.numpy() for k, v in res.samples().items() if k in res.latent_sites}


# ----------------------------------------------------------------------------- NumPyro
def _numpyro(workload: str, seed: int, quick: bool, chain_method: str,
             persistent_cache: bool = False) -> tuple[float, dict] | str:
    try:
        import jax
        import numpyro
        import numpyro.distributions as ndist
        from numpyro.infer import MCMC, NUTS
    except ImportError as exc:
        return f"numpyro is not installed ({exc.name}); `pip install numpyro` to include it"
    import jax.numpy as jnp
    import numpy as np

    if persistent_cache:
        # JAX's on-disk compilation cache (off by default), for every program however small:
        # the counterpart of Inductor's cache in the pyro_models_batched_jit variant.
        import tempfile

        jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "pyro-models-bench-jax"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

    numpyro.set_host_device_count(1)
    if workload == "eight_schools":
        def model(J, sigma, y=None):
            mu = numpyro.sample("mu", ndist.Normal(0.0, 5.0))
            tau = numpyro.sample("tau", ndist.HalfCauchy(5.0))
            with numpyro.plate("schools", J):
                theta_trans = numpyro.sample("theta_trans", ndist.Normal(0.0, 1.0))
                numpyro.sample("y", ndist.Normal(mu + tau * theta_trans, sigma), obs=y)

        data = {"J": 8, "sigma": jnp.array(SIGMA), "y": jnp.array(Y)}
    else:
        def model(x, y=None):
            w = numpyro.sample("w", ndist.Normal(jnp.zeros(x.shape[1]), 1.0).to_event(1))
            b = numpyro.sample("b", ndist.Normal(0.0, 5.0))
            with numpyro.plate("data", x.shape[0]):
                numpyro.sample("y", ndist.Bernoulli(logits=x @ w + b), obs=y)

        x, y = _logistic_data()
        data = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    warmup, draws = _budget(workload, quick)
    t0 = time.perf_counter()
    mc = MCMC(NUTS(model), num_warmup=warmup, num_samples=draws, num_chains=CHAINS,
              chain_method=chain_method, progress_bar=False)
    mc.run(jax.random.PRNGKey(seed), **data)
    samples = mc.get_samples(group_by_chain=True)
    jax.block_until_ready(samples)
    secs = time.perf_counter() - t0
    return secs, {k: np.asarray(v) for k, v in samples.items()}


def _min_bulk_ess(samples: dict) -> float:
    """Smallest bulk ESS over every scalar of every site; samples are (chain, draw, ...)."""
    import arviz as az
    import numpy as np

    best = np.inf
    for v in samples.values():
        a = np.asarray(v, dtype=np.float64)
        a = a.reshape(a.shape[0], a.shape[1], -1)
        for j in range(a.shape[2]):
            best = min(best, float(az.ess(a[:, :, j], method="bulk")))
    return best


VARIANTS = ("pyro", "pyro_jit", "numpyro", "numpyro_vectorized", "numpyro_vectorized_cached", "pyro_models",
            "pyro_models_batched", "pyro_models_batched_jit", "pyro_models_batched_jit_cold")
NOTES = {
    "pyro": "MCMC(NUTS(model)), chains one after another",
    "pyro_jit": "MCMC(NUTS(model, jit_compile=True)), chains one after another",
    "numpyro": "numpyro MCMC(NUTS(model), chain_method='sequential') (reference)",
    "numpyro_vectorized": "numpyro MCMC(NUTS(model), chain_method='vectorized')",
    "numpyro_vectorized_cached": "the same with JAX's persistent compilation cache switched on (warm after the "
                                 "first repetition)",
    "pyro_models": "fit(model, data, MCMCConfig(num_chains=4)), default engine",
    "pyro_models_batched": "fit(model, data, MCMCConfig(num_chains=4, backend='batched'))",
    "pyro_models_batched_jit": "the same with jit_compile=True (compiled leaf and merge; compile time included, "
                               "Inductor's on-disk cache warm as on any run after the first)",
    "pyro_models_batched_jit_cold": "the same with an empty Inductor cache (a first run on a new machine)",
}

WORKLOADS = [
    Workload(
        name="eight_schools",
        title="NUTS, eight schools non-centred, 4 chains x (1000 warm-up + 1000 draws)",
        variants=VARIANTS, reference=("numpyro", "pyro"), metric="ess_per_s", higher_is_better=True,
        columns=("ess_per_s", "seconds", "min_ess"), notes=NOTES,
    ),
    Workload(
        name="logistic",
        title=f"NUTS, logistic regression N={N_LOGISTIC} D={D_LOGISTIC}, 4 chains x (500 warm-up + 500 draws)",
        variants=VARIANTS, reference=("numpyro", "pyro"), metric="ess_per_s", higher_is_better=True,
        columns=("ess_per_s", "seconds", "min_ess"), notes=NOTES,
    ),
]


def worker(workload: str, variant: str, rep: int, quick: bool) -> dict:
    if variant in ("pyro", "pyro_jit"):
        out = _pyro(workload, rep, quick, jit=variant == "pyro_jit")
    elif variant.startswith("numpyro"):
        out = _numpyro(workload, rep, quick, "sequential" if variant == "numpyro" else "vectorized",
                       persistent_cache=variant == "numpyro_vectorized_cached")
    elif variant == "pyro_models_batched_jit_cold":
        import shutil
        import tempfile

        cache = tempfile.mkdtemp(prefix="pyro-models-cold-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # read when Inductor first needs its cache
        try:
            out = _pyro_models(workload, rep, quick, backend="batched", jit=True)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    else:
        batched = variant.startswith("pyro_models_batched")
        out = _pyro_models(workload, rep, quick, backend="batched" if batched else None,
                           jit=variant == "pyro_models_batched_jit")
    if isinstance(out, str):
        return {"skipped": out}
    secs, samples = out
    ess = _min_bulk_ess(samples)
    warmup, draws = _budget(workload, quick)
    return {"ess_per_s": ess / secs, "seconds": secs, "min_ess": ess, "chains": CHAINS, "warmup": warmup,
            "draws": draws}


if __name__ == "__main__":
    main(__doc__, WORKLOADS, worker, script=__file__, default_reps=3)
