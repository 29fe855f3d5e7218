"""Prior and posterior predictive checks: draws and plots.

A predictive check compares data simulated by the model with the data observed (Gelman et
al., *Bayesian Data Analysis*, ch. 6; Gabry et al. 2019, "Visualization in Bayesian
workflow"). Before fitting, the *prior* predictive shows whether the priors generate
plausible data; after fitting, the *posterior* predictive shows whether the fitted model
reproduces the data it was fitted to.

=============================  ==============================================================
:func:`prior_predictive`       draws of every site from the prior, observed sites released
:func:`plot_ppc`               posterior predictive replicates against the observed data
:func:`plot_prior_predictive`  prior predictive replicates (against data, when given)
=============================  ==============================================================

Plots return a :class:`matplotlib.figure.Figure` built without pyplot, so nothing is shown
and no global figure state is kept; densities are ArviZ's KDE (``arviz.kde`` on 0.x, the
``arviz_stats`` array KDE on 1.x).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import arviz as az
import numpy as np
import torch
from pyro import poutine
from pyro.infer import Predictive
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.util import site_is_subsample

from ..init_strategies import get_init_strategy
from ..inference import arviz_bridge as bridge
from ..inference.adapter import is_factor_site, resolve_model
from ..inference.predictive import predictive_draws
from ..inference.result import FitResult, _uncondition
from ..models.base import BayesianModel

if bridge.ARVIZ_MAJOR >= 1:  # pragma: no cover - exercised in a Python >= 3.12 environment
    from arviz_stats.base import array_stats as _array_stats

__all__ = ["prior_predictive", "plot_ppc", "plot_prior_predictive"]

_KINDS = ("kde", "hist")


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _check_seed(seed: Any) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed the draws without touching the caller's global RNG; ``None`` uses it as it is."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _device(data: Mapping[str, Any]) -> torch.device:
    for v in data.values():
        if isinstance(v, torch.Tensor):
            return v.device
    return torch.device("cpu")


def _prior_trace(model: Any, data: Mapping[str, Any], seed: int | None) -> tuple[Any, dict[str, Any], Any]:
    """The model callable, its validated data, and one trace of it run from the prior."""
    adapter = resolve_model(model)
    clean = adapter.validate(data, require_observed=False)
    try:
        with _seeded(seed, _device(clean)), torch.no_grad(), poutine.block():
            trace = poutine.trace(adapter.fn).get_trace(**clean)
    except NotImplementedError as exc:  # ImproperUniform.sample
        raise ValueError(
            f"the prior predictive needs proper priors, and model {adapter.name!r} has an improper "
            f"(flat) one ({str(exc).splitlines()[0]}); give it proper priors (e.g. weight_scale=..., bias_scale=...)"
        ) from exc
    return adapter.fn, clean, trace


def _sites(trace: Any, observed: bool | None = None) -> list[str]:
    """Sample sites of a trace (no subsample sites); only observed / unobserved ones if asked."""
    return [
        n for n, s in trace.nodes.items()
        if s["type"] == "sample" and not site_is_subsample(s) and not is_factor_site(s)
        and (observed is None or (bool(s["is_observed"]) and not s["infer"].get("_deterministic")) == observed)
    ]


def _observed_values(fn: Any, data: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Observed sites' values given ``data`` (whatever the latent values are)."""
    # Latent values from an init strategy, as in the adapter: improper priors trace too.
    with torch.no_grad(), poutine.block():
        tr = poutine.trace(InitMessenger(get_init_strategy("uniform"))(fn)).get_trace(**data)
    return {
        name: site["value"].detach().cpu().numpy()
        for name, site in tr.nodes.items()
        if site["type"] == "sample" and site["is_observed"] and not site_is_subsample(site)
        and not site["infer"].get("_deterministic") and not is_factor_site(site)
    }


