"""Predictive metrics: regression, classification and selective prediction.

Pure functions over tensors (NumPy arrays and nested lists are accepted and converted with
:func:`torch.as_tensor`). Results are tensors on the input's device: 0-dim for scalars.

Regression metrics take the predictive distribution in one of the two forms every method of
this package produces:

- predictive **draws** ``y_draws`` of shape ``(S, N)`` (NUTS or VI posterior predictive draws,
  or any sampler), or
- per-draw **Gaussian parameters** ``loc`` and ``scale`` of shape ``(S, N)``: the predictive is
  the equal-weight mixture ``(1/S) sum_s Normal(loc_s, scale_s)`` (posterior draws of a
  Gaussian-likelihood model, ensemble members, dropout passes).

``N`` may be any batch shape ``...``: ``y`` then has shape ``...`` and the draws ``(S, ...)``.

Classification metrics take ``probs`` of shape ``(N, C)`` (already averaged over draws: see
:func:`pyro_models.evaluation.uncertainty.decompose_classification`) and integer ``labels``
of shape ``(N,)``; the top-label convention (confidence is ``max_c probs``) is used throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    # regression
    "rmse",
    "gaussian_mixture_nll",
    "crps_gaussian",
    "crps_gaussian_mixture",
    "crps_samples",
    "gaussian_mixture_cdf",
    "gaussian_mixture_quantile",
    "central_interval",
    "pit",
    "interval_coverage",
    "regression_calibration_curve",
    # classification
    "accuracy",
    "nll",
    "brier",
    "ece",
    "reliability_diagram_data",
    "plot_reliability_diagram",
    # selective prediction
    "accuracy_retention_curve",
    "area_under_retention_curve",
]

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_REDUCTIONS = ("mean", "sum", "none")
_BINNINGS = ("equal_width", "adaptive")
#: Elements per block of the O(S^2 N) pairwise term of the mixture CRPS.
_PAIR_BLOCK = 1 << 20


# --------------------------------------------------------------------------------------------
# input checking


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name}: expected a tensor, NumPy array or sequence of numbers, got "
                        f"{type(x).__name__}") from e


def _as_float(x: Any, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = _as_tensor(x, name)
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name}: expected real numbers, got dtype {t.dtype}")
    if dtype is not None:
        t = t.to(dtype)
    elif not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return t


def _common_float(**tensors: Any) -> list[torch.Tensor]:
    ts = {k: _as_tensor(v, k) for k, v in tensors.items()}
    dtype = None
    for t in ts.values():
        if t.is_floating_point():
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    dtype = dtype or torch.get_default_dtype()
    return [_as_float(t, k, dtype) for k, t in ts.items()]


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x


def _check_draws(draws: torch.Tensor, y: torch.Tensor, name: str) -> None:
    if draws.dim() < 1 or draws.shape[0] < 1 or tuple(draws.shape[1:]) != tuple(y.shape):
        raise ValueError(
            f"{name}: expected shape (S, *y.shape) = (S, {', '.join(map(str, y.shape))}) with a "
            f"leading draw dimension, got {tuple(draws.shape)} for y of shape {tuple(y.shape)} "
            f"(a single predictive needs a draw dimension of size 1: {name}[None])")


def _mixture_inputs(loc: Any, scale: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    loc, scale, y = _common_float(loc=loc, scale=scale, y=y)
    _check_draws(loc, y, "loc")
    try:
        scale = torch.broadcast_to(scale, loc.shape)
    except RuntimeError as e:
        raise ValueError(f"scale: shape {tuple(scale.shape)} does not broadcast to loc's "
                         f"{tuple(loc.shape)}") from e
    if not bool((scale > 0).all()):
        raise ValueError("scale: every predictive standard deviation must be > 0")
    return loc, scale, y


def _predictive(y: Any, y_draws: Any, loc: Any, scale: Any,
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Validate the "either draws or (loc, scale)" convention; returns (y, draws, loc, scale)."""
    if (y_draws is None) == (loc is None and scale is None):
        raise ValueError("give the predictive either as y_draws=(S, N) or as loc=(S, N) and "
                         "scale=(S, N), not both and not neither")
    if y_draws is not None:
        draws, y = _common_float(y_draws=y_draws, y=y)
        _check_draws(draws, y, "y_draws")
        return y, draws, None, None
    if loc is None or scale is None:
        raise ValueError("a Gaussian-mixture predictive needs both loc and scale")
    loc, scale, y = _mixture_inputs(loc, scale, y)
    return y, None, loc, scale


def _check_levels(levels: Any, name: str = "levels", closed: bool = False) -> torch.Tensor:
    if not isinstance(levels, torch.Tensor):  # straight to float64: keeps 0.95 == 0.95
        try:
            levels = torch.as_tensor(levels, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name}: expected a float or a sequence of floats, got {levels!r}") from e
    lv = _as_float(levels, name, torch.float64).reshape(-1)
    lo_ok = (lv >= 0) if closed else (lv > 0)
    hi_ok = (lv <= 1) if closed else (lv < 1)
    if lv.numel() == 0 or not bool((lo_ok & hi_ok).all()):
        bounds = "[0, 1]" if closed else "(0, 1)"
        raise ValueError(f"{name}: expected probabilities in {bounds}, got {lv.tolist()}")
    return lv


