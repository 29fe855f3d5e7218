"""The MCMC engine: Pyro's NUTS/HMC kernels driven by our own loop.

Driving ``kernel.sample`` directly (as Pyro's ``MCMC`` does internally) lets us record the
per-draw statistics ArviZ expects (divergences, energy, tree depth, step size, acceptance),
show progress, and checkpoint after warmup so an interrupted run resumes where it stopped.
Chains run one after another, each with its own seed.

``MCMCConfig(backend="batched")`` (or ``"auto"``) hands the run to
:mod:`pyro_models.inference.batched_nuts` instead, which advances all chains as one batch.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import pyro
import torch
from pyro.infer.mcmc import HMC, NUTS

from ..init_strategies import get_init_strategy
from .adapter import ModelAdapter
from .checkpoint import check_resume, load_checkpoint, save_checkpoint
from .config import MCMCConfig
from .engine_common import Callbacks, progress_bar, rng_state, set_rng_state

__all__ = ["run_mcmc", "DivergenceWarning", "BatchedFallbackWarning"]


class DivergenceWarning(UserWarning):
    """NUTS/HMC reported divergent transitions: the posterior may be biased."""


class BatchedFallbackWarning(UserWarning):
    """``backend="auto"``: the model cannot be batched over chains; Pyro's kernel runs instead."""


class _StatsMixin:
    """Capture per-iteration statistics that Pyro's kernels keep in local variables."""

    def _sample_r(self, name):
        r, r_unscaled = super()._sample_r(name)
        _, pe, _ = self._fetch_from_cache()
        self._stat_energy = float(self._kinetic_energy(r_unscaled) + pe)
        return r, r_unscaled

    def _build_basetree(self, *args, **kwargs):
        self._stat_steps += 1
        return super()._build_basetree(*args, **kwargs)

    def _build_tree(self, z, r, z_grads, log_slice, direction, tree_depth, energy_current):
        self._stat_depth = max(self._stat_depth, tree_depth)
        return super()._build_tree(z, r, z_grads, log_slice, direction, tree_depth, energy_current)

    def sample_with_stats(self, params):
        self._stat_depth, self._stat_steps, self._stat_energy = -1, 0, float("nan")
        n_div = len(self._divergences)
        mean_before = self._mean_accept_prob
        out = super().sample(params)
        warm = self._warmup_steps
        n = self._t - warm if self._t > warm else self._t
        # Pyro keeps only a running mean of the acceptance probability; undo the averaging.
        accept = mean_before + n * (self._mean_accept_prob - mean_before) if n > 0 else float("nan")
        _, pe, _ = self._fetch_from_cache()
        steps = self._stat_steps if isinstance(self, NUTS) else self.num_steps
        stats = {
            "diverging": len(self._divergences) > n_div,
            "energy": self._stat_energy,
            "tree_depth": self._stat_depth + 1 if isinstance(self, NUTS) else 0,
            "n_steps": steps,
            "step_size": float(self.step_size),
            "acceptance_rate": min(max(accept, 0.0), 1.0),
            "lp": -float(pe),
        }
        return out, stats


class _NUTS(_StatsMixin, NUTS):
    pass


class _HMC(_StatsMixin, HMC):
    pass


def _make_kernel(model, config: MCMCConfig, max_plate_nesting: int):
    common = dict(
        # Known from our own inspection; Pyro would otherwise guess it by sampling the
        # prior, which fails for improper (flat) priors.
        max_plate_nesting=max_plate_nesting,
        step_size=config.step_size,
        adapt_step_size=config.adapt_step_size,
        adapt_mass_matrix=config.adapt_mass_matrix,
        full_mass=config.dense_mass,
        jit_compile=config.jit_compile,
        ignore_jit_warnings=True,
        target_accept_prob=config.target_accept,
        init_strategy=get_init_strategy(config.init_strategy),
    )
    if config.kernel == "nuts":
        return _NUTS(model, max_tree_depth=config.max_tree_depth, **common)
    return _HMC(model, num_steps=config.num_steps, **common)