def prior_predictive(model: Any, data: Mapping[str, Any], num_samples: int = 500,
                     seed: int | None = None) -> dict[str, torch.Tensor]:
    """Draws of every sample site from the prior, observed sites sampled instead of conditioned.

    Parameters
    ----------
    model : str, BayesianModel or callable
        Anything :func:`pyro_models.fit` accepts: a registered name, a model instance, or a
        Pyro model callable taking the keys of ``data``.
    data : dict
        The model's inputs, validated against its data contract. Observed values may be
        left out; when given they only fix shapes (e.g. N, multinomial totals) and are
        replaced by draws.
    num_samples : int
        Number of prior draws S.
    seed : int, optional
        Seed for the draws; the global RNG is left as it was. ``None`` uses the global RNG.

    Returns
    -------
    dict of str to Tensor
        ``(S, *site_shape)`` per latent, deterministic and observed site (on CPU).

    Raises
    ------
    DataValidationError, TypeError, KeyError
        Bad ``model`` or ``data`` (as in ``fit``).
    ValueError
        An improper (flat) prior, which cannot be sampled; bad ``num_samples`` or ``seed``.

    Examples
    --------
    >>> import torch
    >>> draws = prior_predictive("normal_normal", {"y": torch.zeros(4)}, num_samples=200, seed=0)
    >>> draws["mu"].shape, draws["y"].shape
    (torch.Size([200]), torch.Size([200, 4]))
    """
    num_samples = _check_count("num_samples", num_samples)
    _check_seed(seed)
    fn, clean, proto = _prior_trace(model, data, seed)
    free = _uncondition(fn, tuple(_sites(proto, observed=True)))
    names = _sites(proto)
    with _seeded(seed, _device(clean)), torch.no_grad():
        try:
            draws = Predictive(free, num_samples=num_samples, return_sites=names, parallel=True)(**clean)
        except Exception:  # shapes that do not broadcast under Predictive's plate: loop
            draws = Predictive(free, num_samples=num_samples, return_sites=names, parallel=False)(**clean)
    shapes = {n: proto.nodes[n]["value"].shape for n in names}
    return {n: draws[n].detach().reshape((num_samples,) + tuple(shapes[n])).cpu() for n in names}


# --------------------------------------------------------------------------- plots
def _kde(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ArviZ's kernel density estimate of a 1-D sample: (grid, density)."""
    if bridge.ARVIZ_MAJOR >= 1:  # pragma: no cover - ArviZ >= 1 only
        grid, pdf, _ = _array_stats.kde(values)
        return np.asarray(grid), np.asarray(pdf)
    grid, pdf = az.kde(values)
    return np.asarray(grid), np.asarray(pdf)


def _is_discrete(*arrays: np.ndarray) -> bool:
    return all(np.all(np.equal(np.mod(a, 1), 0)) for a in arrays if a.size)


def _density(ax: Any, values: np.ndarray, **style: Any) -> None:
    """ArviZ's KDE of ``values`` as a line; a vertical line where they are all equal."""
    if values.size < 2 or np.ptp(values) == 0:
        ax.axvline(float(values.flat[0]), **style)
    else:
        ax.plot(*_kde(values), **style)


def _draw_panel(ax: Any, replicates: np.ndarray, observed: np.ndarray | None, kind: str, name: str,
                label: str) -> None:
    """One site: a thin curve per replicate, their pooled density, and the observed data.

    ``replicates`` is (draws, values per replicate). With one value per replicate (e.g. a
    single observation) there is no per-replicate distribution: only the pooled one is drawn.
    """
    pooled = replicates.ravel()
    singles = replicates.shape[1] < 2
    values = [pooled] + ([observed.ravel()] if observed is not None else [])
    style = dict(color="C0", alpha=0.25, linewidth=0.8)
    pooled_style = dict(color="C1", linestyle="--", linewidth=1.5, label=f"{label} (pooled)")
    observed_style = dict(color="k", linewidth=2.0, label="observed")
    if kind == "kde" and not _is_discrete(*values):
        if not singles:
            for i, rep in enumerate(replicates):
                _density(ax, rep, **style, label=label if i == 0 else None)
        _density(ax, pooled, **pooled_style)
        if observed is not None:
            _density(ax, observed.ravel(), **observed_style)
    else:
        # Integer data have no density: unit-width bins centred on the integers (up to 200
        # of them; wider ranges of counts get ordinary bins).
        lo = min(float(v.min()) for v in values)
        hi = max(float(v.max()) for v in values)
        if _is_discrete(*values) and hi - lo <= 200:
            edges = np.arange(np.floor(lo) - 0.5, np.ceil(hi) + 1.0)
        else:
            edges = np.histogram_bin_edges(np.concatenate(values), bins="auto")

        def stairs(v: np.ndarray, **kw: Any) -> None:
            ax.stairs(np.histogram(v, bins=edges, density=True)[0], edges, **kw)

        if not singles:
            for i, rep in enumerate(replicates):
                stairs(rep, **style, label=label if i == 0 else None)
        stairs(pooled, **pooled_style)
        if observed is not None:
            stairs(observed.ravel(), **observed_style)
    ax.set_xlabel(name)
    ax.set_ylabel("density")
    ax.legend(loc="best", fontsize="small")


def _figure(sites: Sequence[str], ax: Any) -> tuple[Any, list[Any]]:
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.5 * len(sites), 3.5), layout="constrained")
        return fig, list(fig.subplots(1, len(sites), squeeze=False)[0])
    axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
    axes = list(np.ravel(np.asarray(axes, dtype=object)))
    if len(axes) != len(sites):
        raise ValueError(f"ax: need {len(sites)} axes (one per site {list(sites)}), got {len(axes)}")
    return axes[0].get_figure(), axes