def _check_classification(probs: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    probs = _as_float(probs, "probs")
    if probs.dim() != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise ValueError(f"probs: expected shape (N, C) with N >= 1 and C >= 2, got "
                         f"{tuple(probs.shape)} (average draws first: probs_draws.mean(0))")
    if bool((probs < 0).any()) or bool((probs > 1).any()):
        raise ValueError("probs: expected probabilities in [0, 1] (got values outside; were "
                         "logits passed? use probs = logits.softmax(-1))")
    eps = torch.finfo(probs.dtype).eps
    tol = math.sqrt(eps) + probs.shape[1] * eps
    err = (probs.sum(-1) - 1).abs().max().item()
    if err > tol:
        raise ValueError(f"probs: rows must sum to 1 (largest deviation {err:.3g} > tolerance "
                         f"{tol:.3g} for {probs.dtype})")
    labels = _as_tensor(labels, "labels")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels: expected an integer tensor of class indices, got dtype "
                        f"{labels.dtype} (convert with labels.long())")
    if tuple(labels.shape) != (probs.shape[0],):
        raise ValueError(f"labels: expected shape (N,) = ({probs.shape[0]},) matching probs "
                         f"{tuple(probs.shape)}, got {tuple(labels.shape)}")
    labels = labels.to(device=probs.device, dtype=torch.long)
    c = probs.shape[1]
    if bool((labels < 0).any()) or bool((labels >= c).any()):
        raise ValueError(f"labels: expected class indices in [0, {c - 1}] for C={c}, got range "
                         f"[{labels.min().item()}, {labels.max().item()}]")
    return probs, labels


# --------------------------------------------------------------------------------------------
# regression


def rmse(mean: Any, y: Any) -> torch.Tensor:
    """Root mean squared error of a point prediction.

    Parameters
    ----------
    mean : Tensor, shape (N,) or any shape
        Point predictions, typically the predictive mean ``y_draws.mean(0)``.
    y : Tensor, same shape as ``mean``
        Observed targets.

    Returns
    -------
    Tensor, shape ()
        ``sqrt(mean((mean - y)^2))``.

    Raises
    ------
    ValueError
        If the shapes differ or an input contains NaN/inf.

    Examples
    --------
    >>> rmse(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0])).item()  # sqrt((0 + 4) / 2)
    1.4142135381698608
    """
    mean, y = _common_float(mean=mean, y=y)
    if mean.shape != y.shape or y.numel() == 0:
        raise ValueError(f"mean: expected the shape of y {tuple(y.shape)} (non-empty), got "
                         f"{tuple(mean.shape)}")
    return (mean - y).pow(2).mean().sqrt()


def gaussian_mixture_nll(loc: Any, scale: Any, y: Any, *, reduction: str = "mean") -> torch.Tensor:
    """Negative log predictive density of an equal-weight Gaussian mixture.

    ``-log((1/S) sum_s Normal(y; loc_s, scale_s))``, computed with ``logsumexp`` so it is
    stable when every component density underflows.

    Parameters
    ----------
    loc : Tensor, shape (S, N)
        Predictive mean of each draw (``N`` may be any batch shape).
    scale : Tensor, broadcastable to (S, N)
        Predictive standard deviation of each draw (> 0), e.g. ``(S, 1)`` for one noise
        scale per draw.
    y : Tensor, shape (N,)
        Observed targets.
    reduction : {"mean", "sum", "none"}
        ``"none"`` returns the per-point NLL of shape ``(N,)``.

    Returns
    -------
    Tensor
        Mean NLL in nats (shape ``()``), or per point.

    Raises
    ------
    ValueError
        On shape mismatch, non-positive scale or NaN/inf input.

    Examples
    --------
    >>> loc = torch.zeros(1, 1); scale = torch.ones(1, 1)
    >>> round(gaussian_mixture_nll(loc, scale, torch.zeros(1)).item(), 6)  # 0.5 log(2 pi)
    0.918939
    """
    _check_reduction(reduction)
    loc, scale, y = _mixture_inputs(loc, scale, y)
    z = (y - loc) / scale
    logp = -0.5 * z * z - scale.log() - _LOG_SQRT_2PI
    out = math.log(loc.shape[0]) - torch.logsumexp(logp, dim=0)
    return _reduce(out, reduction)