_STAT_NAMES = ("diverging", "energy", "tree_depth", "n_steps", "step_size", "acceptance_rate", "lp")


def _empty_chain() -> dict[str, Any]:
    return {"z": None, "draws": [], "stats": {k: [] for k in _STAT_NAMES}, "done": 0,
            "complete": False, "step_size": None, "inverse_mass_matrix": None, "rng": None}


def run_mcmc(
    adapter: ModelAdapter,
    data: dict[str, Any],
    config: MCMCConfig,
    *,
    seed: int,
    device: torch.device,
    progress: bool,
    checkpoint_dir: str | None,
    callbacks: Callbacks,
    fingerprint: str,
):
    from .result import FitResult

    start_time = time.perf_counter()
    if config.backend != "pyro" and config.kernel == "nuts":
        from .batched_nuts import ModelNotVectorizableError, build_batched_potential, run_batched_mcmc

        potential = None
        try:
            with warnings.catch_warnings(), pyro.validation_enabled(False):
                potential = build_batched_potential(adapter, data, config, seed=seed, device=device)
        except ModelNotVectorizableError as exc:
            if config.backend == "batched":
                raise ModelNotVectorizableError(
                    f"model {adapter.name!r} cannot run as one batch of chains: {exc}. Use "
                    f"MCMCConfig(backend='pyro') (or 'auto' to fall back automatically)"
                ) from exc
            warnings.warn(
                f"model {adapter.name!r} cannot run as one batch of chains ({exc}); falling "
                f"back to Pyro's NUTS kernel, one chain after another",
                BatchedFallbackWarning,
                stacklevel=3,
            )
        if potential is not None:
            draws, stats = run_batched_mcmc(
                adapter, data, config, seed=seed, device=device, progress=progress,
                checkpoint_dir=checkpoint_dir, callbacks=callbacks, fingerprint=fingerprint,
                potential=potential,
            )
            _warn_divergences(stats, config)
            return FitResult._from_mcmc(
                adapter=adapter, data=data, config=config, draws=draws, sample_stats=stats, seed=seed,
                device=device, fit_time=time.perf_counter() - start_time,
            )
    chains = [_empty_chain() for _ in range(config.num_chains)]
    if checkpoint_dir is not None:
        ck = load_checkpoint(checkpoint_dir)
        if ck is not None:
            check_resume(ck, "mcmc", fingerprint, checkpoint_dir)
            chains = ck["chains"]
    total_iters = config.num_warmup + config.num_samples * config.thin
    for c in range(config.num_chains):
        ch = chains[c]
        if ch["complete"]:
            continue
        _run_chain(c, ch, adapter, data, config, seed, device, progress, checkpoint_dir,
                   callbacks, fingerprint, chains, total_iters)
    # Assemble constrained draws: (chain, draw, *site_shape).
    draws = {k: torch.stack([torch.stack(ch["draws_c"][k]) for ch in chains]) for k in chains[0]["draws_c"]}
    stats = {k: torch.tensor([ch["stats"][k] for ch in chains]) for k in _STAT_NAMES}
    stats["diverging"] = stats["diverging"].bool()
    _warn_divergences(stats, config)
    return FitResult._from_mcmc(
        adapter=adapter, data=data, config=config, draws=draws, sample_stats=stats, seed=seed,
        device=device, fit_time=time.perf_counter() - start_time,
    )


def _warn_divergences(stats: dict[str, torch.Tensor], config: MCMCConfig) -> None:
    n_div = int(stats["diverging"].sum())
    if n_div:
        warnings.warn(
            f"{n_div} divergent transition(s) out of {config.num_chains * config.num_samples} draws: "
            f"the sampler could not follow the posterior's curvature and the draws may be biased. "
            f"Remedies: reparameterise (e.g. a non-centred hierarchical model), or raise "
            f"MCMCConfig(target_accept=...) above {config.target_accept} (0.9-0.99).",
            DivergenceWarning,
            stacklevel=4,
        )


