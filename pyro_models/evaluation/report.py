"""One self-contained HTML page comparing fitted posteriors on the same held-out data.

:func:`report` takes named :class:`~pyro_models.FitResult` s (any mix of NUTS, SVI guides,
deep ensembles, SWAG, MC dropout), predicts the same test points with each, and scores every
method with the same functions of :mod:`pyro_models.evaluation.metrics`:

- regression (predictions carry ``mean``/``total_var``): RMSE, NLL, CRPS, coverage of the
  central 90% and 95% predictive intervals, calibration error; a calibration curve, an
  interval-coverage plot and, for one-dimensional inputs, the predictive bands;
- classification (predictions carry ``probs``): accuracy, NLL, Brier score, ECE with
  equal-width and with adaptive (equal-mass) bins, area under the accuracy-retention curve
  (selective prediction); reliability diagrams and retention curves;
- for both, when the training data are given: the predictive uncertainty of each test point
  against its distance to the nearest training input (total and epistemic parts);
- per method: fit time and draws used; for SVI the PSIS k-hat of the guide; for MCMC the
  largest R-hat, the smallest bulk ESS and the divergences (ArviZ), with trace and rank plots
  of a few parameters.

The page is one file: figures are PNGs embedded as base64 ``data:`` URIs, the style sheet is
inline, nothing is fetched when it is opened. A four-line inline script, run on the browser's
``load`` event, writes ``data-loaded-images="loaded/total"`` onto ``<body>``, so a headless
browser can check that every figure decoded.

See :func:`report` for an example.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..inference import arviz_bridge
from ..inference.result import FitResult, Predictions
from ..models.base import BayesianModel
from . import metrics

__all__ = ["report", "REGRESSION_METRICS", "CLASSIFICATION_METRICS"]

#: Regression metric columns: key -> (header, which value is best).
#: "low": smaller is better; "high": larger is better; a float: closest to that value is best.
REGRESSION_METRICS: dict[str, tuple[str, Any]] = {
    "rmse": ("RMSE", "low"),
    "nll": ("NLL", "low"),
    "crps": ("CRPS", "low"),
    "coverage_90": ("coverage@90%", 0.9),
    "coverage_95": ("coverage@95%", 0.95),
    "calibration_error": ("calibration error", "low"),
}
#: Classification metric columns, as :data:`REGRESSION_METRICS`.
CLASSIFICATION_METRICS: dict[str, tuple[str, Any]] = {
    "accuracy": ("accuracy", "high"),
    "nll": ("NLL", "low"),
    "brier": ("Brier", "low"),
    "ece": ("ECE (equal-width)", "low"),
    "ece_adaptive": ("ECE (adaptive)", "low"),
    "selective_auc": ("selective AUC", "high"),
}
_TASKS = ("regression", "classification")
# Levels of the calibration curve; the calibration error averages |observed - nominal| over them.
_CALIBRATION_LEVELS = tuple(k / 20 for k in range(1, 20))
_DISTANCE_BINS = 8
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
           "tab:pink", "tab:gray", "tab:olive", "tab:cyan")


# ============================================================================ per-method data
@dataclass
class _Method:
    """One method's predictions on the test points and everything computed from them."""

    name: str
    result: FitResult
    color: str
    pred: Predictions
    num_draws: int
    task: str
    form: str = ""  # how the predictive density was scored, shown in the diagnostics table
    metrics: dict[str, float] = field(default_factory=dict)
    # regression: the predictive as per-draw Gaussians (loc, scale), else as draws of y
    loc: torch.Tensor | None = None  # (S, N)
    scale: torch.Tensor | None = None  # (S, N)
    y_draws: torch.Tensor | None = None  # (S, N)
    coverage: dict[float, float] = field(default_factory=dict)
    calibration: tuple[np.ndarray, np.ndarray] | None = None
    # classification
    probs: torch.Tensor | None = None  # (N, C)
    # per-point uncertainty for the distance plot: label -> (N,)
    uncertainty: dict[str, torch.Tensor] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)


def _task_of(pred: Predictions) -> str | None:
    keys = set(pred.summary)
    if "probs" in keys:
        return "classification"
    if {"mean", "total_var"} <= keys:
        return "regression"
    return None


def _describe(result: FitResult) -> str:
    """A short human description of how the result was fitted (public attributes only)."""
    cfg = result.config
    if result.engine == "mcmc":
        draws = next(iter(result.samples().values()))
        c, d = draws.shape[:2]
        return (f"{cfg.kernel.upper()}, {c} chain{'s' if c != 1 else ''} x {d} draws "
                f"({cfg.num_warmup} warmup)")
    guide = type(result.guide).__name__ if result.guide is not None else "guide"
    return f"SVI, {guide}, {len(result.losses)} steps"


def _draws_to_use(result: FitResult, num_samples: int | None) -> int | None:
    """``num_samples`` for ``predict``: None (every draw) when the result holds fewer."""
    if num_samples is None or result.engine != "mcmc":
        return num_samples
    draws = next(iter(result.samples().values()))
    c, d = draws.shape[:2]
    if num_samples >= c * d:
        return None
    return max(num_samples, c)  # MCMC spreads draws over chains: at least one per chain


# ============================================================================ validation
def _check_results(results: Any) -> dict[str, FitResult]:
    if not isinstance(results, Mapping):
        raise TypeError(f"results: expected a mapping {{name: FitResult}}, got {type(results).__name__}")
    if not results:
        raise ValueError("results: expected at least one {name: FitResult} entry, got an empty mapping")
    out = {}
    for name, res in results.items():
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"results: method names must be non-empty strings, got {name!r}")
        if not isinstance(res, FitResult):
            raise TypeError(f"results[{name!r}]: expected a FitResult (from pyro_models.fit), got "
                            f"{type(res).__name__}")
        out[name] = res
    return out


