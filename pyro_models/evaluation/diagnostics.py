"""Posterior diagnostics through ArviZ: MCMC convergence, PSIS-LOO, model comparison, PSIS k-hat.

Everything statistical is computed by the installed ArviZ (0.23 with ``InferenceData`` or
1.x with ``xarray.DataTree``, through :mod:`pyro_models.inference.arviz_bridge`); this module
builds ArviZ's inputs from a :class:`~pyro_models.FitResult`, reads the answers back in one
shape for both versions, and says what a bad number means.

=========================  ==================================================================
:func:`mcmc_diagnostics`   rank-normalised split R-hat, bulk/tail ESS, MCSE of mean and sd per
                           parameter (``arviz.summary``), divergences, E-BFMI, a problem list
:func:`bfmi`               E-BFMI per chain (``arviz.bfmi``)
:func:`loo`                PSIS-LOO expected log pointwise predictive density (``arviz.loo``)
:func:`compare`            models ranked by PSIS-LOO, with stacking weights (``arviz.compare``)
:func:`psis_khat`          how well a variational guide covers the posterior (Yao et al. 2018)
:func:`psis_log_weights`   the importance log-weights ``log p(x, z) - log q(z)`` behind it
=========================  ==================================================================

Thresholds follow the literature: R-hat below 1.01 and bulk/tail ESS above 100 per chain
(Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021), E-BFMI above 0.3 (Betancourt 2016),
Pareto k below ``min(1 - 1/log10(S), 0.7)`` for PSIS with S draws (Vehtari, Simpson,
Gelman, Yao & Gabry 2024), and for a guide's k-hat 0.5 / 0.7 (Yao, Vehtari, Simpson &
Gelman 2018, "Yes, but did it work?: Evaluating variational inference").
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta
from pyro.poutine.util import site_is_subsample

from ..guides.baselines import EnsembleGuide, SWAGGuide
from ..inference import arviz_bridge as bridge
from ..inference.adapter import resolve_model
from ..inference.result import FitResult

if bridge.ARVIZ_MAJOR >= 1:  # pragma: no cover - exercised in a Python >= 3.12 environment
    import arviz_stats as _azs
    from arviz_stats.base import array_stats as _array_stats

__all__ = [
    "mcmc_diagnostics",
    "bfmi",
    "loo",
    "compare",
    "LOOResult",
    "psis_khat",
    "psis_log_weights",
    "PSISWarning",
    "ParetoKWarning",
    "KHAT_GOOD",
    "KHAT_BAD",
    "MIN_PSIS_DRAWS",
]

RHAT_MAX = 1.01
ESS_PER_CHAIN_MIN = 100
BFMI_MIN = 0.3
KHAT_GOOD = 0.5
KHAT_BAD = 0.7
# ArviZ fits the generalized Pareto to the largest ceil(min(S/5, 3 sqrt(S))) weights and
# needs at least 5 of them: S >= 25.
MIN_PSIS_DRAWS = 25

_DIAGNOSTIC_COLUMNS = ["mean", "sd", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat"]
_COMPARE_COLUMNS = ["rank", "elpd", "p", "elpd_diff", "weight", "se", "dse", "warning"]
_DRAW_PLATE = "_pyro_models_psis_draws"
# Draws per vectorised chunk: at most this many, and at most this many site elements in all.
_MAX_CHUNK = 100
_CHUNK_ELEMENTS = 2**24
_VECTORIZE = True  # False forces the loop over draws (tests of the fallback)
_PSIS_SEED_OFFSET = 15485863  # draws for k-hat are independent of samples()' draws


class PSISWarning(UserWarning):
    """A variational guide's PSIS k-hat is above 0.7: it misses posterior mass."""


class ParetoKWarning(UserWarning):
    """PSIS-LOO: some observations have a Pareto k above the reliability threshold."""


# --------------------------------------------------------------------------- MCMC
def _arviz_data(obj: Any, what: str) -> Any:
    """An ArviZ object from a FitResult (MCMC only) or an ArviZ object as given."""
    if isinstance(obj, FitResult):
        if obj.engine != "mcmc":
            raise ValueError(
                f"{what} describes Markov chains, and this is an {obj.engine.upper()} fit; for a "
                f"variational fit check result.psis_khat (pyro_models.evaluation.psis_khat)"
            )
        return obj.to_inference_data(predictive=False, log_likelihood=False)
    try:
        bridge.group_names(obj)
    except TypeError:
        raise TypeError(
            f"{what} needs a FitResult from an MCMC fit or an ArviZ InferenceData/DataTree, "
            f"got {type(obj).__name__}"
        ) from None
    return obj