def _run_chain(c, ch, adapter, data, config, *rest):
    # As Pyro's MCMC does by default: argument validation of every distribution on every
    # leapfrog step costs ~25% of the run, and the potential energy is already checked.
    with warnings.catch_warnings(), pyro.validation_enabled(False):
        if config.jit_compile:
            # Pyro's jit_compile uses torch.jit.trace, which PyTorch now flags as deprecated.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.*deprecated", category=DeprecationWarning)
        _run_chain_inner(c, ch, adapter, data, config, *rest)


def _run_chain_inner(c, ch, adapter, data, config, seed, device, progress, checkpoint_dir, callbacks,
                     fingerprint, chains, total_iters):
    kernel = _make_kernel(adapter.fn, config, adapter.sites.max_plate_nesting)
    resumed = ch["z"] is not None and ch["done"] > 0
    pyro.set_rng_seed(seed * 1009 + c)
    if resumed:
        kernel.initial_params = {k: v.to(device) for k, v in ch["z"].items()}
    kernel.setup(config.num_warmup, **data)
    start_iter = 0
    if resumed:
        # Warmup is over: reuse its adapted step size and mass matrix, continue sampling.
        kernel._adapter.step_size = ch["step_size"]
        kernel._adapter.mass_matrix_adapter.inverse_mass_matrix = {
            k: v.to(device) for k, v in ch["inverse_mass_matrix"].items()
        }
        kernel._t = config.num_warmup + ch["done"] * config.thin
        start_iter = kernel._t
        set_rng_state(ch["rng"], device)
    params = kernel.initial_params
    transforms = kernel.transforms
    bar = progress_bar(progress, total_iters, f"chain {c + 1}/{config.num_chains}")
    bar.update(start_iter)

    def snapshot():
        ch["z"] = {k: v.detach().cpu().clone() for k, v in params.items()}
        ch["step_size"] = float(kernel.step_size)
        ch["inverse_mass_matrix"] = {
            k: v.detach().cpu().clone() for k, v in kernel._adapter.mass_matrix_adapter.inverse_mass_matrix.items()
        }
        ch["rng"] = rng_state(device)
        return {"engine": "mcmc", "fingerprint": fingerprint, "chains": chains}

    try:
        for it in range(start_iter, total_iters):
            params, st = kernel.sample_with_stats(params)
            bar.update(1)
            post = it - config.num_warmup
            if post >= 0 and post % config.thin == config.thin - 1:
                ch["draws"].append({k: v.detach().cpu().clone() for k, v in params.items()})
                for k in _STAT_NAMES:
                    ch["stats"][k].append(st[k])
                ch["done"] += 1
                if checkpoint_dir is not None and ch["done"] % config.checkpoint_every == 0:
                    callbacks.checkpoint(save_checkpoint(checkpoint_dir, snapshot()))
            if bar.n % 50 == 0:
                ndiv = sum(ch["stats"]["diverging"])
                bar.set_postfix(step=f"{st['step_size']:.3g}", acc=f"{st['acceptance_rate']:.2f}", div=ndiv)
            if callbacks:
                callbacks.step({"engine": "mcmc", "chain": c, "iteration": it + 1,
                                "num_iterations": total_iters,
                                "phase": "warmup" if post < 0 else "sampling", **st})
    except (KeyboardInterrupt, SystemExit):
        if checkpoint_dir is not None and ch["done"] > 0:
            save_checkpoint(checkpoint_dir, snapshot())
        raise
    finally:
        bar.close()
    # Unconstrained -> constrained, as Pyro's MCMC does.
    ch["draws_c"] = {
        k: [transforms[k].inv(d[k].to(device)).cpu() if k in transforms else d[k] for d in ch["draws"]]
        for k in ch["draws"][0]
    }
    ch["draws"] = []  # the constrained copy is what is kept (and checkpointed)
    ch["complete"] = True
    kernel.cleanup()
    if checkpoint_dir is not None:
        state = snapshot()
        callbacks.checkpoint(save_checkpoint(checkpoint_dir, state))
