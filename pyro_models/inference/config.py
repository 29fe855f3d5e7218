"""Frozen, keyword-only run configurations. The config's type picks the engine."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["SVIConfig", "MCMCConfig", "config_to_dict", "config_from_dict"]

_ELBOS = ("trace", "meanfield", "tracegraph")
_OPTIMIZERS = ("adam", "clipped_adam", "sgd")
_SCHEDULES = ("constant", "exponential", "cosine")
_KERNELS = ("nuts", "hmc")
_INITS = ("uniform", "median", "mean", "feasible", "sample")


def _check_int(name: str, value: Any, low: int, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _check_float(name: str, value: Any, low: float, high: float = math.inf, *,
                 low_open: bool = True, high_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    ok_low = v > low if low_open else v >= low
    ok_high = v < high if high_open else v <= high
    if not (math.isfinite(v) and ok_low and ok_high):
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class SVIConfig:
    """Stochastic variational inference settings.

    Parameters
    ----------
    num_steps : int
        Optimisation steps (one minibatch each).
    lr : float
        Initial learning rate.
    optimizer : {"adam", "clipped_adam", "sgd"}
        ``clipped_adam`` clips each gradient's norm to ``clip_norm`` (Pyro's ``ClippedAdam``);
        ``sgd`` is SGD with momentum 0.9 (e.g. the trajectory SWAG was defined on).
    clip_norm : float
        Gradient-norm clip for ``clipped_adam``.
    lr_schedule : {"constant", "exponential", "cosine"}
        Decay from ``lr`` to ``lr * lr_final_factor`` over ``num_steps``.
    lr_final_factor : float
        Final learning rate as a fraction of ``lr`` for decaying schedules.
    elbo : {"trace", "meanfield", "tracegraph"}
        Pyro's ``Trace_ELBO``, ``TraceMeanField_ELBO`` (analytic KL where available) or
        ``TraceGraph_ELBO`` (variance reduction for non-reparameterisable sites).
    num_particles : int
        Monte Carlo samples per ELBO estimate.
    vectorize_particles : bool
        Draw the particles in one vectorised pass (needs a vectorisable model).
    batch_size : int, optional
        Minibatch size over the model's data plate; ``None`` uses the full data. Sites inside
        the plate are scaled by ``N / batch_size`` so the ELBO stays unbiased.
    minibatch_plate : str, optional
        Name of the data plate for plain Pyro callables (registered models declare theirs).
    num_posterior_samples : int
        Guide draws kept in the result (``samples()``, ``summary()``, ArviZ).
    checkpoint_every : int
        Steps between checkpoints when ``fit(checkpoint_dir=...)`` is given.
    psis_draws : int
        Guide draws used after training for the PSIS k-hat diagnostic of the fit (Yao et al.
        2018: how well the guide covers the posterior); ``0`` skips it.

    Examples
    --------
    >>> SVIConfig(num_steps=500, lr=0.05).lr
    0.05
    >>> SVIConfig(elbo="nope")
    Traceback (most recent call last):
    ...
    ValueError: elbo must be one of ['trace', 'meanfield', 'tracegraph'], got 'nope'
    """

    num_steps: int = 2000
    lr: float = 0.01
    optimizer: str = "adam"
    clip_norm: float = 10.0
    lr_schedule: str = "constant"
    lr_final_factor: float = 0.1
    elbo: str = "trace"
    num_particles: int = 1
    vectorize_particles: bool = False
    batch_size: int | None = None
    minibatch_plate: str | None = None
    num_posterior_samples: int = 1000
    checkpoint_every: int = 500
    psis_draws: int = 500

    def __post_init__(self) -> None:
        _check_int("num_steps", self.num_steps, 1)
        _check_float("lr", self.lr, 0.0)
        _check_choice("optimizer", self.optimizer, _OPTIMIZERS)
        _check_float("clip_norm", self.clip_norm, 0.0)
        _check_choice("lr_schedule", self.lr_schedule, _SCHEDULES)
        _check_float("lr_final_factor", self.lr_final_factor, 0.0, 1.0)
        _check_choice("elbo", self.elbo, _ELBOS)
        _check_int("num_particles", self.num_particles, 1)
        if not isinstance(self.vectorize_particles, bool):
            raise TypeError(f"vectorize_particles must be a bool, got {self.vectorize_particles!r}")
        _check_int("batch_size", self.batch_size, 1, allow_none=True)
        if self.minibatch_plate is not None and not isinstance(self.minibatch_plate, str):
            raise TypeError(f"minibatch_plate must be a str or None, got {self.minibatch_plate!r}")
        _check_int("num_posterior_samples", self.num_posterior_samples, 1)
        _check_int("checkpoint_every", self.checkpoint_every, 1)
        _check_int("psis_draws", self.psis_draws, 0)
        if 0 < self.psis_draws < 25:
            # The generalized Pareto fit uses the largest ~20% of the weights; fewer than 5 is no tail.
            raise ValueError(f"psis_draws must be 0 (skip) or >= 25 (the Pareto tail fit needs at "
                             f"least 5 tail draws), got {self.psis_draws}")


@dataclass(frozen=True, kw_only=True)
class MCMCConfig:
    """Markov chain Monte Carlo settings (NUTS or HMC).

    Parameters
    ----------
    kernel : {"nuts", "hmc"}
    num_samples : int
        Draws kept per chain (after thinning).
    num_warmup : int
        Adaptation steps per chain (step size and mass matrix), discarded.
    num_chains : int
        Independent chains (>= 1); R-hat needs at least 2.
    target_accept : float
        Target acceptance probability for step-size adaptation, in (0, 1). Raise it
        (0.9-0.99) when the sampler reports divergences.
    max_tree_depth : int
        NUTS maximum tree depth.
    step_size : float
        Initial step size (adapted during warmup when ``adapt_step_size``).
    num_steps : int
        HMC leapfrog steps per iteration (``kernel="hmc"`` only).
    adapt_step_size, adapt_mass_matrix : bool
    dense_mass : bool
        Full (dense) rather than diagonal mass matrix.
    jit_compile : bool
        Trace the potential energy with the PyTorch JIT (faster for small models). With
        ``backend="batched"``: compile a whole leapfrog step (potential, gradient and tree
        bookkeeping) with TorchInductor, which then runs several times faster. The first
        compile of a model on a machine takes ~10-20 s on CPU; Inductor caches the kernels
        on disk, so later runs (new processes included) spend about 1-3 s on it.
    init_strategy : {"uniform", "median", "mean", "feasible", "sample"}
        Pyro's ``init_to_*`` strategy for each chain's starting point.
    thin : int
        Keep every ``thin``-th draw.
    checkpoint_every : int
        Draws between checkpoints when ``fit(checkpoint_dir=...)`` is given.
    backend : {"pyro", "batched", "auto"}
        ``"pyro"`` runs Pyro's NUTS/HMC kernel, one chain after another. ``"batched"`` runs
        all chains as one batched NUTS computation over a leading chain dimension (same
        algorithm and warmup; much faster with many chains); it needs a model that runs
        unchanged under an outer plate over chains, and raises
        ``ModelNotVectorizableError`` otherwise. ``"auto"`` uses the batched engine when the
        model allows it and falls back to Pyro's kernel with a warning (and always uses
        Pyro's kernel for ``kernel="hmc"``). Checkpoints and callbacks work on every backend.

    Examples
    --------
    >>> MCMCConfig(num_chains=4, num_warmup=500, num_samples=500).num_chains
    4
    >>> MCMCConfig(target_accept=1.5)
    Traceback (most recent call last):
    ...
    ValueError: target_accept must be in (0.0, 1.0), got 1.5
    >>> MCMCConfig(num_chains=64, backend="batched").backend
    'batched'
    """

    kernel: str = "nuts"
    num_samples: int = 1000
    num_warmup: int = 1000
    num_chains: int = 4
    target_accept: float = 0.8
    max_tree_depth: int = 10
    step_size: float = 1.0
    num_steps: int = 10
    adapt_step_size: bool = True
    adapt_mass_matrix: bool = True
    dense_mass: bool = False
    jit_compile: bool = False
    init_strategy: str = "uniform"
    thin: int = 1
    checkpoint_every: int = 200
    backend: str = "pyro"

    def __post_init__(self) -> None:
        _check_choice("kernel", self.kernel, _KERNELS)
        _check_choice("backend", self.backend, ("pyro", "batched", "auto"))
        if self.backend == "batched" and self.kernel != "nuts":
            raise ValueError(
                f"backend='batched' runs NUTS only, got kernel={self.kernel!r}; use "
                f"kernel='nuts' or backend='pyro'"
            )
        _check_int("num_samples", self.num_samples, 1)
        _check_int("num_warmup", self.num_warmup, 0)
        _check_int("num_chains", self.num_chains, 1)
        _check_float("target_accept", self.target_accept, 0.0, 1.0, high_open=True)
        _check_int("max_tree_depth", self.max_tree_depth, 1)
        _check_float("step_size", self.step_size, 0.0)
        _check_int("num_steps", self.num_steps, 1)
        for flag in ("adapt_step_size", "adapt_mass_matrix", "dense_mass", "jit_compile"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be a bool, got {getattr(self, flag)!r}")
        _check_choice("init_strategy", self.init_strategy, _INITS)
        _check_int("thin", self.thin, 1)
        _check_int("checkpoint_every", self.checkpoint_every, 1)


def config_to_dict(config: SVIConfig | MCMCConfig) -> dict[str, Any]:
    """JSON-ready dict with the config's type under ``"type"``."""
    return {"type": type(config).__name__, **dataclasses.asdict(config)}


def config_from_dict(d: dict[str, Any]) -> SVIConfig | MCMCConfig:
    """Inverse of :func:`config_to_dict`."""
    d = dict(d)
    kind = d.pop("type")
    cls = {"SVIConfig": SVIConfig, "MCMCConfig": MCMCConfig}.get(kind)
    if cls is None:
        raise ValueError(f"unknown config type {kind!r}")
    return cls(**d)