def _expected_abs_normal(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``E|X|`` for ``X ~ Normal(mu, sigma^2)``: ``sigma [2 phi(z) + z erf(z / sqrt 2)]``, z = mu/sigma."""
    z = mu / sigma
    pdf = torch.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))
    return sigma * (2.0 * pdf + z * torch.erf(z / _SQRT2))


def crps_gaussian(loc: Any, scale: Any, y: Any, *, reduction: str = "mean") -> torch.Tensor:
    """Continuous ranked probability score of a single Gaussian predictive (closed form).

    ``CRPS(N(mu, s^2), y) = s [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)]`` with
    ``z = (y - mu) / s`` (Gneiting & Raftery, 2007). Lower is better; same units as ``y``.

    Parameters
    ----------
    loc, scale : Tensor, shape (N,) (``scale`` broadcastable, > 0)
        Predictive mean and standard deviation.
    y : Tensor, shape (N,)
        Observed targets.
    reduction : {"mean", "sum", "none"}

    Returns
    -------
    Tensor
        Mean CRPS (shape ``()``) or per point.

    Examples
    --------
    >>> round(crps_gaussian(torch.zeros(1), torch.ones(1), torch.zeros(1)).item(), 6)
    0.233695
    """
    loc, scale, y = _common_float(loc=loc, scale=scale, y=y)
    return crps_gaussian_mixture(loc.unsqueeze(0), scale.unsqueeze(0), y, reduction=reduction)


def crps_gaussian_mixture(loc: Any, scale: Any, y: Any, *, reduction: str = "mean") -> torch.Tensor:
    """Continuous ranked probability score of an equal-weight Gaussian mixture (closed form).

    ``CRPS(F, y) = E|X - y| - 0.5 E|X - X'|`` with ``X, X'`` independent draws of
    ``F = (1/S) sum_s Normal(loc_s, scale_s^2)``; both expectations are sums of
    ``E|Normal(mu, sigma^2)| = sigma sqrt(2/pi) exp(-mu^2 / (2 sigma^2)) + mu (1 - 2 Phi(-mu/sigma))``
    (Grimit et al., 2006). Exact, no Monte Carlo.

    Parameters
    ----------
    loc : Tensor, shape (S, N)
        Predictive mean of each draw (``N`` may be any batch shape).
    scale : Tensor, broadcastable to (S, N)
        Predictive standard deviation of each draw (> 0).
    y : Tensor, shape (N,)
        Observed targets.
    reduction : {"mean", "sum", "none"}

    Returns
    -------
    Tensor
        Mean CRPS (shape ``()``) or per point.

    Notes
    -----
    The pairwise term costs ``S (S - 1) / 2`` evaluations per point (about 8 s for S = 500,
    N = 2000 on one CPU core); it is computed in blocks of draws so memory stays near ``2^20``
    elements. For thousands of draws and many points, thin the draws.

    Examples
    --------
    >>> loc = torch.tensor([[-1.0], [1.0]]); scale = torch.full((2, 1), 0.5)
    >>> round(crps_gaussian_mixture(loc, scale, torch.zeros(1)).item(), 4)
    0.3672
    """
    _check_reduction(reduction)
    loc, scale, y = _mixture_inputs(loc, scale, y)
    s = loc.shape[0]
    loc2 = loc.reshape(s, -1)
    var2 = scale.reshape(s, -1).pow(2)
    y2 = y.reshape(-1)
    term1 = _expected_abs_normal(loc2 - y2, var2.sqrt()).mean(0)
    # sum_{s,t} E|X_s - X_t| = sum_s 2 sigma_s sqrt(2/pi) ... diagonal (mu = 0, variance 2 sigma_s^2)
    # plus twice the strict upper triangle, evaluated in blocks of rows.
    term2 = (2.0 * _INV_SQRT_PI) * var2.sqrt().sum(0)
    block = max(1, _PAIR_BLOCK // max(1, s * y2.numel()))
    cols = torch.arange(s, device=loc2.device)
    for i in range(0, s - 1, block):
        j = min(i + block, s - 1)
        rows = torch.arange(i, j, device=loc2.device)
        upper = (cols[None, i + 1:] > rows[:, None]).to(loc2.dtype)[..., None]  # (b, S-i-1, 1)
        li, vi = loc2[i:j, None], var2[i:j, None]  # (b, 1, M)
        pair = _expected_abs_normal(li - loc2[None, i + 1:], (vi + var2[None, i + 1:]).sqrt())
        term2 = term2 + 2.0 * (upper * pair).sum((0, 1))
    out = term1 - 0.5 * term2 / (s * s)
    return _reduce(out.reshape(y.shape), reduction)


def crps_samples(y_draws: Any, y: Any, *, fair: bool = False, reduction: str = "mean") -> torch.Tensor:
    """Continuous ranked probability score estimated from predictive draws.

    Energy form ``(1/S) sum_s |x_s - y| - 1/(2 S^2) sum_{s,t} |x_s - x_t|``, the pairwise sum
    computed from the sorted draws in ``O(S log S)`` as ``2 sum_i (2i - S - 1) x_(i)``.

    Parameters
    ----------
    y_draws : Tensor, shape (S, N)
        Predictive draws (``N`` may be any batch shape).
    y : Tensor, shape (N,)
        Observed targets.
    fair : bool
        ``False`` (default) gives the CRPS of the empirical distribution of the draws (the
        usual "ensemble CRPS", e.g. ``properscoring.crps_ensemble``), biased upward by
        ``E|X - X'| / (2S)`` as an estimate of the CRPS of the distribution they come from.
        ``True`` divides the pairwise term by ``S (S - 1)`` instead of ``S^2``: unbiased for
        that distribution's CRPS (needs ``S >= 2``).
    reduction : {"mean", "sum", "none"}

    Returns
    -------
    Tensor
        Mean CRPS (shape ``()``) or per point.

    Examples
    --------
    >>> draws = torch.tensor([[0.0], [2.0]])  # mean |x - 1| = 1, pairwise term 2 * 2 / (2 * 4)
    >>> crps_samples(draws, torch.ones(1)).item()
    0.5
    """
    _check_reduction(reduction)
    draws, y = _common_float(y_draws=y_draws, y=y)
    _check_draws(draws, y, "y_draws")
    s = draws.shape[0]
    if fair and s < 2:
        raise ValueError("crps_samples(fair=True) needs at least 2 draws")
    term1 = (draws - y).abs().mean(0)
    sorted_draws = draws.sort(dim=0).values
    shape = (s,) + (1,) * y.dim()
    weight = (2 * torch.arange(1, s + 1, dtype=draws.dtype, device=draws.device) - s - 1).reshape(shape)
    pair_sum = 2.0 * (weight * sorted_draws).sum(0)  # sum_{s,t} |x_s - x_t|
    denom = s * (s - 1) if fair else s * s
    return _reduce(term1 - 0.5 * pair_sum / denom, reduction)


def gaussian_mixture_cdf(loc: Any, scale: Any, x: Any) -> torch.Tensor:
    """CDF of an equal-weight Gaussian mixture, ``(1/S) sum_s Phi((x - loc_s) / scale_s)``.

    Parameters
    ----------
    loc : Tensor, shape (S, N)
    scale : Tensor, broadcastable to (S, N), > 0
    x : Tensor, shape (N,)
        Points at which to evaluate the CDF (one per column).

    Returns
    -------
    Tensor, shape (N,)

    Examples
    --------
    >>> gaussian_mixture_cdf(torch.tensor([[-1.0], [1.0]]), torch.ones(2, 1), torch.zeros(1)).item()
    0.5
    """
    loc, scale, x = _mixture_inputs(loc, scale, x)
    return torch.special.ndtr((x - loc) / scale).mean(0)


def gaussian_mixture_quantile(loc: Any, scale: Any, q: float | Sequence[float] | torch.Tensor,
                              *, max_iter: int = 100) -> torch.Tensor:
    """Quantiles of an equal-weight Gaussian mixture by bisection on its CDF.

    The ``q``-quantile of the mixture lies between the smallest and the largest component
    ``q``-quantile ``loc_s + scale_s Phi^{-1}(q)``, which is the starting bracket; bisection
    (in float64) stops when the bracket no longer shrinks, so the result is the quantile to
    machine precision.

    Parameters
    ----------
    loc : Tensor, shape (S, N)
    scale : Tensor, broadcastable to (S, N), > 0
    q : float or sequence of Q floats in (0, 1)
    max_iter : int
        Upper bound on bisection steps (about 60 suffice in float64).

    Returns
    -------
    Tensor, shape (N,) for a float ``q``, else (Q, N); dtype of ``loc``.

    Examples
    --------
    >>> loc = torch.tensor([[-1.0], [1.0]]); scale = torch.ones(2, 1)
    >>> gaussian_mixture_quantile(loc, scale, [0.5, 0.975]).double().abs().round(decimals=4).tolist()
    [[0.0], [2.6461]]
    """
    scalar_q = isinstance(q, (int, float))
    qs = _check_levels(q, "q")
    loc_t = _as_float(loc, "loc")
    out_dtype = loc_t.dtype
    loc, scale, _ = _mixture_inputs(loc_t.double(), scale, loc_t.new_zeros(loc_t.shape[1:], dtype=torch.float64))
    scale = scale.double()
    outs = []
    for qi in qs.tolist():
        comp = loc + scale * torch.special.ndtri(loc.new_tensor(qi))
        lo, hi = comp.min(0).values, comp.max(0).values
        for _ in range(max_iter):
            mid = 0.5 * (lo + hi)
            if bool(((mid <= lo) | (mid >= hi)).all()):
                break
            below = torch.special.ndtr((mid - loc) / scale).mean(0) < qi
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        outs.append(0.5 * (lo + hi))
    out = torch.stack(outs).to(out_dtype)
    return out[0] if scalar_q else out


def _draw_quantiles(draws: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """Linear-interpolation quantiles along dim 0 (NumPy's default), shape (Q, ...)."""
    s = draws.shape[0]
    srt = draws.sort(dim=0).values
    pos = qs.to(device=draws.device, dtype=torch.float64) * (s - 1)
    lo = pos.floor().long().clamp(0, s - 1)
    hi = (lo + 1).clamp(max=s - 1)
    frac = (pos - lo).to(draws.dtype).reshape((-1,) + (1,) * (draws.dim() - 1))
    return srt[lo] + frac * (srt[hi] - srt[lo])


def central_interval(level: float | Sequence[float] | torch.Tensor, *, y_draws: Any = None,
                     loc: Any = None, scale: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Central predictive interval(s) ``[F^{-1}((1-p)/2), F^{-1}((1+p)/2)]``.

    From draws by linear-interpolation quantiles (NumPy's default), from a Gaussian mixture
    by bisection on its CDF (:func:`gaussian_mixture_quantile`).

    Parameters
    ----------
    level : float or sequence of L floats in (0, 1)
        Nominal coverage ``p``.
    y_draws : Tensor, shape (S, N), optional
        Predictive draws; or
    loc, scale : Tensor, shape (S, N), optional
        Per-draw Gaussian parameters of a mixture predictive.

    Returns
    -------
    (lower, upper) : Tensors, shape (N,) for a float ``level``, else (L, N)

    Examples
    --------
    >>> lo, hi = central_interval(0.5, y_draws=torch.arange(5.0)[:, None])
    >>> lo.item(), hi.item()
    (1.0, 3.0)
    """
    scalar = isinstance(level, (int, float))
    lv = _check_levels(level, "level")
    qs = torch.cat([(1 - lv) / 2, (1 + lv) / 2])
    if (y_draws is None) == (loc is None and scale is None):
        raise ValueError("give the predictive either as y_draws=(S, N) or as loc=(S, N) and "
                         "scale=(S, N), not both and not neither")
    if y_draws is not None:
        draws = _as_float(y_draws, "y_draws")
        if draws.dim() < 1:
            raise ValueError("y_draws: expected shape (S, N) with a leading draw dimension")
        qv = _draw_quantiles(draws, qs)
    else:
        if loc is None or scale is None:
            raise ValueError("a Gaussian-mixture predictive needs both loc and scale")
        qv = gaussian_mixture_quantile(loc, scale, qs)
    n = lv.numel()
    lower, upper = qv[:n], qv[n:]
    return (lower[0], upper[0]) if scalar else (lower, upper)


def pit(y: Any, *, y_draws: Any = None, loc: Any = None, scale: Any = None) -> torch.Tensor:
    """Probability integral transform ``PIT_i = F_i(y_i)`` of each observation.

    Under a calibrated predictive the PIT values are uniform on (0, 1).

    Parameters
    ----------
    y : Tensor, shape (N,)
        Observed targets.
    y_draws : Tensor, shape (S, N), optional
        Predictive draws. The PIT is the mid-rank ``(r_i + 1/2) / (S + 1)`` with
        ``r_i = #{s: x_s < y_i} + #{s: x_s = y_i} / 2``: if ``y_i`` is exchangeable with the
        draws, ``r_i`` is uniform on ``{0, ..., S}`` and this PIT is symmetric about 1/2.
    loc, scale : Tensor, shape (S, N), optional
        Per-draw Gaussian parameters; the PIT is the mixture CDF at ``y``.

    Returns
    -------
    Tensor, shape (N,)

    Examples
    --------
    >>> pit(torch.zeros(1), loc=torch.zeros(1, 1), scale=torch.ones(1, 1)).item()
    0.5
    >>> pit(torch.tensor([1.5]), y_draws=torch.arange(3.0)[:, None]).item()  # r = 2 of S = 3
    0.625
    """
    y, draws, loc, scale = _predictive(y, y_draws, loc, scale)
    if draws is not None:
        rank = (draws < y).sum(0).to(y.dtype) + 0.5 * (draws == y).sum(0).to(y.dtype)
        return (rank + 0.5) / (draws.shape[0] + 1)
    return torch.special.ndtr((y - loc) / scale).mean(0)


def interval_coverage(y: Any, *, y_draws: Any = None, loc: Any = None, scale: Any = None,
                      levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95)) -> dict[float, torch.Tensor]:
    """Observed fraction of targets inside the central predictive intervals.

    Parameters
    ----------
    y : Tensor, shape (N,)
        Observed targets.
    y_draws : Tensor, shape (S, N), optional
        Predictive draws: intervals from their linear-interpolation quantiles; or
    loc, scale : Tensor, shape (S, N), optional
        Per-draw Gaussian parameters: central intervals of the mixture itself (not of a
        moment-matched Gaussian). ``y`` lies in the central ``p`` interval
        ``[F^{-1}((1-p)/2), F^{-1}((1+p)/2)]`` of a continuous ``F`` exactly when
        ``|F(y) - 1/2| <= p/2``, which is how it is tested (one CDF evaluation per point, in
        float64); the endpoints themselves come from :func:`central_interval` (bisection).
    levels : sequence of floats in (0, 1)
        Nominal coverages.

    Returns
    -------
    dict of float to Tensor (shape ())
        ``{level: observed coverage}``; a calibrated predictive gives about ``level`` (binomial
        standard error ``sqrt(level (1 - level) / N)``).

    Examples
    --------
    >>> y = torch.tensor([-2.5, -0.5, 0.1, 0.3, 1.5])
    >>> cov = interval_coverage(y, loc=torch.zeros(1, 5), scale=torch.ones(1, 5), levels=(0.5, 0.95))
    >>> {k: round(v.item(), 4) for k, v in cov.items()}  # |y| <= 0.674: 3 of 5; |y| <= 1.96: 4 of 5
    {0.5: 0.6, 0.95: 0.8}
    """
    y, draws, loc, scale = _predictive(y, y_draws, loc, scale)
    lv = _check_levels(levels)
    if draws is not None:
        lower, upper = central_interval(lv, y_draws=draws)
        inside = (lower <= y) & (y <= upper)
    else:
        # Same as testing y against the bisection interval of central_interval(), without
        # the ~50 CDF evaluations per endpoint: F(y) is computed once.
        u = torch.special.ndtr((y.double() - loc.double()) / scale.double()).mean(0)
        inside = (u - 0.5).abs() <= lv.to(u.device).reshape((-1,) + (1,) * u.dim()) / 2
    inside = inside.reshape(lv.numel(), -1).to(y.dtype).mean(-1)
    return {float(p): inside[i] for i, p in enumerate(lv.tolist())}


def regression_calibration_curve(y: Any, *, y_draws: Any = None, loc: Any = None, scale: Any = None,
                                 levels: Sequence[float] | torch.Tensor | None = None,
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected versus observed coverage of central intervals over a grid of levels (PIT-based).

    ``observed(p) = mean_i 1[|PIT_i - 1/2| <= p/2]`` with ``PIT_i = F_i(y_i)`` (see :func:`pit`);
    a calibrated predictive lies on the diagonal. Points above it mean too-wide intervals
    (under-confident), below it too-narrow ones (over-confident).

    Parameters
    ----------
    y : Tensor, shape (N,)
    y_draws : Tensor, shape (S, N), optional
    loc, scale : Tensor, shape (S, N), optional
        The predictive, as draws or as a Gaussian mixture.
    levels : sequence of L floats in [0, 1], optional
        Default ``0.05, 0.10, ..., 0.95``.

    Returns
    -------
    (expected, observed) : Tensors, shape (L,)

    Examples
    --------
    >>> y = torch.tensor([-2.5, -0.5, 0.1, 0.3, 1.5])
    >>> exp, obs = regression_calibration_curve(y, loc=torch.zeros(1, 5), scale=torch.ones(1, 5),
    ...                                         levels=[0.5, 0.9])
    >>> [round(v, 4) for v in obs.tolist()]  # |PIT - 1/2| <= 0.25 for 3 of 5, <= 0.45 for 4 of 5
    [0.6, 0.8]
    """
    p = pit(y, y_draws=y_draws, loc=loc, scale=scale).reshape(-1)
    if levels is None:
        levels = torch.arange(1, 20, dtype=torch.float64) / 20
    lv = _check_levels(levels, closed=True).to(device=p.device)
    observed = ((p.double() - 0.5).abs()[None] <= lv[:, None] / 2).to(p.dtype).mean(-1)
    return lv.to(p.dtype), observed


# --------------------------------------------------------------------------------------------
# classification


def accuracy(probs: Any, labels: Any) -> torch.Tensor:
    """Fraction of points whose most probable class is the label.

    Parameters
    ----------
    probs : Tensor, shape (N, C)
        Predictive class probabilities (rows sum to one).
    labels : Tensor, shape (N,), integer
        Class indices in ``[0, C)``.

    Returns
    -------
    Tensor, shape ()
        Ties in ``probs`` go to the lowest class index (``argmax``).

    Raises
    ------
    ValueError
        Bad shapes, probabilities outside [0, 1] or rows not summing to 1, labels out of range,
        NaN.
    TypeError
        Non-integer labels.

    Examples
    --------
    >>> accuracy(torch.tensor([[0.9, 0.1], [0.4, 0.6]]), torch.tensor([0, 0])).item()
    0.5
    """
    probs, labels = _check_classification(probs, labels)
    return (probs.argmax(-1) == labels).to(probs.dtype).mean()


def nll(probs: Any, labels: Any, *, eps: float = 1e-12, reduction: str = "mean") -> torch.Tensor:
    """Negative log-likelihood (log loss) ``-log p_{y}`` in nats.

    Parameters
    ----------
    probs : Tensor, shape (N, C)
    labels : Tensor, shape (N,), integer
    eps : float
        ``p_y`` is clamped below at ``eps`` so a confident mistake costs ``-log(eps)``
        (27.6 nats for the default) instead of infinity. scikit-learn's ``log_loss`` clips at
        the dtype's machine epsilon; the two agree whenever ``p_y`` exceeds both.
    reduction : {"mean", "sum", "none"}

    Returns
    -------
    Tensor
        Mean NLL (shape ``()``) or per point ``(N,)``.

    Examples
    --------
    >>> round(nll(torch.tensor([[0.5, 0.5], [0.9, 0.1]]), torch.tensor([0, 0])).item(), 6)
    0.399254
    """
    _check_reduction(reduction)
    if not eps > 0:
        raise ValueError(f"eps: expected a positive float, got {eps!r}")
    probs, labels = _check_classification(probs, labels)
    p_y = probs.gather(-1, labels[:, None]).squeeze(-1)
    return _reduce(-p_y.clamp_min(eps).log(), reduction)


def brier(probs: Any, labels: Any, *, reduction: str = "mean") -> torch.Tensor:
    """Multi-class Brier score ``sum_c (p_c - 1[y = c])^2``, in [0, 2].

    Parameters
    ----------
    probs : Tensor, shape (N, C)
    labels : Tensor, shape (N,), integer
    reduction : {"mean", "sum", "none"}

    Returns
    -------
    Tensor
        Mean over points (shape ``()``) or per point ``(N,)``.

    Notes
    -----
    This is Brier's original multi-class score. For two classes it is **twice**
    ``sklearn.metrics.brier_score_loss(labels, probs[:, 1])``, the binary version
    ``(p_1 - y)^2`` (scikit-learn >= 1.7 gives this one for multi-class input, or with
    ``scale_by_half=False``).

    Examples
    --------
    >>> brier(torch.tensor([[0.8, 0.2], [0.5, 0.5]]), torch.tensor([0, 1])).item()
    0.28999999165534973
    """
    _check_reduction(reduction)
    probs, labels = _check_classification(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(probs.dtype)
    return _reduce((probs - onehot).pow(2).sum(-1), reduction)


def _check_bins(num_bins: int, binning: str) -> None:
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins: expected a positive int, got {num_bins!r}")
    if binning not in _BINNINGS:
        raise ValueError(f"binning: expected one of {_BINNINGS}, got {binning!r}")


def reliability_diagram_data(probs: Any, labels: Any, num_bins: int = 15, *,
                             binning: str = "equal_width") -> dict[str, torch.Tensor]:
    """Per-bin confidence, accuracy and count of the top-label prediction.

    Parameters
    ----------
    probs : Tensor, shape (N, C)
    labels : Tensor, shape (N,), integer
    num_bins : int
        Number of bins ``B``.
    binning : {"equal_width", "adaptive"}
        ``"equal_width"``: bins ``((b-1)/B, b/B]`` of confidence (Guo et al., 2017; a
        confidence of exactly 0 joins the first bin). ``"adaptive"``: equal-mass bins, the
        points sorted by confidence and split into ``B`` groups whose sizes differ by at most
        one (ties split by position in the input, stable sort).

    Returns
    -------
    dict of str to Tensor
        ``edges`` (B+1,): bin boundaries (for adaptive binning 0, midpoints between
        neighbouring groups, 1); ``confidence`` (B,): mean top-label probability per bin;
        ``accuracy`` (B,): fraction correct per bin; ``count`` (B,): points per bin (int64).
        Empty bins have ``count`` 0 and NaN confidence and accuracy.

    Examples
    --------
    >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    >>> d = reliability_diagram_data(probs, torch.tensor([0, 1, 1, 1]), num_bins=2)
    >>> d["count"].tolist(), d["accuracy"].tolist()
    ([0, 4], [nan, 0.75])
    """
    _check_bins(num_bins, binning)
    probs, labels = _check_classification(probs, labels)
    conf, pred = probs.max(-1)
    correct = (pred == labels).to(probs.dtype)
    n = conf.shape[0]
    if binning == "equal_width":
        edges = torch.linspace(0, 1, num_bins + 1, dtype=probs.dtype, device=probs.device)
        idx = (torch.ceil(conf * num_bins).long() - 1).clamp(0, num_bins - 1)
        # ceil() of a product rounds at exact edges: assign by comparing with the edges.
        idx = idx - (conf <= edges[idx]).long() + (conf > edges[idx + 1]).long()
        idx = idx.clamp(0, num_bins - 1)
    else:
        order = torch.sort(conf, stable=True).indices
        idx = torch.empty(n, dtype=torch.long, device=probs.device)
        idx[order] = torch.arange(n, device=probs.device) * num_bins // n
        sc = conf[order]
        bounds = [torch.zeros((), dtype=probs.dtype, device=probs.device)]
        starts = [(b * n + num_bins - 1) // num_bins for b in range(1, num_bins)]  # first pos in bin b
        for st in starts:
            if 0 < st < n:
                bounds.append(0.5 * (sc[st - 1] + sc[st]))
            else:
                bounds.append(sc[min(max(st, 0), n - 1)])
        bounds.append(torch.ones((), dtype=probs.dtype, device=probs.device))
        edges = torch.stack(bounds)
    count = torch.bincount(idx, minlength=num_bins)
    denom = count.to(probs.dtype)
    conf_sum = torch.zeros(num_bins, dtype=probs.dtype, device=probs.device).index_add_(0, idx, conf)
    acc_sum = torch.zeros(num_bins, dtype=probs.dtype, device=probs.device).index_add_(0, idx, correct)
    return {"edges": edges, "confidence": conf_sum / denom, "accuracy": acc_sum / denom,
            "count": count}


def ece(probs: Any, labels: Any, num_bins: int = 15, *, binning: str = "equal_width") -> torch.Tensor:
    """Expected calibration error of the top-label prediction.

    ``ECE = sum_b (n_b / N) |accuracy_b - confidence_b|`` over the bins of
    :func:`reliability_diagram_data`.

    Parameters
    ----------
    probs : Tensor, shape (N, C)
    labels : Tensor, shape (N,), integer
    num_bins : int
    binning : {"equal_width", "adaptive"}
        Equal-width bins on [0, 1], or equal-mass bins (adaptive ECE; Nixon et al., 2019).

    Returns
    -------
    Tensor, shape ()
        In [0, 1]. Even a calibrated model has ECE > 0 from finite-sample (binomial) noise:
        with per-bin variance at most ``1 / (4 n_b)``, Jensen and Cauchy-Schwarz over the bins
        give ``E[ECE] <= sqrt(B / (4 N))`` (about 0.014 for B = 15, N = 20000).

    Examples
    --------
    >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    >>> round(ece(probs, torch.tensor([0, 1, 1, 1]), num_bins=2).item(), 6)  # |0.75 - 0.75|
    0.0
    """
    d = reliability_diagram_data(probs, labels, num_bins, binning=binning)
    count = d["count"]
    nonempty = count > 0
    weight = count[nonempty].to(d["accuracy"].dtype) / count.sum()
    return (weight * (d["accuracy"][nonempty] - d["confidence"][nonempty]).abs()).sum()


def plot_reliability_diagram(probs: Any, labels: Any, num_bins: int = 15, *,
                             binning: str = "equal_width", ax: Any = None) -> Any:
    """Draw a reliability diagram (accuracy per confidence bin against the diagonal).

    Parameters
    ----------
    probs : Tensor, shape (N, C)
    labels : Tensor, shape (N,), integer
    num_bins : int
    binning : {"equal_width", "adaptive"}
    ax : matplotlib Axes, optional
        Axes to draw on. Without one, a new :class:`matplotlib.figure.Figure` is created
        directly (no pyplot, so no GUI backend and no global figure state); reach it through
        ``ax.figure`` (e.g. ``ax.figure.savefig(path)``).

    Returns
    -------
    matplotlib.axes.Axes
        Bars: per-bin accuracy over the bin; red: the gap to the mean confidence of the bin;
        dashed: perfect calibration. The title carries the ECE.

    Examples
    --------
    >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    >>> ax = plot_reliability_diagram(probs, torch.tensor([0, 1, 1, 1]), num_bins=5)
    >>> ax.get_xlabel()
    'confidence'
    """
    from matplotlib.figure import Figure

    d = reliability_diagram_data(probs, labels, num_bins, binning=binning)
    err = ece(probs, labels, num_bins, binning=binning).item()
    edges = d["edges"].detach().double().cpu().numpy()
    acc = d["accuracy"].detach().double().cpu().nan_to_num(0.0).numpy()
    conf = d["confidence"].detach().double().cpu().numpy()
    filled = d["count"].cpu().numpy() > 0
    if ax is None:
        ax = Figure(figsize=(4, 4)).add_subplot()
    left, width = edges[:-1], edges[1:] - edges[:-1]
    ax.bar(left[filled], acc[filled], width=width[filled], align="edge", color="tab:blue",
           edgecolor="black", linewidth=0.5, label="accuracy")
    gap_lo = acc[filled]
    gap = conf[filled] - gap_lo
    ax.bar(left[filled], gap, bottom=gap_lo, width=width[filled], align="edge", color="tab:red",
           alpha=0.3, edgecolor="tab:red", linewidth=0.5, label="gap to confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability ({binning.replace('_', '-')}, {num_bins} bins), ECE = {err:.3f}")
    ax.legend(loc="upper left", fontsize="small")
    return ax


# --------------------------------------------------------------------------------------------
# selective prediction


def accuracy_retention_curve(probs: Any, labels: Any, score: Any = None,
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy on the retained points when only the most confident fraction is kept.

    Points are ranked by ``score`` (higher = more confident, kept first); at retention
    ``k/N`` the ``k`` highest-scoring points are kept and the rest referred elsewhere.
    Points with tied scores are treated as kept in random order and the *expected* accuracy
    is reported (linear within a tie group), so the curve does not depend on input order.

    Parameters
    ----------
    probs : Tensor, shape (N, C)
    labels : Tensor, shape (N,), integer
    score : Tensor, shape (N,), optional
        Confidence score; default ``probs.max(-1)``. For an uncertainty (entropy, mutual
        information) pass its negative.

    Returns
    -------
    (retention, accuracy) : Tensors, shape (N,)
        ``retention = [1/N, 2/N, ..., 1]`` and the accuracy of the retained points.

    Examples
    --------
    >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    >>> r, a = accuracy_retention_curve(probs, torch.tensor([0, 1, 1]))
    >>> [round(v, 4) for v in a.tolist()]  # kept: 0.9 (right), 0.8 (right), 0.6 (wrong)
    [1.0, 1.0, 0.6667]
    """
    probs, labels = _check_classification(probs, labels)
    correct = (probs.argmax(-1) == labels).to(torch.float64)
    n = correct.shape[0]
    if score is None:
        score = probs.max(-1).values
    else:
        score = _as_float(score, "score").to(probs.device)
        if tuple(score.shape) != (n,):
            raise ValueError(f"score: expected shape (N,) = ({n},), got {tuple(score.shape)}")
    order = torch.sort(score, descending=True, stable=True).indices
    s_sorted, c_sorted = score[order], correct[order]
    _, inverse, counts = torch.unique_consecutive(s_sorted, return_inverse=True, return_counts=True)
    group_sum = torch.zeros(counts.shape[0], dtype=torch.float64, device=probs.device)
    group_sum.index_add_(0, inverse, c_sorted)
    ends = counts.cumsum(0)
    starts = ends - counts
    cum_before = torch.cat([group_sum.new_zeros(1), group_sum.cumsum(0)[:-1]])
    k = torch.arange(1, n + 1, dtype=torch.float64, device=probs.device)
    # Expected correct count among the first k: full groups before, then a share of this one.
    expected = cum_before[inverse] + (k - starts[inverse]) * group_sum[inverse] / counts[inverse]
    return (k / n).to(probs.dtype), (expected / k).to(probs.dtype)


def area_under_retention_curve(probs: Any, labels: Any, score: Any = None) -> torch.Tensor:
    """Area under the accuracy-retention curve, ``(1/N) sum_k accuracy(k/N)``.

    Higher is better: a score that ranks every correct prediction above every wrong one
    reaches the maximum for the given accuracy; a score unrelated to correctness gives about
    the overall accuracy. ``1 - area`` is the area under the risk-coverage curve (AURC,
    Geifman et al., 2019) with the 0-1 risk.

    Parameters
    ----------
    probs : Tensor, shape (N, C)
    labels : Tensor, shape (N,), integer
    score : Tensor, shape (N,), optional
        Confidence score (higher = kept first); default ``probs.max(-1)``.

    Returns
    -------
    Tensor, shape ()

    Examples
    --------
    >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    >>> round(area_under_retention_curve(probs, torch.tensor([0, 1, 1])).item(), 4)  # (1+1+2/3)/3
    0.8889
    """
    _, acc = accuracy_retention_curve(probs, labels, score)
    return acc.mean()