def _bfmi_values(data: Any) -> np.ndarray | None:
    if "sample_stats" not in bridge.group_names(data):
        return None
    try:
        return bridge.bfmi(data)
    except KeyError:  # no energy recorded
        return None


def bfmi(result: Any) -> np.ndarray:
    """Energy Bayesian fraction of missing information (E-BFMI) per chain, by ``arviz.bfmi``.

    Values below 0.3 mean the momentum resampling of HMC/NUTS explores the energy
    distribution poorly (heavy tails, funnels): the chain may not reach all of the posterior
    (Betancourt 2016).

    Parameters
    ----------
    result : FitResult or arviz.InferenceData or xarray.DataTree
        An MCMC fit (its ``sample_stats`` hold the Hamiltonian ``energy`` of every draw).

    Returns
    -------
    numpy.ndarray (chain,)

    Raises
    ------
    ValueError
        An SVI fit, or no ``energy`` in ``sample_stats``.
    TypeError
        Not a FitResult or an ArviZ object.

    Examples
    --------
    >>> import pyro_models
    >>> res = pyro_models.fit("normal_normal", {"y": [0.5, 1.5, 1.0]},
    ...     pyro_models.MCMCConfig(num_chains=2, num_warmup=50, num_samples=50), seed=0, progress=False)
    >>> bfmi(res).shape
    (2,)
    """
    data = _arviz_data(result, "bfmi")
    values = _bfmi_values(data)
    if values is None:
        raise ValueError(
            "E-BFMI needs the Hamiltonian energy of every draw in sample_stats['energy']; this "
            "data has none (NUTS/HMC fits from pyro_models.fit record it)"
        )
    return values


def mcmc_diagnostics(result: Any, var_names: str | list[str] | None = None) -> pd.DataFrame:
    """Convergence diagnostics per parameter of an MCMC fit, computed by ArviZ.

    Columns (one row per scalar parameter, labelled as ArviZ does, e.g. ``theta[0]``):
    ``mean, sd, mcse_mean, mcse_sd, ess_bulk, ess_tail, r_hat``: rank-normalised split
    R-hat, bulk and tail effective sample sizes, and the Monte Carlo standard errors of the
    mean and the sd (Vehtari et al. 2021), all from ``arviz.summary``.

    ``table.attrs`` holds the run-level diagnostics:

    - ``num_chains``, ``num_draws``;
    - ``divergences``: divergent transitions after warmup;
    - ``bfmi``: E-BFMI per chain (a list), or ``None`` without recorded energy;
    - ``problems``: a list of sentences, empty when every check passes (R-hat <= 1.01, bulk
      and tail ESS >= 100 per chain, no divergences, E-BFMI >= 0.3).

    Parameters
    ----------
    result : FitResult or arviz.InferenceData or xarray.DataTree
        An MCMC fit (or its ``to_inference_data()``).
    var_names : str or list of str, optional
        Parameters to report (default: all posterior variables).

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    ValueError
        An SVI fit: its draws are independent, so R-hat and ESS say nothing; use
        :attr:`~pyro_models.FitResult.psis_khat`.
    TypeError
        Not a FitResult or an ArviZ object.

    Examples
    --------
    >>> import pyro_models
    >>> res = pyro_models.fit("normal_normal", {"y": [0.5, 1.5, 1.0]},
    ...     pyro_models.MCMCConfig(num_chains=2, num_warmup=50, num_samples=50), seed=0, progress=False)
    >>> table = mcmc_diagnostics(res)
    >>> list(table.columns)
    ['mean', 'sd', 'mcse_mean', 'mcse_sd', 'ess_bulk', 'ess_tail', 'r_hat']
    >>> table.attrs["num_chains"], table.attrs["divergences"]
    (2, 0)
    """
    data = _arviz_data(result, "mcmc_diagnostics")
    table = bridge.summarize(data, var_names=var_names, quantiles=())[_DIAGNOSTIC_COLUMNS]
    posterior = bridge.get_group(data, "posterior")
    num_chains, num_draws = int(posterior.sizes["chain"]), int(posterior.sizes["draw"])
    divergences = bridge.num_divergences(data)
    e_bfmi = _bfmi_values(data)

    problems: list[str] = []
    if num_chains < 2:
        problems.append("R-hat needs at least 2 chains; run MCMCConfig(num_chains=4) to check convergence")
    else:
        bad = table.index[table["r_hat"] > RHAT_MAX].tolist()
        if bad:
            problems.append(
                f"R-hat > {RHAT_MAX} for {_names(bad)}: the chains disagree; run longer "
                f"(num_warmup, num_samples) or reparameterise"
            )
    ess_min = ESS_PER_CHAIN_MIN * num_chains
    for column, kind in (("ess_bulk", "bulk"), ("ess_tail", "tail")):
        low = table.index[table[column] < ess_min].tolist()
        if low:
            problems.append(
                f"{kind} ESS < {ess_min} ({ESS_PER_CHAIN_MIN} per chain) for {_names(low)}: "
                f"too few effective draws for reliable {'means' if kind == 'bulk' else 'intervals'}; "
                f"draw more samples"
            )
    if divergences:
        problems.append(
            f"{divergences} divergent transition(s): the sampler cannot follow the posterior's "
            f"curvature and may be biased; reparameterise (e.g. non-centred) or raise "
            f"MCMCConfig(target_accept=...)"
        )
    if e_bfmi is not None and np.any(e_bfmi < BFMI_MIN):
        chains = np.flatnonzero(e_bfmi < BFMI_MIN).tolist()
        problems.append(
            f"E-BFMI < {BFMI_MIN} in chain(s) {chains}: momentum resampling explores the energy "
            f"distribution poorly (heavy tails, funnels); reparameterise"
        )
    table.attrs.update(
        num_chains=num_chains, num_draws=num_draws, divergences=divergences,
        bfmi=None if e_bfmi is None else [float(v) for v in e_bfmi], problems=problems,
    )
    return table