def _check_num_samples(num_samples: Any) -> None:
    if num_samples is None:
        return
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples: expected a positive int or None, got {num_samples!r}")


def _resolve_target(results: Mapping[str, FitResult], test_data: Mapping[str, Any], target: str | None) -> str:
    """The observed field scored on the test data: ``target``, else the one observed site of
    every model (the ``data_spec`` observed fields of a registered model) found in ``test_data``."""
    if target is not None:
        if not isinstance(target, str):
            raise TypeError(f"target: expected a field name (str), got {type(target).__name__}")
        if target not in test_data:
            raise ValueError(f"target={target!r} is not in test_data (keys: {sorted(test_data)})")
        for name, res in results.items():
            if target not in res.observed_sites:
                raise ValueError(f"target={target!r} is not an observed site of results[{name!r}] "
                                 f"(its observed sites: {list(res.observed_sites)})")
        return target
    common: list[str] | None = None
    for res in results.values():
        model = res.model
        observed = list(model.data_spec.observed) if isinstance(model, BayesianModel) else []
        observed += [s for s in res.observed_sites if s not in observed]
        common = observed if common is None else [s for s in common if s in observed]
    candidates = [s for s in (common or []) if s in test_data]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ValueError(
            f"test_data has no observed target to score: the models observe {common or 'nothing in common'}, "
            f"test_data has keys {sorted(test_data)}; include the targets (e.g. test_data['y']) or pass target=..."
        )
    raise ValueError(f"test_data holds several observed fields {candidates}: pass target=... to pick one")


def _resolve_inputs(results: Mapping[str, FitResult], test_data: Mapping[str, Any], target: str,
                    inputs: str | None, n: int) -> str | None:
    """The input field measured against the training data (``None``: no single one).

    Default: the one field of ``test_data`` other than the target with a leading dimension of
    N (for a registered model, among its non-observed ``data_spec`` fields).
    """
    if inputs is not None:
        if not isinstance(inputs, str) or inputs not in test_data:
            raise ValueError(f"inputs={inputs!r} is not a key of test_data (keys: {sorted(test_data)})")
        return inputs
    model = next(iter(results.values())).model
    keys = [k for k in test_data if k != target]
    if isinstance(model, BayesianModel):
        spec = model.data_spec
        keys = [k for k in keys if k in spec.names and k not in spec.observed]
    names = []
    for k in keys:
        shape = getattr(test_data[k], "shape", None)
        if shape is not None and len(shape) >= 1 and shape[0] == n:
            names.append(k)
    return names[0] if len(names) == 1 else None


def _target_tensor(test_data: Mapping[str, Any], target: str) -> torch.Tensor:
    y = test_data[target]
    try:
        y = torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"test_data[{target!r}]: expected a tensor or array of targets, got "
                        f"{type(test_data[target]).__name__}") from e
    if y.dim() != 1 or y.numel() == 0:
        raise ValueError(f"test_data[{target!r}]: expected shape (N,) with N >= 1, got {tuple(y.shape)}")
    return y.detach().cpu()


def _labels(y: torch.Tensor, target: str, num_classes: int) -> torch.Tensor:
    """Class indices from the target: ints, or floats that are whole numbers (Bernoulli 0/1)."""
    if y.is_floating_point():
        if not bool((y == y.round()).all()):
            raise ValueError(f"test_data[{target!r}]: a classifier's targets must be class indices, "
                             "got non-integer values")
        y = y.round()
    labels = y.long()
    if bool((labels < 0).any()) or bool((labels >= num_classes).any()):
        raise ValueError(f"test_data[{target!r}]: expected class indices in [0, {num_classes - 1}], got "
                         f"range [{int(labels.min())}, {int(labels.max())}]")
    return labels


# ============================================================================ metrics
def _predict(name: str, result: FitResult, test_data: Mapping[str, Any], target: str,
             num_samples: int | None, color: str) -> _Method:
    extra = tuple(s for s in getattr(result.model, "prediction_sites", ()) if s in ("loc", "scale", "probs"))
    try:
        pred = result.predict(test_data, _draws_to_use(result, num_samples), return_sites=(target, *extra))
    except (KeyError, ValueError, TypeError) as e:
        if hasattr(e, "add_note"):  # Python >= 3.11: say which method, keep the exception's type
            e.add_note(f"(while predicting test_data with results[{name!r}])")
        raise
    draws = pred[target]
    return _Method(name=name, result=result, color=color, pred=pred, num_draws=int(draws.shape[0]),
                   task=_task_of(pred) or "")