def _choose_sites(available: Sequence[str], var_names: str | Sequence[str] | None) -> list[str]:
    if not available:
        raise ValueError("the model has no observed sites to check")
    if var_names is None:
        return list(available)
    chosen = [var_names] if isinstance(var_names, str) else list(var_names)
    unknown = [v for v in chosen if v not in available]
    if unknown:
        raise KeyError(f"unknown observed site(s) {unknown}; the model's observed sites are {sorted(available)}")
    return chosen


def _check_kind(kind: Any) -> None:
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {list(_KINDS)}, got {kind!r}")


def _plot(replicates: Mapping[str, np.ndarray], observed: Mapping[str, np.ndarray], sites: list[str], kind: str,
          ax: Any, label: str, title: str) -> Any:
    fig, axes = _figure(sites, ax)
    for a, name in zip(axes, sites):
        reps = replicates[name].reshape(replicates[name].shape[0], -1)
        _draw_panel(a, reps, observed.get(name), kind, name, label)
        a.set_title(title)
    return fig


def plot_ppc(result: FitResult, data: Mapping[str, Any] | None = None, kind: str = "kde", num_draws: int = 100,
             *, var_names: str | Sequence[str] | None = None, ax: Any = None) -> Any:
    """Posterior predictive check: replicated data against the observed data.

    One panel per observed site. Each of ``num_draws`` posterior draws gives one replicate
    ``y_rep`` of the whole data set, drawn as a thin curve (its density, or its histogram);
    the density of all replicates pooled is dashed and the observed data are a thick black
    curve. A model that fits puts the observed curve inside the band of replicates.

    Parameters
    ----------
    result : FitResult
    data : dict, optional
        Inputs and observed values to check against (default: the training data).
    kind : {"kde", "hist"}
        Densities by ArviZ's KDE, or histograms (always used for integer data).
    num_draws : int
        Replicates drawn (at most the result's number of posterior draws).
    var_names : str or list of str, optional
        Observed sites to plot (default: all).
    ax : matplotlib Axes or sequence of Axes, optional
        Where to draw, one per site; default: a new figure.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    TypeError, ValueError, KeyError
        Bad ``result``, ``kind``, ``num_draws``, ``var_names``, ``ax`` or ``data``.

    Examples
    --------
    >>> import pyro_models
    >>> res = pyro_models.fit("normal_normal", {"y": [0.5, 1.5, 1.0, 0.2]},
    ...     pyro_models.SVIConfig(num_steps=200, lr=0.05), seed=0, progress=False)
    >>> fig = plot_ppc(res, num_draws=20)
    >>> len(fig.axes[0].lines)  # 20 replicates, their pooled density, the observed data
    22
    """
    if not isinstance(result, FitResult):
        raise TypeError(f"expected a FitResult from pyro_models.fit, got {type(result).__name__}")
    _check_kind(kind)
    num_draws = _check_count("num_draws", num_draws)
    sites = _choose_sites(result.observed_sites, var_names)
    if data is None:
        clean = result.data
        pred = result.predict(num_samples=num_draws, return_sites=sites)
    else:
        clean = resolve_model(result.model).validate(data, require_observed=True)
        clean = {k: (v.to(result.device) if isinstance(v, torch.Tensor) else v) for k, v in clean.items()}
        pred = _replicates(result, clean, num_draws, sites)
    observed = _observed_values(result.model, clean)
    reps = {k: v[:num_draws].double().numpy() for k, v in pred.items()}
    for k in sites:
        if reps[k].shape[1:] != observed[k].shape:
            raise ValueError(
                f"{k}: the replicates have shape {reps[k].shape[1:]} but the observed data "
                f"{observed[k].shape}; the model does not size its predictions from these inputs"
            )
    return _plot(reps, observed, sites, kind, ax, "posterior predictive", "posterior predictive check")