def _names(labels: list[str], limit: int = 8) -> str:
    shown = ", ".join(map(str, labels[:limit]))
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


# --------------------------------------------------------------------------- PSIS-LOO
@dataclass(frozen=True)
class LOOResult:
    """PSIS-LOO estimate of the expected log pointwise predictive density (ArviZ's numbers).

    Attributes
    ----------
    elpd : float
        ``sum_i log p(y_i | y_-i)``, estimated by Pareto-smoothed importance sampling.
    se : float
        Its standard error over observations (``sqrt(N var_i(elpd_i))``), the uncertainty
        from having N observations, not Monte Carlo error.
    p : float
        Effective number of parameters, ``lppd - elpd``.
    n_samples, n_data_points : int
        Posterior draws used and observations.
    good_k : float
        The Pareto k above which an observation's estimate is unreliable:
        ``min(1 - 1/log10(n_samples), 0.7)``.
    num_bad_k : int
        Observations with Pareto k above ``good_k``.
    var_name : str
        The observed site whose log-likelihood was used.
    elpd_i, pareto_k : numpy.ndarray or None
        Per observation (the site's batch shape), with ``pointwise=True``.
    arviz : object
        ArviZ's own result (``ELPDData``, always pointwise), e.g. for ``arviz.compare``.
    """

    elpd: float
    se: float
    p: float
    n_samples: int
    n_data_points: int
    good_k: float
    num_bad_k: int
    var_name: str
    elpd_i: np.ndarray | None = None
    pareto_k: np.ndarray | None = None
    arviz: Any = field(default=None, repr=False, compare=False)

    @property
    def warning(self) -> bool:
        """Whether any observation has a Pareto k above :attr:`good_k`."""
        return self.num_bad_k > 0


def _elpd_get(elpd: Any, v0: str, v1: str) -> Any:
    """A field of ArviZ's ELPDData: a pandas Series on 0.x, attributes on 1.x."""
    if bridge.ARVIZ_MAJOR >= 1:  # pragma: no cover - ArviZ >= 1 only
        return getattr(elpd, v1)
    return elpd[v0]


def _pick_site(sites: list[str] | tuple[str, ...], var_name: str | None, what: str) -> str:
    if not sites:
        raise ValueError(f"{what}: the model has no observed sites, so there is no likelihood to cross-validate")
    if var_name is None:
        if len(sites) > 1:
            raise ValueError(f"{what}: the model has several observed sites {sorted(sites)}; choose one with var_name=...")
        return sites[0]
    if var_name not in sites:
        raise KeyError(f"{what}: no observed site {var_name!r}; the model's observed sites are {sorted(sites)}")
    return var_name


def _loo_inference_data(result: FitResult, data: Mapping[str, Any] | None, var_name: str | None) -> tuple[Any, str]:
    """Posterior draws and the pointwise log-likelihood of one site, as ArviZ's object."""
    if not isinstance(result, FitResult):
        raise TypeError(f"expected a FitResult from pyro_models.fit, got {type(result).__name__}")
    name = _pick_site(result.observed_sites, var_name, "loo")
    draws = result.samples()
    if result.engine == "svi":  # independent guide draws: one chain
        draws = {k: v.unsqueeze(0) for k, v in draws.items()}
    c, d = next(iter(draws.values())).shape[:2]
    ll = result.log_likelihood(data)[name]  # (c * d, *batch), flat in chain-major order
    groups = {
        "posterior": {k: v.numpy() for k, v in draws.items()},
        "log_likelihood": {name: ll.reshape((c, d) + ll.shape[1:]).double().numpy()},
    }
    return bridge.to_arviz(groups), name