def _regression_metrics(m: _Method, y: torch.Tensor, test_data: Mapping[str, Any], target: str,
                        num_samples: int | None, levels: Sequence[float]) -> None:
    pred = m.pred
    yd = pred[target].to(torch.float64)
    yf = y.to(torch.float64)
    if yd.shape[1:] != yf.shape:
        raise ValueError(f"results[{m.name!r}]: predictions of {target!r} have shape {tuple(yd.shape[1:])} "
                         f"per draw, the test targets {tuple(yf.shape)}")
    mean = pred.summary["mean"].to(torch.float64) if "mean" in pred.summary else yd.mean(0)
    out = {"rmse": metrics.rmse(mean, yf)}
    all_levels = sorted(set(float(v) for v in levels) | {0.9, 0.95})
    if "loc" in pred and "scale" in pred:
        # The predictive is an equal-weight mixture of the draws' Gaussians: every score exact.
        loc, scale = pred["loc"].to(torch.float64), pred["scale"].to(torch.float64)
        m.loc, m.scale = loc, scale
        form = dict(loc=loc, scale=scale)
        out["nll"] = metrics.gaussian_mixture_nll(loc, scale, yf)
        out["crps"] = metrics.crps_gaussian_mixture(loc, scale, yf)
        m.form = f"mixture of {m.num_draws} Gaussians"
    else:
        # Only draws of y: the NLL of the mixture over posterior draws from the pointwise
        # likelihood, -log (1/S) sum_s p(y_i | theta_s); CRPS and intervals from the draws.
        ll = _log_lik_draws(m, test_data, target, num_samples).to(torch.float64)
        out["nll"] = (math.log(ll.shape[0]) - torch.logsumexp(ll, 0)).mean()
        out["crps"] = metrics.crps_samples(yd, yf)
        form = dict(y_draws=yd)
        m.form = f"{m.num_draws} predictive draws"
    m.y_draws = yd
    cov = metrics.interval_coverage(yf, levels=all_levels, **form)
    m.coverage = {k: float(v) for k, v in cov.items()}
    out["coverage_90"], out["coverage_95"] = cov[0.9], cov[0.95]
    expected, observed = metrics.regression_calibration_curve(yf, levels=_CALIBRATION_LEVELS, **form)
    m.calibration = (expected.numpy(), observed.numpy())
    out["calibration_error"] = (observed - expected).abs().mean()
    m.metrics = {k: float(v) for k, v in out.items()}
    total = pred.summary["total_var"] if "total_var" in pred.summary else yd.var(0, unbiased=False)
    m.uncertainty = {"predictive sd (total)": total.to(torch.float64).sqrt()}
    if "epistemic_var" in pred.summary:
        m.uncertainty["epistemic sd"] = pred.summary["epistemic_var"].to(torch.float64).sqrt()


def _log_lik_draws(m: _Method, test_data: Mapping[str, Any], target: str, num_samples: int | None) -> torch.Tensor:
    """Pointwise log-likelihood of the test targets per posterior draw, ``(S, N)``."""
    ll = m.result.log_likelihood(test_data, _draws_to_use(m.result, num_samples))[target]
    return ll.reshape(ll.shape[0], -1)


def _classification_metrics(m: _Method, y: torch.Tensor, target: str, num_bins: int) -> None:
    summary = m.pred.summary
    probs = summary["probs"].to(torch.float64)
    if probs.dim() != 2 or probs.shape[0] != y.shape[0]:
        raise ValueError(f"results[{m.name!r}]: predicted probs have shape {tuple(probs.shape)}, "
                         f"expected (N={y.shape[0]}, C)")
    # Rows are means of per-draw probabilities; renormalise away float32 rounding so the
    # metric functions' sum-to-one check (float64 tolerance) accepts them.
    probs = probs / probs.sum(-1, keepdim=True)
    labels = _labels(y, target, probs.shape[1])
    m.probs = probs
    m.metrics = {
        "accuracy": float(metrics.accuracy(probs, labels)),
        "nll": float(metrics.nll(probs, labels)),
        "brier": float(metrics.brier(probs, labels)),
        "ece": float(metrics.ece(probs, labels, num_bins)),
        "ece_adaptive": float(metrics.ece(probs, labels, num_bins, binning="adaptive")),
        "selective_auc": float(metrics.area_under_retention_curve(probs, labels)),
    }
    m.form = f"mean class probabilities of {m.num_draws} draws"
    m.uncertainty = {}
    if "entropy" in summary:
        m.uncertainty["predictive entropy (total)"] = summary["entropy"].to(torch.float64)
    if "mutual_info" in summary:
        m.uncertainty["mutual information (epistemic)"] = summary["mutual_info"].to(torch.float64)


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _diagnostics(m: _Method) -> None:
    res = m.result
    khat = getattr(res, "psis_khat", None)
    d: dict[str, Any] = {"fit_time": float(res.fit_time), "draws": m.num_draws,
                         "psis_khat": None if khat is None else float(khat),
                         "rhat_max": None, "ess_bulk_min": None, "divergences": None}
    if res.engine == "mcmc":
        idata = res.to_inference_data(predictive=False, log_likelihood=False)
        one_chain = next(iter(res.samples().values())).shape[0] < 2
        # One chain: ArviZ logs that R-hat needs two and returns NaN, which the page shows as n/a.
        with _quiet_logger("arviz") if one_chain else contextlib.nullcontext():
            table = arviz_bridge.summarize(idata, var_names=list(res.latent_sites))
        d["rhat_max"] = float(table["r_hat"].max()) if table["r_hat"].notna().any() else float("nan")
        d["ess_bulk_min"] = float(table["ess_bulk"].min()) if table["ess_bulk"].notna().any() else float("nan")
        d["divergences"] = arviz_bridge.num_divergences(idata)
    m.diagnostics = d


# ============================================================================ figures
def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _mpl_text(s: str) -> str:
    """A user string for matplotlib: ``$`` would start mathtext."""
    return s.replace("$", r"\$")