def _replicates(result: FitResult, data: dict[str, Any], num_draws: int, sites: list[str]) -> dict[str, torch.Tensor]:
    """Posterior predictive replicates of the observed sites at ``data`` (observed values given)."""
    model = result.model
    if getattr(model, "predicts_through_training_data", False):
        # e.g. a GP: its predictive at new inputs conditions on the training data, sized by x.
        return dict(result.predict(data, num_samples=num_draws, return_sites=sites))
    # As FitResult.predict() does for the training data: the observed values stay in place
    # (they fix shapes, multinomial totals) and the likelihood sites are sampled.
    draws = result.samples(num_draws)
    lead = 2 if result.engine == "mcmc" else 1
    flat = {k: draws[k].reshape((-1,) + draws[k].shape[lead:]).to(result.device) for k in result.latent_sites}
    if isinstance(model, BayesianModel):
        data = model.prediction_inputs(result.data, data)
    out = predictive_draws(_uncondition(model, result.observed_sites), flat, data, sites)
    return {k: v.detach().cpu() for k, v in out.items()}


def plot_prior_predictive(model: Any, data: Mapping[str, Any], num_draws: int = 100, kind: str = "kde", *,
                          seed: int | None = None, var_names: str | Sequence[str] | None = None,
                          ax: Any = None) -> Any:
    """Prior predictive check: data simulated from the prior (against observed data, if given).

    Draws like :func:`plot_ppc`, with the replicates drawn from the prior
    (:func:`prior_predictive`). When ``data`` holds observed values they are drawn too:
    priors are plausible when the observed data look like a typical replicate, not when the
    replicates hug them.

    Parameters
    ----------
    model : str, BayesianModel or callable
        Anything :func:`pyro_models.fit` accepts.
    data : dict
        The model's inputs; observed values optional.
    num_draws : int
        Replicates drawn.
    kind : {"kde", "hist"}
    seed : int, optional
        Seed for the draws (the global RNG is untouched).
    var_names : str or list of str, optional
        Observed sites to plot (default: all).
    ax : matplotlib Axes or sequence of Axes, optional

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    TypeError, ValueError, KeyError
        Bad ``model``, ``data``, ``kind``, ``num_draws``, ``var_names`` or ``ax``; an improper prior.

    Examples
    --------
    >>> import torch
    >>> fig = plot_prior_predictive("normal_normal", {"y": torch.tensor([0.5, 1.5, 1.0])}, num_draws=10, seed=0)
    >>> len(fig.axes[0].lines)  # 10 replicates, their pooled density, the observed data
    12
    """
    _check_kind(kind)
    num_draws = _check_count("num_draws", num_draws)
    fn, clean, proto = _prior_trace(model, data, seed)
    observed_sites = _sites(proto, observed=True)
    observed = {n: proto.nodes[n]["value"].detach().cpu().numpy() for n in observed_sites}
    available = observed_sites or _released_sites(fn, proto, var_names)
    sites = _choose_sites(available, var_names)
    draws = prior_predictive(fn, clean, num_samples=num_draws, seed=seed)
    reps = {k: draws[k].double().numpy() for k in sites}
    return _plot(reps, observed, sites, kind, ax, "prior predictive", "prior predictive check")


def _released_sites(fn: Any, trace: Any, var_names: Any) -> list[str]:
    """The would-be observed sites when the data hold no observed values.

    With ``var_names``, any sample site may be plotted; otherwise the sites named like the
    observed fields of the model's data contract.
    """
    names = _sites(trace)
    if var_names is not None:
        return names
    observed_keys = set(getattr(getattr(fn, "data_spec", None), "observed", ()) or ())
    found = [n for n in names if n in observed_keys]
    if not found:
        raise ValueError(
            f"data holds no observed values and the model declares no observed site by name; pass "
            f"the observed values, or var_names= one of its sites {names}"
        )
    return found