def _arviz_loo(idata: Any, var_name: str, label: str) -> Any:
    with warnings.catch_warnings():
        # ArviZ's generic Pareto-k notice is replaced by ParetoKWarning below, which names
        # the model and the observations.
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        if bridge.ARVIZ_MAJOR >= 1:  # pragma: no cover - ArviZ >= 1 only
            elpd = _azs.loo(idata, pointwise=True, var_name=var_name)
        else:
            elpd = az.loo(idata, pointwise=True, var_name=var_name, scale="log")
    k = _elpd_get(elpd, "pareto_k", "pareto_k")
    k = np.asarray(getattr(k, "values", k), dtype=float)
    good_k = float(_elpd_get(elpd, "good_k", "good_k"))
    bad = np.argwhere(k > good_k)
    if bad.size:
        idx = [tuple(int(j) for j in row) if len(row) > 1 else int(row[0]) for row in bad]
        shown = ", ".join(map(str, idx[:10])) + (", ..." if len(idx) > 10 else "")
        warnings.warn(
            f"PSIS-LOO{label}: {len(idx)} of {k.size} observation(s) of {var_name!r} have Pareto "
            f"k > {good_k:.2f} (at {shown}; max k = {np.nanmax(k):.2f}). Their leave-one-out "
            f"estimates are unreliable: the posterior changes a lot without them (influential "
            f"points, or a misspecified model). Refit without them (exact LOO) or use K-fold "
            f"cross-validation; a more robust likelihood (e.g. Student-t) may help.",
            ParetoKWarning,
            stacklevel=3,
        )
    return elpd


def _loo_result(elpd: Any, name: str, pointwise: bool) -> LOOResult:
    k = _elpd_get(elpd, "pareto_k", "pareto_k")
    k = np.asarray(getattr(k, "values", k), dtype=float)
    elpd_i = _elpd_get(elpd, "loo_i", "elpd_i")
    elpd_i = np.asarray(getattr(elpd_i, "values", elpd_i), dtype=float)
    good_k = float(_elpd_get(elpd, "good_k", "good_k"))
    return LOOResult(
        elpd=float(_elpd_get(elpd, "elpd_loo", "elpd")),
        se=float(_elpd_get(elpd, "se", "se")),
        p=float(_elpd_get(elpd, "p_loo", "p")),
        n_samples=int(_elpd_get(elpd, "n_samples", "n_samples")),
        n_data_points=int(_elpd_get(elpd, "n_data_points", "n_data_points")),
        good_k=good_k,
        num_bad_k=int(np.sum(k > good_k)),
        var_name=name,
        elpd_i=elpd_i if pointwise else None,
        pareto_k=k if pointwise else None,
        arviz=elpd,
    )


def loo(result: FitResult, data: Mapping[str, Any] | None = None, pointwise: bool = False, *,
        var_name: str | None = None) -> LOOResult:
    """Pareto-smoothed importance sampling leave-one-out cross-validation, by ``arviz.loo``.

    Estimates ``elpd = sum_i log p(y_i | y_-i)`` from the posterior draws and the pointwise
    log-likelihood ``log p(y_i | theta_s)`` (:meth:`~pyro_models.FitResult.log_likelihood`:
    ``(chain, draw, N)`` for MCMC, ``(1, S, N)`` for SVI guide draws). Observations whose
    Pareto k exceeds ``min(1 - 1/log10(S), 0.7)`` are named in a :class:`ParetoKWarning`.

    For SVI the draws come from the guide, not the posterior, so the estimate is only as
    good as the guide (check :attr:`~pyro_models.FitResult.psis_khat`).

    Parameters
    ----------
    result : FitResult
    data : dict, optional
        The data the posterior was conditioned on (default: the training data). Must include
        the observed values.
    pointwise : bool
        Keep ``elpd_i`` and ``pareto_k`` per observation.
    var_name : str, optional
        The observed site to cross-validate; needed when the model has several.

    Returns
    -------
    LOOResult

    Raises
    ------
    TypeError
        ``result`` is not a FitResult.
    ValueError
        No observed site, or several without ``var_name``; bad ``data``.
    KeyError
        Unknown ``var_name``.

    Warns
    -----
    ParetoKWarning
        Some observations have a Pareto k above the threshold.

    Examples
    --------
    >>> import pyro_models
    >>> model = pyro_models.models.get("normal_normal")()
    >>> res = pyro_models.fit(model, model.example_data(), pyro_models.SVIConfig(num_steps=300, lr=0.05),
    ...                       seed=0, progress=False)
    >>> out = loo(res, pointwise=True)
    >>> out.n_data_points, out.elpd_i.shape, out.warning
    (20, (20,), False)
    """
    idata, name = _loo_inference_data(result, data, var_name)
    return _loo_result(_arviz_loo(idata, name, ""), name, pointwise)