def _figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] | None = None,
            **subplots: Any) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    fig = Figure(figsize=size or (4.6 * ncols, 3.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplots)
    return fig, axes


def _fig_predictive_bands(methods: list[_Method], x: np.ndarray, y: np.ndarray,
                          train: tuple[np.ndarray, np.ndarray] | None) -> str:
    n = len(methods)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    # One y scale for all: the bands' widths are what the eye compares.
    fig, axes = _figure(nrows, ncols, size=(4.6 * ncols, 3.4 * nrows), sharex=True, sharey=True)
    order = np.argsort(x)
    xs = x[order]
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax, m in zip(axes.ravel(), methods):
        for level, alpha in ((0.9, 0.18), (0.5, 0.35)):
            if m.loc is not None:
                lo, hi = metrics.central_interval(level, loc=m.loc, scale=m.scale)
            else:
                lo, hi = metrics.central_interval(level, y_draws=m.y_draws)
            ax.fill_between(xs, lo.numpy()[order], hi.numpy()[order], color=m.color, alpha=alpha, lw=0,
                            label=f"{int(100 * level)}% interval")
        mean = m.pred.summary["mean"] if "mean" in m.pred.summary else m.y_draws.mean(0)
        ax.plot(xs, mean.numpy()[order], color=m.color, lw=1.6, label="predictive mean")
        if train is not None:
            ax.scatter(train[0], train[1], s=7, color="black", alpha=0.55, label="train", zorder=3)
        ax.scatter(x, y, s=7, color="tab:red", alpha=0.55, marker="x", label="test", zorder=3)
        ax.set_title(_mpl_text(m.name))
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    axes[0, 0].legend(fontsize=7, loc="best")
    return _png(fig)


def _fig_calibration(methods: list[_Method]) -> str:
    fig, axes = _figure(size=(5.2, 4.4))
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1, label="calibrated")
    for m in methods:
        expected, observed = m.calibration
        ax.plot(expected, observed, marker="o", ms=3, color=m.color, label=_mpl_text(m.name))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal coverage of the central interval")
    ax.set_ylabel("observed fraction of test targets inside")
    ax.set_title("Calibration curve (above the diagonal: too wide)")
    ax.legend(fontsize=8)
    return _png(fig)


def _fig_coverage(methods: list[_Method], levels: Sequence[float], n: int) -> str:
    fig, axes = _figure(size=(5.2, 4.4))
    ax = axes[0, 0]
    lv = np.array(sorted(levels))
    # Binomial sampling error of a calibrated predictive's observed coverage with N test points.
    se = np.sqrt(lv * (1 - lv) / n)
    ax.fill_between(lv, lv - 2 * se, lv + 2 * se, color="gray", alpha=0.2, lw=0,
                    label=f"calibrated +/- 2 s.e. (N = {n})")
    ax.plot(lv, lv, ls="--", color="gray", lw=1)
    width = 0.8 * (np.min(np.diff(lv)) if len(lv) > 1 else 0.1) / max(len(methods), 1)
    for k, m in enumerate(methods):
        obs = np.array([m.coverage[float(v)] for v in lv])
        offset = (k - (len(methods) - 1) / 2) * width
        ax.plot(lv + offset, obs, marker="o", ls="-", color=m.color, label=_mpl_text(m.name))
    ax.set_xticks(lv, [f"{100 * v:g}%" for v in lv])
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("empirical coverage")
    ax.set_title("Central-interval coverage on the test set")
    ax.legend(fontsize=8)
    return _png(fig)


def _fig_reliability(methods: list[_Method], labels: torch.Tensor, num_bins: int) -> str:
    n = len(methods)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = _figure(nrows, ncols, size=(4.4 * ncols, 4.4 * nrows))
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax, m in zip(axes.ravel(), methods):
        metrics.plot_reliability_diagram(m.probs, labels, num_bins, ax=ax)
        ax.set_title(f"{_mpl_text(m.name)}: ECE = {m.metrics['ece']:.3f}", fontsize=10)
    return _png(fig)


def _fig_retention(methods: list[_Method], labels: torch.Tensor) -> str:
    fig, axes = _figure(size=(5.2, 4.2))
    ax = axes[0, 0]
    for m in methods:
        r, acc = metrics.accuracy_retention_curve(m.probs, labels)
        ax.plot(r.numpy(), acc.numpy(), color=m.color,
                label=f"{_mpl_text(m.name)} (AUC {m.metrics['selective_auc']:.3f})")
    ax.set_xlabel("fraction of test points kept (most confident first)")
    ax.set_ylabel("accuracy on the kept points")
    ax.set_xlim(0, 1)
    ax.set_title("Selective prediction: accuracy-retention")
    ax.legend(fontsize=8)
    return _png(fig)


