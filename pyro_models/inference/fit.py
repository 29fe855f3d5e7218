"""``fit()``: the one entry point that dispatches a model (and guide) to an engine."""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import pyro
import torch

from .. import guides as guide_registry
from .adapter import resolve_model
from .checkpoint import fingerprint as make_fingerprint
from .config import MCMCConfig, SVIConfig, config_to_dict
from .engine_common import Callbacks
from .mcmc import run_mcmc
from .result import FitResult
from .svi import resolve_guide, run_svi

__all__ = ["fit"]


def _resolve_device(device: str | torch.device | None, data: Mapping[str, Any]) -> torch.device:
    if device is None:
        for v in data.values():
            if isinstance(v, torch.Tensor):
                return v.device
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be like 'cpu', 'cuda' or 'cuda:0', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def _attach_psis_khat(result: FitResult) -> None:
    """PSIS k-hat of the trained guide (Yao et al. 2018) on ``result.psis_khat``; warn above 0.7."""
    num_draws = result.config.psis_draws
    if num_draws == 0:
        return
    # evaluation sits above inference; imported here so neither needs the other at import time
    from ..evaluation.diagnostics import PSISWarning, _fit_psis_khat

    khat, message = _fit_psis_khat(result, num_draws)
    result._psis_khat = khat
    if message is not None:
        warnings.warn(message, PSISWarning if khat is not None else RuntimeWarning, stacklevel=3)


def fit(
    model: Any,
    data: Mapping[str, Any],
    config: SVIConfig | MCMCConfig,
    *,
    guide: Any = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    callbacks: Iterable[Any] = (),
) -> FitResult:
    """Fit a Bayesian model and return its posterior.

    The config's type picks the engine: :class:`SVIConfig` trains a guide by stochastic
    variational inference, :class:`MCMCConfig` runs NUTS/HMC. Models never know their engine.

    Parameters
    ----------
    model : str, BayesianModel or callable
        A registered name (``pyro_models.models.available()``), a model instance, or any Pyro
        model callable taking the keys of ``data`` as keyword arguments.
    data : dict
        Model inputs and observations. Validated (shapes, dtypes, NaN/inf, unknown keys)
        before anything runs.
    config : SVIConfig or MCMCConfig
    guide : str, (str, dict) or callable, optional
        SVI only. A registered guide name (default ``"normal"``), a name with options such as
        ``("lowrank_mvn", {"rank": 5})``, or a guide object/callable.
    device : str or torch.device, optional
        Where tensors live (default: the data's device, else CPU).
    seed : int, optional
        Seeds Pyro/PyTorch/NumPy/random for a reproducible run (drawn at random if ``None``).
    progress : bool
        tqdm progress bars; also off when stderr is not a terminal.
    checkpoint_dir : str, optional
        Folder for atomic checkpoints; calling ``fit`` again with the same arguments and
        folder resumes an interrupted run.
    callbacks : iterable
        Objects with any of ``on_step(info)``, ``on_checkpoint(path)``, ``on_fit_end(result)``,
        or plain functions called with each step's ``info`` dict.

    Returns
    -------
    FitResult

    Raises
    ------
    TypeError, ValueError, KeyError
        Bad model, data, config or guide, before any computation.
    pyro_models.errors.NonFiniteLossError
        SVI loss became NaN/inf; the partial result is attached.

    Warns
    -----
    pyro_models.evaluation.PSISWarning
        SVI only: the trained guide's PSIS k-hat (``result.psis_khat``, from
        ``config.psis_draws`` guide draws on the full data) is above 0.7, so the guide misses
        posterior mass (Yao et al. 2018). ``psis_draws=0`` skips the check.

    Examples
    --------
    >>> import pyro_models
    >>> data = {"trials": [1000, 1000], "successes": [112, 135]}
    >>> res = pyro_models.fit("beta_binomial", data,
    ...                       pyro_models.MCMCConfig(num_chains=2, num_warmup=200, num_samples=200),
    ...                       seed=1, progress=False)
    >>> res.samples()["p"].shape
    torch.Size([2, 200, 2])
    """
    if not isinstance(config, (SVIConfig, MCMCConfig)):
        raise TypeError(
            f"config must be pyro_models.SVIConfig(...) or pyro_models.MCMCConfig(...), "
            f"got {type(config).__name__}"
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, bytes)) and not hasattr(checkpoint_dir, "__fspath__"):
        raise TypeError(f"checkpoint_dir must be a path, got {type(checkpoint_dir).__name__}")
    cbs = Callbacks(callbacks)
    adapter = resolve_model(model)
    clean = adapter.validate(data, require_observed=True)
    dev = _resolve_device(device, clean)
    clean = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in clean.items()}
    if isinstance(adapter.fn, torch.nn.Module):
        adapter.fn.to(dev)
    if isinstance(config, MCMCConfig) and not getattr(adapter.fn, "supports_mcmc", True):
        raise ValueError(
            f"model {adapter.name!r} has point-estimated network parameters that MCMC would "
            f"treat as constants; fit it with SVIConfig (and a guide) instead"
        )
    if isinstance(config, MCMCConfig) and guide is not None:
        raise ValueError("MCMC needs no guide: drop guide=..., or use SVIConfig to train a guide")
    guide_spec = resolve_guide(guide) if isinstance(config, SVIConfig) else None
    if guide_spec is not None and guide_spec.name is not None:
        # Incompatible pairs are declared in the guide's registry entry; refuse them up front.
        reason = guide_registry.incompatibility(guide_spec.name, adapter.fn)
        if reason is not None:
            raise ValueError(reason)
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    pyro.set_rng_seed(seed)
    adapter.inspect(clean)
    fp = make_fingerprint({
        "config": config_to_dict(config), "model": adapter.name, "hparams": adapter.hparams,
        "guide": guide_spec.describe() if guide_spec else None, "seed": seed, "data": clean,
    })
    ckdir = None if checkpoint_dir is None else os.fsdecode(os.fspath(checkpoint_dir))
    common = dict(seed=seed, device=dev, progress=progress, checkpoint_dir=ckdir, callbacks=cbs, fingerprint=fp)
    if isinstance(config, SVIConfig):
        result = run_svi(adapter, clean, config, guide_spec, **common)
        _attach_psis_khat(result)
    else:
        result = run_mcmc(adapter, clean, config, **common)
    cbs.fit_end(result)
    return result