def compare(results: Mapping[str, FitResult], data: Mapping[str, Any] | None = None, ic: str = "loo", *,
            var_name: str | None = None, method: str = "stacking") -> pd.DataFrame:
    """Rank models by PSIS-LOO expected log predictive density, by ``arviz.compare``.

    Every model must be scored on the same observations. Columns: ``rank`` (0 is best),
    ``elpd``, ``p`` (effective number of parameters), ``elpd_diff`` (to the best model),
    ``weight`` (``method``'s model weights), ``se``, ``dse`` (standard error of the
    difference; a difference below about 2-4 ``dse`` is not decisive), ``warning`` (Pareto
    k above threshold). Rows are the model names, best first.

    Parameters
    ----------
    results : dict of str to FitResult
        At least two fits.
    data : dict, optional
        Data (with observed values) used for every model; default: each fit's training data.
    ic : {"loo"}
        The information criterion: PSIS-LOO (WAIC is less reliable and gone in ArviZ 1.x).
    var_name : str, optional
        The observed site, when the models have several.
    method : {"stacking", "BB-pseudo-BMA", "pseudo-BMA"}
        How ArviZ computes the model weights.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    TypeError
        ``results`` is not a dict of FitResult.
    ValueError
        Fewer than two models, an unknown ``ic`` or ``method``, or models scored on different
        numbers of observations.

    Examples
    --------
    >>> import pyro_models
    >>> from pyro_models.models import get
    >>> data = get("normal_normal")().example_data()      # 20 draws with noise sd 1
    >>> cfg = pyro_models.SVIConfig(num_steps=100, lr=0.1)
    >>> fits = {name: pyro_models.fit(get("normal_normal")(noise_scale=s), data, cfg, seed=0, progress=False)
    ...         for name, s in (("sd 1", 1.0), ("sd 5", 5.0))}
    >>> table = compare(fits)
    >>> list(table.index), list(table.columns)[:4]
    (['sd 1', 'sd 5'], ['rank', 'elpd', 'p', 'elpd_diff'])
    """
    if not isinstance(results, Mapping) or not all(isinstance(r, FitResult) for r in results.values()):
        raise TypeError("results must be a dict of model name -> FitResult")
    if len(results) < 2:
        raise ValueError(f"compare needs at least two models, got {len(results)}")
    if ic != "loo":
        raise ValueError(f"ic must be 'loo' (PSIS-LOO), got {ic!r}")
    methods = ("stacking", "BB-pseudo-BMA", "pseudo-BMA")
    if method not in methods:
        raise ValueError(f"method must be one of {list(methods)}, got {method!r}")
    elpds = {}
    for label, res in results.items():
        idata, name = _loo_inference_data(res, data, var_name)
        elpds[str(label)] = _arviz_loo(idata, name, f" of model {label!r}")
    sizes = {label: int(_elpd_get(e, "n_data_points", "n_data_points")) for label, e in elpds.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"models must be scored on the same observations; numbers of observations: {sizes}")
    if bridge.ARVIZ_MAJOR >= 1:  # pragma: no cover - ArviZ >= 1 only
        table = _azs.compare(elpds, method=method)
    else:
        with warnings.catch_warnings():
            # ArviZ 0.23 calls DataFrame.sort_values(inplace=True), deprecated by pandas 3.1:
            # ArviZ's to fix, and nothing the caller can act on.
            warnings.filterwarnings("ignore", message="The inplace keyword in DataFrame.sort_values")
            table = az.compare(elpds, ic="loo", method=method, scale="log")
    table = pd.DataFrame(table).rename(columns={"elpd_loo": "elpd", "p_loo": "p"})
    table = table[[c for c in _COMPARE_COLUMNS if c in table.columns]]
    table.attrs.update(ic=ic, method=method, scale="log")
    return table