def _binned_mean(dist: np.ndarray, u: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean uncertainty in equal-count bins of distance (x: the bins' mean distance)."""
    order = np.argsort(dist, kind="stable")
    groups = [g for g in np.array_split(order, min(bins, len(order))) if len(g)]
    return np.array([dist[g].mean() for g in groups]), np.array([u[g].mean() for g in groups])


def _fig_distance(methods: list[_Method], dist: np.ndarray) -> str:
    kinds = list(dict.fromkeys(k for m in methods for k in m.uncertainty))
    fig, axes = _figure(1, len(kinds), size=(5.0 * len(kinds), 4.0))
    for ax, kind in zip(axes[0], kinds):
        for m in methods:
            if kind not in m.uncertainty:
                continue
            u = m.uncertainty[kind].numpy()
            ax.scatter(dist, u, s=6, alpha=0.3, color=m.color)
            bx, bu = _binned_mean(dist, u, _DISTANCE_BINS)
            ax.plot(bx, bu, color=m.color, lw=2, marker="o", ms=3, label=_mpl_text(m.name))
        ax.set_xlabel("distance to the nearest training input")
        ax.set_ylabel(kind)
        ax.set_title(f"{kind} vs distance")
        ax.legend(fontsize=8)
    return _png(fig)


def _mcmc_plot_data(result: FitResult, max_params: int) -> tuple[Any, list[str]]:
    """A few scalar traces of an MCMC result as ArviZ data: the log density (when recorded),
    the scalar latent sites, then the first element of each remaining site."""
    draws = result.samples()
    stats = result.sample_stats
    chosen: dict[str, np.ndarray] = {}
    if "lp" in stats:
        chosen["log density"] = stats["lp"].double().numpy()
    latent = [s for s in result.latent_sites if s in draws]
    scalars = [s for s in latent if draws[s].dim() == 2]
    for s in scalars + [s for s in latent if s not in scalars]:
        if len(chosen) >= max_params:
            break
        v = draws[s].double()
        if v.dim() == 2:
            chosen[s] = v.numpy()
        elif v[0, 0].numel() > 0:
            idx = (0,) * (v.dim() - 2)
            chosen[f"{s}[{', '.join('0' for _ in idx)}]"] = v[(slice(None), slice(None), *idx)].numpy()
    chosen = dict(list(chosen.items())[:max_params])
    groups: dict[str, dict[str, np.ndarray]] = {"posterior": chosen}
    if "diverging" in stats:
        groups["sample_stats"] = {"diverging": stats["diverging"].bool().numpy()}
    return arviz_bridge.to_arviz(groups), list(chosen)


def _fig_trace(idata: Any, names: list[str]) -> str:
    import matplotlib

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.png"
        # ArviZ lays its grid out without a layout engine; constrained layout (an rc setting,
        # so it reaches the figure ArviZ creates) keeps titles off the tick labels above.
        with matplotlib.rc_context({"figure.constrained_layout.use": True, "figure.dpi": 100}):
            arviz_bridge.plot_trace(idata, var_names=names, path=path)
        return base64.b64encode(path.read_bytes()).decode("ascii")


def _fig_rank(idata: Any, names: list[str]) -> str:
    import matplotlib

    with matplotlib.rc_context({"figure.constrained_layout.use": True}):
        if arviz_bridge.ARVIZ_MAJOR >= 1:  # pragma: no cover - ArviZ 1.x only
            import arviz_plots
            import matplotlib.pyplot as plt

            before = set(plt.get_fignums())
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "rank.png"
                    arviz_plots.plot_rank(idata, var_names=names, backend="matplotlib").savefig(path)
                    return base64.b64encode(path.read_bytes()).decode("ascii")
            finally:  # close the pyplot figures ArviZ opened
                for num in set(plt.get_fignums()) - before:
                    plt.close(num)
        import arviz as az

        ncols = min(len(names), 2)
        nrows = math.ceil(len(names) / ncols)
        fig, axes = _figure(nrows, ncols, size=(5.0 * ncols, 2.8 * nrows))
        for ax in axes.ravel()[len(names):]:
            ax.set_visible(False)
        # Drawn on our own axes (no pyplot figure is created, so none is left open).
        az.plot_rank(idata, var_names=names, ax=axes.ravel()[: len(names)], show=False)
        return _png(fig)


# ============================================================================ HTML
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    v = float(value)
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):  # e.g. a PSIS k-hat of -inf: equal weights, the guide is exact
        return "-inf" if v < 0 else "inf"
    return f"{v:.{digits}g}"


def _best(values: list[float], rule: Any) -> set[int]:
    finite = [(i, v) for i, v in enumerate(values) if math.isfinite(v)]
    if len(finite) < 2:
        return set()
    if rule == "low":
        key = [v for _, v in finite]
    elif rule == "high":
        key = [-v for _, v in finite]
    else:
        key = [abs(v - float(rule)) for _, v in finite]
    best = min(key)
    return {i for (i, _), k in zip(finite, key) if k <= best + 1e-12}


def _metric_table(methods: list[_Method], columns: dict[str, tuple[str, Any]]) -> str:
    head = "".join(f'<th data-metric="{html.escape(k)}">{html.escape(h)}</th>' for k, (h, _) in columns.items())
    best = {k: _best([m.metrics[k] for m in methods], rule) for k, (_, rule) in columns.items()}
    rows = []
    for i, m in enumerate(methods):
        cells = []
        for k in columns:
            v = m.metrics[k]
            cls = ' class="best"' if i in best[k] else ""
            cells.append(f'<td data-metric="{html.escape(k)}" data-value="{v!r}"{cls}>{_fmt(v)}</td>')
        name = html.escape(m.name)
        rows.append(f'<tr data-method="{name}"><th scope="row">{_swatch(m)}{name}</th>{"".join(cells)}</tr>')
    return (f'<table id="metrics"><thead><tr><th>method</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _swatch(m: _Method) -> str:
    from matplotlib.colors import to_hex

    return f'<span class="swatch" style="background:{to_hex(m.color)}"></span>'


# A diagnostic value that calls for attention: (key, test) pairs; thresholds as in the note.
_WARN = {
    "psis_khat": lambda v: v > 0.7,
    "rhat_max": lambda v: not math.isfinite(v) or v > 1.01,
    "ess_bulk_min": lambda v: not math.isfinite(v) or v < 100,
    "divergences": lambda v: v > 0,
}


def _diagnostics_table(methods: list[_Method]) -> str:
    header = ["method", "fitted with", "fit time (s)", "draws used", "predictive scored as",
              "PSIS k-hat (SVI)", "max R-hat (MCMC)", "min bulk ESS (MCMC)", "divergences (MCMC)"]
    rows = []
    for m in methods:
        d = m.diagnostics
        tds = [f'<td class="text">{html.escape(_describe(m.result))}</td>']
        for key, digits in (("fit_time", 3), ("draws", 0), ("form", 0), ("psis_khat", 3),
                            ("rhat_max", 4), ("ess_bulk_min", 4), ("divergences", 0)):
            if key == "form":
                tds.append(f'<td class="text">{html.escape(m.form)}</td>')
                continue
            v = d[key]
            warn = v is not None and key in _WARN and _WARN[key](v)
            cls = ' class="warn"' if warn else ""
            raw = "" if v is None else repr(v)
            tds.append(f'<td data-diagnostic="{key}" data-value="{raw}"{cls}>{_fmt(v, digits or 4)}</td>')
        name = html.escape(m.name)
        rows.append(f'<tr data-method="{name}"><th scope="row">{_swatch(m)}{name}</th>{"".join(tds)}</tr>')
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f'<table id="diagnostics"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _img(b64: str, alt: str, caption: str, fig_id: str) -> str:
    return (f'<figure id="{html.escape(fig_id)}"><img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


_GLOSSARY = {
    "regression": [
        ("RMSE", "root mean squared error of the predictive mean"),
        ("NLL", "negative log predictive density per test point, nats (the predictive is the "
                "equal-weight mixture over posterior draws)"),
        ("CRPS", "continuous ranked probability score, in units of y (closed form for a Gaussian mixture)"),
        ("coverage@p", "fraction of test targets inside the central p predictive interval; ideal: p"),
        ("calibration error", "mean |observed - nominal| coverage over nominal levels 5%, 10%, ..., 95%"),
    ],
    "classification": [
        ("accuracy", "fraction whose most probable class is the label"),
        ("NLL", "negative log probability of the label, nats"),
        ("Brier", "sum over classes of (p_c - 1[y = c])^2, in [0, 2]"),
        ("ECE", "expected calibration error of the top-label confidence (equal-width or equal-mass bins)"),
        ("selective AUC", "area under the accuracy-retention curve, points kept most-confident first"),
    ],
}

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="pyro-models {version}">
<title>{title}</title>
<style>
  body {{ font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; line-height: 1.5;
         max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
  h1 {{ border-bottom: 2px solid #ddd; padding-bottom: .3rem; }}
  h2 {{ margin-top: 2.2rem; border-bottom: 1px solid #eee; padding-bottom: .2rem; }}
  table {{ border-collapse: collapse; margin: 1rem 0; font-size: .9rem; }}
  th, td {{ border: 1px solid #ccc; padding: .25rem .6rem; text-align: right; }}
  thead th {{ background: #f4f4f4; }}
  thead th:first-child {{ text-align: left; }}
  tbody th {{ text-align: left; font-weight: normal; white-space: nowrap; }}
  td.best {{ font-weight: bold; background: #eef7ee; }}
  td.warn {{ color: #a40000; background: #fdeeee; }}
  td.text {{ text-align: left; }}
  .swatch {{ display: inline-block; width: .8em; height: .8em; margin-right: .4em; border-radius: 2px; }}
  figure {{ margin: 1.2rem 0; }}
  figure img {{ max-width: 100%; height: auto; border: 1px solid #eee; }}
  figcaption {{ color: #555; font-size: .9rem; }}
  .note {{ color: #555; font-size: .9rem; }}
  dl {{ display: grid; grid-template-columns: max-content auto; gap: .1rem 1rem; font-size: .9rem; }}
  dt {{ font-weight: bold; }} dd {{ margin: 0; }}
</style>
<script>
  // A self-check for headless browsers: how many figures decoded, written onto <body>.
  window.addEventListener("load", function () {{
    var imgs = Array.prototype.slice.call(document.images);
    var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
    document.body.setAttribute("data-loaded-images", ok + "/" + imgs.length);
  }});
</script>
</head>
<body data-task="{task}" data-figures="{num_figures}">
{body}
</body>
</html>
"""


# ============================================================================ the entry point
def report(
    results: Mapping[str, FitResult],
    test_data: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    train_data: Mapping[str, Any] | None = None,
    title: str = "Posterior comparison",
    description: str | None = None,
    target: str | None = None,
    inputs: str | None = None,
    num_samples: int | None = 500,
    levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95),
    num_bins: int = 15,
    max_trace_params: int = 4,
    filename: str = "report.html",
) -> Path:
    """Write one self-contained HTML page comparing fitted posteriors on the same test data.

    Every method predicts the same test points and is scored by the same functions of
    :mod:`pyro_models.evaluation.metrics`; the task (regression or classification) is read
    from the predictions (``mean``/``total_var`` or ``probs`` summaries; see
    :meth:`pyro_models.FitResult.predict`).

    Parameters
    ----------
    results : mapping of str to FitResult
        Methods to compare, by display name (in this order), e.g.
        ``{"NUTS": nuts, "mean-field VI": mf, "deep ensemble (M=5)": ens}``. They must be
        fits of models for the same task with the same observed target.
    test_data : mapping of str to Tensor
        Held-out inputs and targets, as for ``fit`` (e.g. ``{"x": (N, D), "y": (N,)}``).
    out_dir : str or path-like
        Folder to write the page into (created if missing).
    train_data : mapping of str to Tensor, optional
        The training data; enables the uncertainty-against-distance figure (each test
        point's distance to its nearest training input, Euclidean on the flattened inputs)
        and draws the training points into the one-dimensional predictive-band figure.
    title : str
        Page title.
    description : str, optional
        A paragraph shown under the title (plain text, escaped).
    target : str, optional
        The observed field to score; default: the models' one observed field (``data_spec``)
        present in ``test_data``.
    inputs : str, optional
        The input field for distances and band plots; default: the models' one non-observed
        per-datum field (``x`` for the nets). Without one, those figures are left out.
    num_samples : int or None
        Posterior draws per method (SVI: guide draws; MCMC: spread evenly over the chains;
        ensembles: members in turn). ``None`` uses each result's own default (every MCMC draw).
        The mixture CRPS costs ``O(S^2 N)``.
    levels : sequence of float in (0, 1)
        Nominal levels of the interval-coverage figure (regression); 0.9 and 0.95 are always
        computed for the table.
    num_bins : int
        Bins of the reliability diagrams and ECE (classification).
    max_trace_params : int
        At most this many scalar traces per MCMC result in the trace and rank plots (the log
        density, scalar sites, then the first element of each tensor site).
    filename : str
        Name of the page inside ``out_dir``.

    Returns
    -------
    pathlib.Path
        The written HTML file.

    Raises
    ------
    TypeError
        ``results`` is not a mapping of names to :class:`~pyro_models.FitResult`, or a
        field has the wrong type.
    ValueError
        ``results`` is empty; no target (or several) in ``test_data``; methods of different
        tasks; a model whose predictions carry neither ``mean``/``total_var`` nor ``probs``;
        bad ``num_samples``/``levels``/``num_bins``/``filename``.

    Notes
    -----
    Figures, in page order. Regression: predictive bands per method (one-dimensional inputs
    only), calibration curve, interval coverage, uncertainty against distance (with
    ``train_data``). Classification: reliability diagrams, accuracy-retention curves,
    uncertainty against distance (with ``train_data``). Then, per MCMC result, a trace plot
    and a rank plot. ``<body data-figures="...">`` holds their number.

    The metric table is ``<table id="metrics">``: one row per method
    (``<tr data-method="name">``) and one cell per metric (``data-metric`` the key of
    :data:`REGRESSION_METRICS` or :data:`CLASSIFICATION_METRICS`, ``data-value`` the
    unrounded value), so the numbers can be read back.

    Examples
    --------
    >>> import tempfile, pyro_models
    >>> net = pyro_models.models.get("bnn_classifier")(in_features=2, hidden_sizes=[4])
    >>> data = net.example_data()
    >>> config = pyro_models.SVIConfig(num_steps=30, num_posterior_samples=10, psis_draws=0)
    >>> res = pyro_models.fit(net, data, config, seed=0, progress=False)
    >>> page = report({"VI": res}, data, tempfile.mkdtemp(), num_samples=10, filename="clf.html")
    >>> 'data-task="classification"' in page.read_text()
    True
    """
    results = _check_results(results)
    if not isinstance(test_data, Mapping):
        raise TypeError(f"test_data: expected a mapping of field names to tensors, got {type(test_data).__name__}")
    if train_data is not None and not isinstance(train_data, Mapping):
        raise TypeError(f"train_data: expected a mapping of field names to tensors or None, got "
                        f"{type(train_data).__name__}")
    _check_num_samples(num_samples)
    lv = metrics._check_levels(levels).tolist()
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins: expected a positive int, got {num_bins!r}")
    if isinstance(max_trace_params, bool) or not isinstance(max_trace_params, int) or max_trace_params < 1:
        raise ValueError(f"max_trace_params: expected a positive int, got {max_trace_params!r}")
    if not isinstance(title, str):
        raise TypeError(f"title: expected a str, got {type(title).__name__}")
    if description is not None and not isinstance(description, str):
        raise TypeError(f"description: expected a str or None, got {type(description).__name__}")
    if not isinstance(filename, str) or not filename or Path(filename).name != filename:
        raise ValueError(f"filename: expected a plain file name such as 'report.html', got {filename!r}")

    target = _resolve_target(results, test_data, target)
    y = _target_tensor(test_data, target)
    n = y.shape[0]
    input_key = _resolve_inputs(results, test_data, target, inputs, n)

    methods = [_predict(name, res, test_data, target, num_samples, _COLORS[i % len(_COLORS)])
               for i, (name, res) in enumerate(results.items())]
    unknown = [m.name for m in methods if not m.task]
    if unknown:
        raise ValueError(
            f"results {unknown}: the model's predictions carry no summary telling regression "
            "(mean, total_var) from classification (probs); report() needs a model that defines "
            "summarize_predictions (e.g. bnn_regression, bnn_classifier, gp_regression)"
        )
    tasks = {m.task for m in methods}
    if len(tasks) > 1:
        listing = ", ".join(f"{m.name!r}: {m.task}" for m in methods)
        raise ValueError(f"results mix tasks ({listing}); compare methods for one task per report")
    task = tasks.pop()

    labels = None
    for m in methods:
        if task == "regression":
            _regression_metrics(m, y, test_data, target, num_samples, lv)
        else:
            _classification_metrics(m, y, target, num_bins)
            labels = _labels(y, target, m.probs.shape[1])
        _diagnostics(m)
    columns = REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS

    # ---- inputs for the distance and band figures
    x_test = x_train = None
    if input_key is not None:
        x_test = torch.as_tensor(test_data[input_key]).detach().cpu().to(torch.float64)
        if train_data is not None:
            if input_key not in train_data:
                raise ValueError(f"train_data has no {input_key!r} (keys: {sorted(train_data)}); it "
                                 "needs the same inputs as test_data")
            x_train = torch.as_tensor(train_data[input_key]).detach().cpu().to(torch.float64)
            if x_train.shape[1:] != x_test.shape[1:]:
                raise ValueError(f"train_data[{input_key!r}] has per-datum shape {tuple(x_train.shape[1:])}, "
                                 f"test_data[{input_key!r}] {tuple(x_test.shape[1:])}")

    body: list[str] = [f"<h1>{html.escape(title)}</h1>"]
    if description:
        body.append(f"<p>{html.escape(description)}</p>")
    body.append(
        f"<p class=\"note\">{task.capitalize()}: {len(methods)} method{'s' if len(methods) != 1 else ''} "
        f"scored on the same {n} test points (target <code>{html.escape(target)}</code>"
        + (f", inputs <code>{html.escape(input_key)}</code>" if input_key else "")
        + f"), each from its own posterior draws ({'every draw' if num_samples is None else f'up to {num_samples}'} "
        f"per method). Generated by pyro-models {html.escape(__version__)} on "
        f"{html.escape(time.strftime('%Y-%m-%d %H:%M'))}.</p>"
    )
    body.append("<h2>Metrics</h2>")
    body.append(_metric_table(methods, columns))
    body.append("<p class=\"note\">Bold: the best value in each column (for coverage: the closest to "
                "the nominal level).</p>")
    body.append("<dl>" + "".join(f"<dt>{html.escape(a)}</dt><dd>{html.escape(b)}</dd>"
                                 for a, b in _GLOSSARY[task]) + "</dl>")
    body.append("<h2>Fit and sampler diagnostics</h2>")
    body.append(_diagnostics_table(methods))
    body.append("<p class=\"note\">PSIS k-hat (Yao et al., 2018) judges how well an SVI guide covers "
                "the posterior: below 0.5 good, 0.5-0.7 usable, above 0.7 the guide misses mass "
                "(n/a: not computed for this fit). R-hat near 1.00 (below 1.01) and a bulk ESS of "
                "hundreds mean the chains mixed; divergences flag regions NUTS could not explore. "
                "R-hat needs at least two chains (n/a otherwise). Red: worth a look.</p>")

    figures: list[str] = []

    def add(heading: str, b64: str, alt: str, caption: str, fig_id: str) -> None:
        figures.append(fig_id)
        body.append(f"<h2>{html.escape(heading)}</h2>")
        body.append(_img(b64, alt, caption, fig_id))

    with warnings.catch_warnings():
        # matplotlib's constrained layout warns when a long legend does not fit; the figure is fine.
        warnings.filterwarnings("ignore", "constrained_layout not applied", UserWarning)
        if task == "regression":
            if x_test is not None and x_test[0].numel() == 1:  # one-dimensional inputs
                xt = x_test.reshape(n).numpy()
                train = None
                if x_train is not None and train_data is not None and target in train_data:
                    train = (x_train.reshape(-1).numpy(),
                             torch.as_tensor(train_data[target]).detach().cpu().double().reshape(-1).numpy())
                add("Predictive bands", _fig_predictive_bands(methods, xt, y.double().numpy(), train),
                    "Predictive mean and intervals per method",
                    "Predictive mean with central 50% and 90% intervals of each method over the test "
                    "inputs; dots: training points, crosses: test points.", "fig-bands")
            add("Calibration curve", _fig_calibration(methods), "Calibration curves",
                "Observed fraction of test targets inside the central predictive interval against its "
                "nominal level (5% to 95%); the dashed diagonal is perfect calibration.", "fig-calibration")
            add("Interval coverage", _fig_coverage(methods, lv, n), "Interval coverage",
                f"Empirical coverage of the central {', '.join(f'{100 * v:g}%' for v in lv)} predictive "
                "intervals; the grey band is where a calibrated predictive lands 95% of the time with "
                f"N = {n} test points.", "fig-coverage")
        else:
            add("Reliability diagrams", _fig_reliability(methods, labels, num_bins), "Reliability diagrams",
                f"Accuracy against confidence in {num_bins} equal-width bins per method; red: the gap to "
                "the bin's mean confidence; dashed: perfect calibration.", "fig-reliability")
            add("Selective prediction", _fig_retention(methods, labels), "Accuracy-retention curves",
                "Accuracy on the kept test points when only the most confident fraction is kept; "
                "higher and flatter is better.", "fig-retention")
        if x_test is not None and x_train is not None:
            dist = torch.cdist(x_test.reshape(n, -1), x_train.reshape(x_train.shape[0], -1)).min(1).values.numpy()
            if any(m.uncertainty for m in methods):
                add("Uncertainty against distance from the training data", _fig_distance(methods, dist),
                    "Uncertainty against distance to the training data",
                    "Per test point: the method's uncertainty against the Euclidean distance from its "
                    f"input to the nearest training input; lines: means over {_DISTANCE_BINS} equal-count "
                    "distance bins. Epistemic uncertainty should grow away from the data.", "fig-distance")
        for k, m in enumerate(methods):
            if m.result.engine != "mcmc":
                continue
            idata, names = _mcmc_plot_data(m.result, max_trace_params)
            add(f"MCMC trace: {m.name}", _fig_trace(idata, names), f"Trace plot of {m.name}",
                f"{m.name}: marginal density per chain (left) and draws in order (right) for "
                f"{', '.join(names)} (ArviZ plot_trace).", f"fig-trace-{k}")
            add(f"MCMC ranks: {m.name}", _fig_rank(idata, names), f"Rank plot of {m.name}",
                f"{m.name}: histograms of the draws' ranks over all chains, per chain (ArviZ plot_rank); "
                "uniform bars mean the chains explore the same distribution.", f"fig-rank-{k}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page = out / filename
    page.write_text(_PAGE.format(version=html.escape(__version__), title=html.escape(title), task=task,
                                 num_figures=len(figures), body="\n".join(body)), encoding="utf-8")
    return page