# --------------------------------------------------------------------------- PSIS k-hat
def _no_density_reason(guide: Any) -> str | None:
    """Why a guide has no density to weight draws by, or None (decided without running it).

    Guides whose every site is a point mass are also found when traced (:func:`_check_traces`);
    these are known up front, and the ensemble is not called because a plain call advances
    its member cycle.
    """
    if isinstance(guide, (EnsembleGuide, SWAGGuide)):
        return "its posterior is not a density over the latent sites (deep_ensemble members, SWAG's trajectory)"
    if isinstance(guide, AutoDelta):
        return "it is a point mass (delta / MAP, mc_dropout)"
    if getattr(guide, "has_density", True) is False:
        # e.g. last-layer Laplace: a Gaussian last layer, the other weights a point mass
        return "only some of its latent sites have a density (the others are point estimates)"
    return None


def _base(fn: Any) -> Any:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def _sample_sites(trace: Any) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}


def _nesting(trace: Any) -> int:
    depth = 0
    for site in _sample_sites(trace).values():
        for frame in site["cond_indep_stack"]:
            if frame.vectorized and frame.dim is not None:
                depth = max(depth, -frame.dim)
    return depth


def _check_traces(guide_tr: Any, model_tr: Any) -> None:
    g_sites = _sample_sites(guide_tr)
    if g_sites and all(isinstance(_base(s["fn"]), dist.Delta) for s in g_sites.values()):
        raise ValueError("the guide is a point mass (only Delta sites): it has no density for importance weights")
    missing = [n for n, s in _sample_sites(model_tr).items()
               if not s["is_observed"] and not s["infer"].get("_deterministic") and n not in g_sites]
    if missing:
        raise ValueError(f"the guide does not sample the model's latent site(s) {missing}; k-hat needs q over all of them")


def _per_draw_log_prob(trace: Any, n: int, dim: int) -> torch.Tensor:
    """Sum of every site's log-density per draw; the draws are at batch dim ``dim``."""
    sites = _sample_sites(trace)
    trace.compute_log_prob(site_filter=lambda name, site: name in sites)
    total = None
    for name, site in sites.items():
        lp = torch.as_tensor(site["log_prob"]).double()
        if lp.dim() >= -dim:
            lp = lp.movedim(dim, 0)
            if lp.shape[0] not in (1, n):
                raise ValueError(f"site {name!r}: log-density of shape {tuple(lp.shape)} does not broadcast over {n} draws")
            lp = lp.reshape(lp.shape[0], -1).sum(1)
        else:  # does not vary with the draws
            lp = lp.sum().expand(1)
        total = lp if total is None else total + lp
    return total.expand(n) if total is not None else torch.zeros(n, dtype=torch.float64)


@contextlib.contextmanager
def _local_rng(seed: int, device: torch.device) -> Iterator[None]:
    """A seeded RNG for the diagnostic's draws; the caller's global RNG state is untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _log_weights(model: Any, guide: Any, data: Mapping[str, Any], num_draws: int) -> torch.Tensor:
    """``log p(x, z) - log q(z)`` for ``num_draws`` draws ``z ~ q``, (num_draws,) float64.

    The model is the unscaled one on the data given (no minibatch ``N / B`` factors), and
    the guide is traced first, then the model replayed on its values, as in the ELBO. Draws
    run vectorised in a plate left of every model plate (the mechanism of vectorised ELBO
    particles), in chunks of bounded size; a model or guide whose shapes do not broadcast
    under that plate is looped over instead.
    """
    with torch.no_grad(), poutine.block():
        g1 = poutine.trace(guide).get_trace(**data)
        m1 = poutine.trace(poutine.replay(model, trace=g1)).get_trace(**data)
        _check_traces(g1, m1)
        dim = -(max(_nesting(g1), _nesting(m1)) + 1)
        per_draw = sum(s["value"].numel() for t in (g1, m1) for s in _sample_sites(t).values()
                       if torch.is_tensor(s["value"]))
        chunk = max(1, min(num_draws, _MAX_CHUNK, _CHUNK_ELEMENTS // max(per_draw, 1)))
        parts: list[torch.Tensor] = []
        vectorized = _VECTORIZE
        done = 0
        while done < num_draws:
            n = min(chunk, num_draws - done)
            if vectorized:
                try:
                    with pyro.plate(_DRAW_PLATE, n, dim=dim):
                        g = poutine.trace(guide).get_trace(**data)
                        m = poutine.trace(poutine.replay(model, trace=g)).get_trace(**data)
                    parts.append(_per_draw_log_prob(m, n, dim) - _per_draw_log_prob(g, n, dim))
                    done += n
                    continue
                except Exception:  # shapes that do not broadcast under the draw plate: loop
                    vectorized = False
            for _ in range(n):
                g = poutine.trace(guide).get_trace(**data)
                m = poutine.trace(poutine.replay(model, trace=g)).get_trace(**data)
                keep = lambda name, site: not site_is_subsample(site)  # noqa: E731
                parts.append((m.log_prob_sum(keep) - g.log_prob_sum(keep)).double().reshape(1))
            done += n
    return torch.cat(parts).cpu()


def _khat(log_w: np.ndarray) -> float:
    """Pareto k-hat of importance log-weights (one set of draws), by ArviZ's PSIS."""
    log_w = np.asarray(log_w, dtype=float).ravel()
    if np.isnan(log_w).any() or np.isposinf(log_w).any():
        return math.inf  # an undefined or infinite weight: nothing can be estimated from them
    finite = log_w[np.isfinite(log_w)]
    if finite.size == 0:
        return math.inf
    if np.ptp(finite) <= 1e-12 * max(1.0, float(np.abs(finite).max())):
        # Exactly equal weights (q is the posterior up to rounding): a bounded, degenerate
        # tail, for which ArviZ's generalized Pareto fit returns inf.
        return -math.inf
    if bridge.ARVIZ_MAJOR >= 1:  # pragma: no cover - ArviZ >= 1 only
        # arviz-stats takes the log-likelihood convention of PSIS-LOO and negates it.
        _, k = _array_stats.psislw(-log_w, r_eff=1.0)
    else:
        _, k = az.psislw(log_w, reff=1.0)
    return float(np.asarray(k))


def _khat_message(k: float, guide_name: str) -> str:
    return (
        f"PSIS k-hat = {k:.2f} > {KHAT_BAD} for the {guide_name} guide: the guide misses "
        f"posterior mass; importance-weighted estimates are unreliable; try a richer guide "
        f"(lowrank_mvn, mvn, iaf) or more steps (Yao et al. 2018, 'Yes, but did it work?')"
    )


def _guide_label(result: FitResult) -> str:
    spec = getattr(result, "_guide_spec", None)
    name = getattr(spec, "name", None)
    return repr(name) if name else type(result.guide).__name__


def _check_svi(result: Any) -> None:
    if not isinstance(result, FitResult):
        raise TypeError(f"expected a FitResult from pyro_models.fit, got {type(result).__name__}")
    if result.engine != "svi":
        raise ValueError(
            f"PSIS k-hat diagnoses a variational guide; this is an {result.engine.upper()} fit "
            f"(use mcmc_diagnostics)"
        )
    reason = _no_density_reason(result.guide)
    if reason is not None:
        raise ValueError(f"PSIS k-hat needs a guide with a density, and this guide has none: {reason}")


def _check_draws(num_draws: Any) -> int:
    if isinstance(num_draws, bool) or not isinstance(num_draws, int):
        raise TypeError(f"num_draws must be an int, got {type(num_draws).__name__} {num_draws!r}")
    if num_draws < MIN_PSIS_DRAWS:
        raise ValueError(f"num_draws must be >= {MIN_PSIS_DRAWS} (the Pareto tail fit needs 5 tail draws), got {num_draws}")
    return num_draws


def _psis_data(result: FitResult, data: Mapping[str, Any] | None) -> dict[str, Any]:
    if data is None:
        return result.data
    clean = resolve_model(result.model).validate(data, require_observed=True)
    return {k: (v.to(result.device) if isinstance(v, torch.Tensor) else v) for k, v in clean.items()}


def psis_log_weights(result: FitResult, data: Mapping[str, Any] | None = None, num_draws: int = 500, *,
                     seed: int | None = None) -> np.ndarray:
    """Importance log-weights ``log p(x, z_s) - log q(z_s)`` of draws ``z_s`` from the guide.

    The model density is the full-data joint, without minibatch scaling. Their log-mean-exp
    is an estimate of ``log p(x)`` (the ELBO's target); their spread says how far the guide
    is from the posterior (constant weights: ``q`` is the posterior).

    Parameters
    ----------
    result : FitResult
        An SVI fit whose guide has a density.
    data : dict, optional
        Data with observed values (default: the training data).
    num_draws : int
        Draws from the guide (>= 25).
    seed : int, optional
        Seed for the draws (default: derived from the fit's seed); the global RNG is untouched.

    Returns
    -------
    numpy.ndarray (num_draws,) float64

    Raises
    ------
    TypeError, ValueError
        Not an SVI FitResult, a guide without a density, bad ``num_draws`` or ``data``.

    Examples
    --------
    >>> import pyro_models
    >>> res = pyro_models.fit("normal_normal", {"y": [0.5, 1.5, 1.0]},
    ...     pyro_models.SVIConfig(num_steps=100, lr=0.1, psis_draws=0), seed=0, progress=False)
    >>> psis_log_weights(res, num_draws=100).shape
    (100,)
    """
    _check_svi(result)
    n = _check_draws(num_draws)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    clean = _psis_data(result, data)
    with _local_rng(result.seed + _PSIS_SEED_OFFSET if seed is None else seed, result.device):
        return _log_weights(result.model, result.guide, clean, n).numpy()


def psis_khat(result: FitResult, data: Mapping[str, Any] | None = None, num_draws: int = 500, *,
              seed: int | None = None, warn: bool = True) -> float:
    """Pareto k-hat of a variational guide: does it cover the posterior? (Yao et al. 2018)

    Draws ``z ~ q`` from the trained guide, forms the importance weights
    ``p(x, z) / q(z)`` on the full data (:func:`psis_log_weights`) and fits a generalized
    Pareto distribution to their upper tail with ArviZ's PSIS (``arviz.psislw``). Its shape
    k-hat tells how heavy the tail is:

    - ``k < 0.5``: the guide is close to the posterior; importance-weighted estimates
      (and PSIS-corrected ones) are reliable;
    - ``0.5 <= k < 0.7``: usable, with slower Monte Carlo convergence;
    - ``k >= 0.7``: the guide misses posterior mass (too narrow, or in the wrong place);
      even importance weighting cannot repair it.

    ``-inf`` means the weights are exactly equal (``q`` is the posterior up to rounding).
    :func:`pyro_models.fit` computes this after every SVI fit with a density guide, with
    ``SVIConfig.psis_draws`` draws, and stores it as ``result.psis_khat``. For a guide with
    some point-mass sites (e.g. ``last_layer_laplace``) it diagnoses the Gaussian block given
    the point values.

    k-hat measures the *shape* of the weights' tail, not their spread: a Gaussian guide for
    a skewed posterior (a log-normal for a Gamma posterior) has importance weights of
    infinite variance even when it matches the posterior's mean and sd to 1%, and can show
    k-hat > 0.7 while :func:`psis_log_weights` vary by a few hundredths. Both numbers
    together tell a guide that is wrong in its tails from one that is wrong everywhere.

    Parameters
    ----------
    result : FitResult
        An SVI fit whose guide has a density (not ``delta``, ``deep_ensemble``, ``swag``,
        ``mc_dropout``).
    data : dict, optional
        Data with observed values (default: the training data).
    num_draws : int
        Draws from the guide (>= 25); more draws estimate k-hat more precisely.
    seed : int, optional
        Seed for the draws (default: derived from the fit's seed).
    warn : bool
        Emit a :class:`PSISWarning` when k-hat > 0.7.

    Returns
    -------
    float

    Raises
    ------
    TypeError, ValueError
        Not an SVI FitResult, a guide without a density, bad ``num_draws`` or ``data``.

    Examples
    --------
    >>> import pyro_models
    >>> res = pyro_models.fit("normal_normal", {"y": [0.5, 1.5, 1.0]},
    ...     pyro_models.SVIConfig(num_steps=300, lr=0.05), guide="normal", seed=0, progress=False)
    >>> res.psis_khat == psis_khat(res)       # fit computed it with the same seeded draws
    True
    >>> bool(res.psis_khat < 0.5)
    True
    """
    k = _khat(psis_log_weights(result, data, num_draws, seed=seed))
    if warn and k > KHAT_BAD:
        warnings.warn(_khat_message(k, _guide_label(result)), PSISWarning, stacklevel=2)
    return k


def _fit_psis_khat(result: FitResult, num_draws: int) -> tuple[float | None, str | None]:
    """The hook :func:`pyro_models.fit` runs after SVI: ``(k-hat or None, warning or None)``.

    ``None`` where k-hat does not apply (a guide without a density). A failure to evaluate
    the weights never loses the finished fit: k-hat is then ``None`` and the message says why.
    """
    if _no_density_reason(result.guide) is not None:
        return None, None
    # A tail fit needs 25 draws; fewer (psis_draws=1..24) are raised to that minimum.
    n = max(int(num_draws), MIN_PSIS_DRAWS)
    try:
        with _local_rng(result.seed + _PSIS_SEED_OFFSET, result.device):
            log_w = _log_weights(result.model, result.guide, result.data, n).numpy()
    except ValueError as exc:
        if "point mass" in str(exc):  # a custom guide of Delta sites only
            return None, None
        return None, f"PSIS k-hat could not be computed ({exc}); result.psis_khat is None"
    except Exception as exc:  # a diagnostic must never lose a finished fit
        return None, f"PSIS k-hat could not be computed ({type(exc).__name__}: {exc}); result.psis_khat is None"
    k = _khat(log_w)
    return k, (_khat_message(k, _guide_label(result)) if k > KHAT_BAD else None)
