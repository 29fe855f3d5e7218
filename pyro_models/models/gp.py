"""Gaussian processes: exact regression, sparse (inducing-point) regression, classification.

Three registered models share one kernel language and one treatment of hyperparameters:

- ``gp_regression`` (:class:`GPRegression`): the exact GP with a Gaussian likelihood. The
  latent function is integrated out, so the observed site is the marginal likelihood
  ``y ~ MultivariateNormal(m, K + noise I)`` over all N points (O(N^3); no minibatches).
- ``sparse_gp_regression`` (:class:`SparseGPRegression`): M inducing inputs ``Z`` (learned
  point estimates) and inducing values ``u`` (a global latent site, so the guide learns
  ``q(u)`` as in Hensman, Fusi & Lawrence 2013); each point's likelihood integrates its
  ``f_i`` over ``p(f_i | u)`` (the FITC construction), so it factorises over a ``"data"``
  plate and ``SVIConfig(batch_size=...)`` gives unbiased minibatch ELBOs for N in the
  hundreds of thousands.
- ``gp_classifier`` (:class:`GPClassifier`): the same sparse construction with a Bernoulli
  likelihood for binary labels.

Kernels are named by strings: ``"rbf"``, ``"matern12"``, ``"matern32"``, ``"matern52"``,
``"periodic"``, ``"linear"``, joined by ``"+"`` and ``"*"`` (``*`` binds tighter), e.g.
``"rbf+linear"`` or ``"rbf*periodic+matern12"``. Components are numbered in order of
appearance and their hyperparameters are sample sites ``"kernel.<i>.lengthscale"``,
``"kernel.<i>.period"`` and ``"kernel.<i>.variance"``; each product term has one variance
(on its first factor), since the variances of a product's factors are not separately
identified. Formulas (``r`` the distance scaled by the lengthscale(s), ``s^2`` the variance)
follow :mod:`pyro.contrib.gp.kernels`:

- rbf: ``s^2 exp(-r^2 / 2)``; matern12: ``s^2 exp(-r)``;
  matern32: ``s^2 (1 + sqrt(3) r) exp(-sqrt(3) r)``;
  matern52: ``s^2 (1 + sqrt(5) r + 5 r^2 / 3) exp(-sqrt(5) r)``;
- periodic: ``s^2 exp(-2 sum_d sin^2(pi (x_d - z_d) / period) / l_d^2)``;
- linear: ``s^2 x . z``.

The kernels are computed here rather than through ``pyro.contrib.gp.kernels``: those modules
keep hyperparameters as module state and use 2-D matrix algebra, while these models need
hyperparameters as ordinary sample sites (visible to NUTS and autoguides) and kernel
matrices that broadcast over leading batch dimensions of the hyperparameters, the way
``FitResult.predict`` evaluates every posterior draw in one pass. The test suite checks
that both give the same matrices.

Hyperparameters (``"kernel.*"``, ``"noise"``, ``"mean"``) have priors (``priors="default"``:
log-normal for positive parameters, assuming standardised inputs and outputs), flat improper
priors (``priors=None``: type-II maximum likelihood with ``guide="delta"``), or fixed values
(``fixed={...}``). MAP is ``fit(..., SVIConfig(...), guide="delta")``, fully Bayesian is
``fit(..., MCMCConfig(...))``.

Examples
--------
>>> import torch
>>> from pyro_models.models.gp import GPRegression
>>> model = GPRegression("rbf", fixed={"kernel.0.lengthscale": 1.0, "kernel.0.variance": 1.0,
...                                    "noise": 0.01})
>>> x = torch.tensor([[-1.0], [0.0], [1.0]], dtype=torch.float64)
>>> y = torch.tensor([-0.8, 0.1, 0.9], dtype=torch.float64)
>>> post = model.posterior(x, y, torch.tensor([[0.5]], dtype=torch.float64))
>>> round(float(post.loc[0]), 3), round(float(post.covariance_matrix[0, 0]), 4)
(0.626, 0.025)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from ..data import DataSpec, Field, check_binary, to_tensor
from ..errors import DataValidationError
from ..evaluation.uncertainty import decompose_regression, entropy
from . import register
from .base import BayesianModel

__all__ = [
    "GPRegression",
    "SparseGPRegression",
    "GPClassifier",
    "KERNELS",
    "parse_kernel",
    "kernel_matrix",
    "DEFAULT_PRIORS",
]

#: Names of the kernel components that a kernel string may combine with "+" and "*".
KERNELS: tuple[str, ...] = ("rbf", "matern12", "matern32", "matern52", "periodic", "linear")
_STATIONARY = ("rbf", "matern12", "matern32", "matern52")
_HAS_LENGTHSCALE = _STATIONARY + ("periodic",)

#: Priors used by ``priors="default"``, per kind of hyperparameter: ``[family, *arguments]``.
#: ``noise`` is the noise variance. They assume inputs and outputs scaled to unit spread.
DEFAULT_PRIORS: dict[str, tuple[Any, ...]] = {
    "lengthscale": ("lognormal", 0.0, 1.0),
    "variance": ("lognormal", 0.0, 1.0),
    "period": ("lognormal", 0.0, 1.0),
    "noise": ("lognormal", -2.0, 1.0),
    "mean": ("normal", 0.0, 1.0),
}
_POSITIVE_KINDS = ("lengthscale", "variance", "period", "noise")

# family -> (argument names, argument must be positive?, support)
_FAMILIES: dict[str, tuple[tuple[str, ...], tuple[bool, ...], str]] = {
    "lognormal": (("loc", "scale"), (False, True), "positive"),
    "gamma": (("concentration", "rate"), (True, True), "positive"),
    "inverse_gamma": (("concentration", "rate"), (True, True), "positive"),
    "half_normal": (("scale",), (True,), "positive"),
    "half_cauchy": (("scale",), (True,), "positive"),
    "normal": (("loc", "scale"), (False, True), "real"),
    "flat": ((), (), "any"),
}
_MEANS = ("zero", "constant")
# Gauss-Hermite nodes for E[sigmoid(f)], f ~ Normal(a, b): error < 1e-5 for b <= 16, 1e-2 at
# b = 200 (the sigmoid's poles at +-i pi slow convergence for wide Gaussians).
_GH_POINTS = 64
_LINKS = ("logit", "probit")


# ============================================================================ kernel strings


def parse_kernel(spec: str) -> tuple[tuple[str, ...], ...]:
    """Parse a kernel string into a sum of products of component names.

    Parameters
    ----------
    spec : str
        Component names from :data:`KERNELS` joined by ``"+"`` and ``"*"``; ``"*"`` binds
        tighter. Case and spaces are ignored.

    Returns
    -------
    tuple of tuple of str
        One tuple of factor names per summand.

    Raises
    ------
    TypeError
        ``spec`` is not a string.
    ValueError
        An unknown or empty component.

    Examples
    --------
    >>> parse_kernel("rbf*periodic + linear")
    (('rbf', 'periodic'), ('linear',))
    """
    if not isinstance(spec, str):
        raise TypeError(f"kernel must be a string such as 'rbf' or 'rbf+linear', got {type(spec).__name__}")
    terms = []
    for term in spec.lower().split("+"):
        factors = tuple(f.strip() for f in term.split("*"))
        for f in factors:
            if f not in KERNELS:
                what = "an empty component" if not f else f"unknown component {f!r}"
                raise ValueError(
                    f"kernel {spec!r}: {what}; expected names from {list(KERNELS)} joined by "
                    f"'+' and '*' (e.g. 'rbf+linear', 'rbf*periodic')"
                )
        terms.append(factors)
    return tuple(terms)


def _hyper_layout(terms: tuple[tuple[str, ...], ...]) -> list[tuple[str, str, int]]:
    """``(site name, kind, component index)`` for every kernel hyperparameter, in site order."""
    out = []
    i = 0
    for term in terms:
        for j, comp in enumerate(term):
            if j == 0:
                out.append((f"kernel.{i}.variance", "variance", i))
            if comp in _HAS_LENGTHSCALE:
                out.append((f"kernel.{i}.lengthscale", "lengthscale", i))
            if comp == "periodic":
                out.append((f"kernel.{i}.period", "period", i))
            i += 1
    return out


# ============================================================================ kernel algebra


def _safe_sqrt(r2: Tensor) -> Tensor:
    # sqrt has an infinite derivative at 0 (the diagonal of K(x, x)); the double where keeps
    # values exact and gradients finite.
    pos = r2 > 0
    return torch.where(pos, torch.where(pos, r2, torch.ones_like(r2)).sqrt(), torch.zeros_like(r2))


def _sq_dist(x: Tensor, z: Tensor, ls: Tensor, same: bool) -> Tensor:
    ls = ls.unsqueeze(-2)  # batch + (1, D or 1)
    xs, zs = x / ls, z / ls
    r2 = xs.pow(2).sum(-1).unsqueeze(-1) + zs.pow(2).sum(-1).unsqueeze(-2) - 2 * xs @ zs.transpose(-1, -2)
    r2 = r2.clamp_min(0)
    if same:  # exact zeros on the diagonal (the expansion leaves round-off there)
        eye = torch.eye(x.shape[-2], dtype=x.dtype, device=x.device)
        r2 = r2 * (1 - eye)
    return r2


def _factor(comp: str, p: Mapping[str, Tensor], x: Tensor, z: Tensor, same: bool) -> Tensor:
    if comp == "linear":
        return x @ z.transpose(-1, -2)
    if comp == "periodic":
        ls = p["lengthscale"].unsqueeze(-2).unsqueeze(-2)  # batch + (1, 1, D or 1)
        period = p["period"][..., None, None, None]
        d = x.unsqueeze(-2) - z.unsqueeze(-3)  # (N, M, D)
        s = torch.sin(math.pi * d / period) / ls
        return torch.exp(-2 * s.pow(2).sum(-1))
    r2 = _sq_dist(x, z, p["lengthscale"], same)
    if comp == "rbf":
        return torch.exp(-0.5 * r2)
    r = _safe_sqrt(r2)
    if comp == "matern12":
        return torch.exp(-r)
    if comp == "matern32":
        s3 = math.sqrt(3.0) * r
        return (1 + s3) * torch.exp(-s3)
    s5 = math.sqrt(5.0) * r
    return (1 + s5 + s5.pow(2) / 3) * torch.exp(-s5)


def _split_params(terms, hp: Mapping[str, Tensor]) -> list[dict[str, Tensor]]:
    comps: list[dict[str, Tensor]] = []
    i = 0
    for term in terms:
        for _ in term:
            comps.append({k.split(".")[-1]: v for k, v in hp.items() if k.startswith(f"kernel.{i}.")})
            i += 1
    return comps


def kernel_matrix(terms: tuple[tuple[str, ...], ...], hp: Mapping[str, Tensor], x: Tensor,
                  z: Tensor | None = None) -> Tensor:
    """Covariance matrix ``k(x, z)`` of a parsed kernel, broadcast over hyperparameter batches.

    Parameters
    ----------
    terms : tuple of tuple of str
        A parsed kernel (:func:`parse_kernel`).
    hp : dict of str to Tensor
        ``"kernel.<i>.<name>"`` values: variances and periods of shape ``batch``, lengthscales
        of shape ``batch + (D,)`` (ARD) or ``batch + (1,)``.
    x : Tensor (N, D)
    z : Tensor (M, D), optional
        Defaults to ``x`` (then the diagonal distances are exactly zero).

    Returns
    -------
    Tensor ``batch + (N, M)``
    """
    same = z is None
    z = x if z is None else z
    comps = _split_params(terms, hp)
    total = None
    i = 0
    for term in terms:
        prod = comps[i]["variance"][..., None, None]
        for comp in term:
            prod = prod * _factor(comp, comps[i], x, z, same)
            i += 1
        total = prod if total is None else total + prod
    return total


def _kernel_diag(terms, hp: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """``diag k(x, x)``: ``batch + (N,)``."""
    comps = _split_params(terms, hp)
    total = None
    i = 0
    for term in terms:
        prod = comps[i]["variance"][..., None]
        for comp in term:
            if comp == "linear":
                prod = prod * x.pow(2).sum(-1)
            else:
                prod = prod * torch.ones_like(x[..., 0])
            i += 1
        total = prod if total is None else total + prod
    return total


def _cholesky(a: Tensor, jitter: float, *, always: bool = False) -> Tensor:
    """Cholesky factor of a batch of PD matrices, with diagonal jitter where needed.

    Without ``always``, matrices that factorise are left exact; those that fail get
    ``jitter * mean(diag)`` added, ten times more on each of up to six retries; a matrix that still
    fails (NaN hyperparameters) gives a NaN factor, which SVI reports as a non-finite loss and
    NUTS as a divergence.
    """
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    scale = a.diagonal(dim1=-2, dim2=-1).mean(-1).abs().detach().clamp_min(torch.finfo(a.dtype).tiny)
    extra = jitter * scale if always else torch.zeros_like(scale)
    for _ in range(7):
        chol, info = torch.linalg.cholesky_ex(a + extra[..., None, None] * eye)
        failed = info > 0
        if not bool(failed.any()):
            return chol
        extra = torch.where(failed, torch.where(extra > 0, 10 * extra, jitter * scale), extra)
    return torch.where(failed[..., None, None], torch.full_like(chol, float("nan")), chol)


def _global(t: Tensor, event_dim: int, nesting: int) -> Tensor:
    """A global site's value with the singleton plate-aligned batch dims removed.

    Under a vectorising plate (posterior draws, ELBO particles) a scalar global site has shape
    ``(S,) + (1,) * nesting``; the model computes with batch ``(S,)`` and appends its own
    matrix/plate dims.
    """
    batch_ndim = t.dim() - event_dim
    keep = max(batch_ndim - nesting, 0)
    dropped = t.shape[keep:batch_ndim]
    if any(d != 1 for d in dropped):
        raise ValueError(
            f"a global hyperparameter has batch shape {tuple(t.shape[:batch_ndim])}, whose last "
            f"{nesting} dim(s) should be 1 (the model's plates)"
        )
    return t.reshape(t.shape[:keep] + t.shape[batch_ndim:])


def _plate_layout(t: Tensor, event_dim: int, nesting: int) -> Tensor:
    """Inverse of :func:`_global`: insert singleton plate dims before the event dims."""
    if t.dim() == event_dim or nesting == 0:
        return t
    idx = t.dim() - event_dim
    return t.reshape(t.shape[:idx] + (1,) * nesting + t.shape[idx:])


# ============================================================================ priors


def _check_prior(key: str, value: Any) -> tuple[Any, ...] | None:
    if value is None or value == "flat" or (isinstance(value, (list, tuple)) and list(value) == ["flat"]):
        return None
    if not isinstance(value, (list, tuple)) or not value or not isinstance(value[0], str):
        raise ValueError(
            f"priors[{key!r}] must be None (flat) or [family, *arguments] with family in "
            f"{sorted(_FAMILIES)}, e.g. ['lognormal', 0.0, 1.0]; got {value!r}"
        )
    family, args = value[0], tuple(value[1:])
    if family not in _FAMILIES:
        raise ValueError(f"priors[{key!r}]: unknown family {family!r}; expected one of {sorted(_FAMILIES)}")
    names, positive, _ = _FAMILIES[family]
    if len(args) != len(names):
        raise ValueError(f"priors[{key!r}]: {family} takes arguments {list(names)}, got {list(args)}")
    for n, pos, a in zip(names, positive, args):
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or (pos and a <= 0):
            what = "positive number" if pos else "number"
            raise ValueError(f"priors[{key!r}]: {family} {n} must be a finite {what}, got {a!r}")
    return (family,) + tuple(float(a) for a in args)


def _make_prior(spec: tuple[Any, ...] | None, kind: str, shape: tuple[int, ...], ref: Tensor) -> dist.Distribution:
    positive = kind in _POSITIVE_KINDS
    if spec is None:
        support = constraints.positive if positive else constraints.real
        # Event dimensions in the support too, as biject_to-based guides (AutoStructured) check.
        return dist.ImproperUniform(constraints.independent(support, len(shape)), (), shape)
    family, args = spec[0], [torch.as_tensor(a, dtype=ref.dtype, device=ref.device) for a in spec[1:]]
    d = {
        "lognormal": dist.LogNormal, "gamma": dist.Gamma, "inverse_gamma": dist.InverseGamma,
        "half_normal": dist.HalfNormal, "half_cauchy": dist.HalfCauchy, "normal": dist.Normal,
    }[family](*args)
    return d.expand(shape).to_event(len(shape)) if shape else d


# ============================================================================ shared base


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive float, got {value!r}")
    return float(value)


class _GPBase(BayesianModel):
    """Kernel, hyperparameter sites, priors and fixed values shared by the GP models."""

    _has_noise: ClassVar[bool] = True

    def __init__(self, kernel: str = "rbf", *, ard: bool = False, priors: Any = "default",
                 fixed: Mapping[str, Any] | None = None, mean: str = "zero", jitter: float = 1e-6) -> None:
        super().__init__()
        self.kernel = kernel
        self.terms = parse_kernel(kernel)
        if not isinstance(ard, bool):
            raise TypeError(f"ard must be a bool, got {ard!r}")
        self.ard = ard
        if mean not in _MEANS:
            raise ValueError(f"mean must be one of {list(_MEANS)}, got {mean!r}")
        self.mean = mean
        self.jitter = _positive_float("jitter", jitter)
        layout = _hyper_layout(self.terms)
        if self._has_noise:
            layout.append(("noise", "noise", -1))
        if mean == "constant":
            layout.append(("mean", "mean", -1))
        self._layout = layout
        names = [n for n, _, _ in layout]
        self._priors = self._resolve_priors(priors, names)
        self._fixed = self._resolve_fixed(fixed, names)

    # ------------------------------------------------------------------ configuration
    def _resolve_priors(self, priors: Any, names: list[str]) -> dict[str, tuple[Any, ...] | None]:
        kinds = {n: k for n, k, _ in self._layout}
        if priors is None:
            return {n: None for n in names}
        base = {k: _check_prior(k, v) for k, v in DEFAULT_PRIORS.items()}
        if isinstance(priors, str):
            if priors != "default":
                raise ValueError(f"priors must be 'default', None (flat) or a dict, got {priors!r}")
            return {n: base[kinds[n]] for n in names}
        if not isinstance(priors, Mapping):
            raise TypeError(f"priors must be 'default', None (flat) or a dict, got {type(priors).__name__}")
        unknown = sorted(set(priors) - set(DEFAULT_PRIORS) - set(names))
        if unknown:
            raise ValueError(
                f"priors: unknown key(s) {unknown}; use a kind {sorted(DEFAULT_PRIORS)} or a site "
                f"name of this model {names}"
            )
        out = {}
        for n in names:
            spec = base[kinds[n]]
            if kinds[n] in priors:
                spec = _check_prior(kinds[n], priors[kinds[n]])
            if n in priors:
                spec = _check_prior(n, priors[n])
            if spec is not None and kinds[n] in _POSITIVE_KINDS and _FAMILIES[spec[0]][2] != "positive":
                raise ValueError(f"prior of {n!r} must have positive support, got {spec[0]!r}")
            if spec is not None and kinds[n] == "mean" and _FAMILIES[spec[0]][2] != "real":
                raise ValueError(f"prior of {n!r} must have real support ('normal' or None), got {spec[0]!r}")
            out[n] = spec
        return out

    def _resolve_fixed(self, fixed: Mapping[str, Any] | None, names: list[str]) -> dict[str, Any]:
        if fixed is None:
            return {}
        if not isinstance(fixed, Mapping):
            raise TypeError(f"fixed must be a dict of site name -> value, got {type(fixed).__name__}")
        unknown = sorted(set(fixed) - set(names))
        if unknown:
            raise ValueError(f"fixed: unknown site(s) {unknown}; this model's hyperparameters are {names}")
        kinds = {n: k for n, k, _ in self._layout}
        out = {}
        for n, v in fixed.items():
            try:
                arr = np.asarray(v, dtype=float)
            except (TypeError, ValueError):
                raise ValueError(f"fixed[{n!r}] must be a number (or a list for ARD lengthscales), got {v!r}") from None
            positive = kinds[n] in _POSITIVE_KINDS
            if arr.ndim > 1 or (arr.ndim == 1 and not (self.ard and kinds[n] == "lengthscale")):
                allowed = "a number or a list (ARD)" if self.ard and kinds[n] == "lengthscale" else "a number"
                raise ValueError(f"fixed[{n!r}] must be {allowed}, got {v!r}")
            if not np.all(np.isfinite(arr)) or (positive and not np.all(arr > 0)):
                raise ValueError(f"fixed[{n!r}] must be finite{' and positive' if positive else ''}, got {v!r}")
            out[n] = arr.tolist()
        return out

    @property
    def hyperparameter_sites(self) -> tuple[str, ...]:
        """Names of the latent hyperparameter sites (fixed ones excluded), in site order."""
        return tuple(n for n, _, _ in self._layout if n not in self._fixed)

    def _shape(self, kind: str, d: int) -> tuple[int, ...]:
        return (d,) if (self.ard and kind == "lengthscale") else ()

    def _hypers(self, x: Tensor, nesting: int, values: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
        """Hyperparameters with batch dims first: sampled, or taken from ``values``."""
        d = x.shape[-1]
        out: dict[str, Tensor] = {}
        for name, kind, _ in self._layout:
            shape = self._shape(kind, d)
            if name in self._fixed:
                v = torch.as_tensor(self._fixed[name], dtype=x.dtype, device=x.device)
                if shape and v.dim() == 0:
                    v = v.expand(shape)
                elif tuple(v.shape) != shape:
                    raise DataValidationError(f"fixed[{name!r}] has {v.numel()} values but x has D={d} columns")
            elif values is not None:
                v = torch.as_tensor(values[name], dtype=x.dtype, device=x.device)
                if shape and tuple(v.shape[-1:]) != shape:
                    raise ValueError(
                        f"hyperparams[{name!r}]: expected trailing shape {shape} (ARD, D={d}), got {tuple(v.shape)}"
                    )
            else:
                v = _global(pyro.sample(name, _make_prior(self._priors[name], kind, shape, x)), len(shape), nesting)
            if kind == "lengthscale" and not shape:
                v = v.unsqueeze(-1)  # kernels take lengthscales as batch + (D or 1,)
            out[name] = v
        return out

    def _check_x(self, x: Tensor, what: str = "x") -> None:
        if x.dim() != 2:
            raise DataValidationError(f"{what}: expected shape (N, D), got {tuple(x.shape)}")

    def _mean(self, hp: Mapping[str, Tensor], ref: Tensor) -> Tensor:
        """Constant mean with batch dims (or a zero scalar)."""
        if self.mean == "constant":
            return hp["mean"]
        return torch.zeros((), dtype=ref.dtype, device=ref.device)

    def _noise(self, hp: Mapping[str, Tensor]) -> Tensor:
        return hp["noise"]

    @property
    def prediction_sites(self) -> tuple[str, ...]:  # type: ignore[override]
        """Sites ``predict()`` also draws: the latent function's conditional moments and noise."""
        extra = ("noise",) if (self._has_noise and "noise" not in self._fixed) else ()
        return ("f_loc", "f_var") + extra

    def _noise_draws(self, draws: Mapping[str, Tensor], like: Tensor) -> Tensor:
        if "noise" in self._fixed:
            return torch.full_like(like, float(self._fixed["noise"]))
        return draws["noise"].reshape((-1,) + (1,) * (like.dim() - 1)).expand_as(like)


def _drawn(value: Tensor, y: Tensor | None) -> bool:
    """Whether the site ``"y"`` was sampled rather than held at the observed ``y``.

    True for the prior predictive (``y is None``) and for ``FitResult.predict()`` without data,
    which releases the observed site; False while fitting and evaluating the likelihood.
    """
    return y is None or value is not y


def _regression_summary(model: _GPBase, draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
    f_loc, f_var = draws["f_loc"], draws["f_var"]
    noise = model._noise_draws(draws, f_loc)
    out = decompose_regression(f_loc, noise.sqrt())
    # Law of total variance over the draws and over f given each draw.
    conditional = f_var.mean(0)
    out["epistemic_var"] = out["epistemic_var"] + conditional
    out["total_var"] = out["total_var"] + conditional
    return out


_XY_FIELDS = (
    Field("x", ("N", "D"), doc="inputs, one row per observation"),
    Field("y", ("N",), observed=True, doc="response"),
)


# ============================================================================ exact GP


@register("gp_regression")
class GPRegression(_GPBase):
    """Exact Gaussian-process regression with a Gaussian likelihood.

    ``f ~ GP(m, k)``, ``y_i = f(x_i) + eps_i``, ``eps_i ~ Normal(0, noise)``; f is integrated
    out, so the likelihood is the marginal ``y ~ MultivariateNormal(m, K + noise I)``.

    Parameters
    ----------
    kernel : str
        Kernel string (see the module docstring), e.g. ``"rbf"``, ``"matern52+linear"``.
    ard : bool
        One lengthscale per input dimension (automatic relevance determination).
    priors : "default", None or dict
        ``"default"``: :data:`DEFAULT_PRIORS`. ``None``: flat improper priors on every
        hyperparameter, i.e. type-II maximum likelihood with ``guide="delta"`` (the posterior
        may be improper: do not use it with NUTS or a Gaussian guide). A dict overrides the
        defaults per kind (``"lengthscale"``, ``"variance"``, ``"period"``, ``"noise"``,
        ``"mean"``) or per site name; values are ``[family, *arguments]`` with family in
        ``lognormal(loc, scale)``, ``gamma(concentration, rate)``,
        ``inverse_gamma(concentration, rate)``, ``half_normal(scale)``,
        ``half_cauchy(scale)``, ``normal(loc, scale)`` (mean only), or ``None`` for flat.
    fixed : dict, optional
        Hyperparameters held at known values instead of sampled, by site name,
        e.g. ``{"noise": 0.01}``.
    mean : {"zero", "constant"}
        Mean function; ``"constant"`` adds a latent site ``"mean"``.
    jitter : float
        Relative diagonal jitter (times the mean diagonal) tried, growing tenfold, only for
        covariance matrices whose Cholesky factorisation fails.

    Notes
    -----
    Data fields:

    - ``x``: Tensor (N, D) float.
    - ``y``: Tensor (N,) float (observed).

    Sample sites:

    - ``"kernel.<i>.variance"``, ``"kernel.<i>.lengthscale"`` (``(D,)`` with ARD),
      ``"kernel.<i>.period"``: () latent, per kernel component (see the module docstring).
    - ``"noise"``: () latent noise variance; ``"mean"``: () latent with ``mean="constant"``.
    - ``"y"``: (N,) observed, ``MultivariateNormal`` (event dim 1; no plate, so no
      minibatching: use :class:`SparseGPRegression` for large N).

    Prediction: ``FitResult.predict({"x": x_new})`` conditions on the training data through
    :meth:`prediction_inputs`; ``"y"`` is then ``Normal(f_loc, sqrt(f_var + noise))`` at the
    new inputs (event dim 1) and the deterministic sites ``"f_loc"``, ``"f_var"`` (M,) are the
    closed-form posterior mean and variance of f for each draw. The summaries ``mean``,
    ``epistemic_var`` (``E[f_var] + Var[f_loc]`` over draws), ``aleatoric_var`` (noise) and
    ``total_var`` follow. ``predict()`` with no data draws ``"y"`` from the marginal
    likelihood ``p(y | hyperparameters)`` (the model's only parameters) and summarises f at
    the training inputs; for the posterior predictive there, pass ``{"x": x_train}``.
    :meth:`posterior` gives the full predictive covariance for given hyperparameters.

    ``FitResult.log_likelihood()`` gives one joint term per draw, shape (S,): the marginal
    likelihood does not factorise over points. Costs O(N^3) per likelihood evaluation;
    predictions and log-likelihoods over S posterior draws hold S matrices of N x N (pass
    ``num_samples=`` to bound memory).

    Examples
    --------
    >>> import pyro_models, torch
    >>> model = GPRegression("rbf")
    >>> data = model.example_data()
    >>> res = pyro_models.fit(model, data, pyro_models.SVIConfig(num_steps=200, lr=0.05),
    ...                       guide="delta", seed=0, progress=False)
    >>> pred = res.predict({"x": torch.linspace(-2, 2, 5)[:, None]}, num_samples=10)
    >>> tuple(pred["y"].shape), tuple(pred.mean.shape)
    ((10, 5), (5,))
    """

    data_spec = DataSpec(_XY_FIELDS)

    def __init__(self, kernel: str = "rbf", *, ard: bool = False, priors: Any = "default",
                 fixed: Mapping[str, Any] | None = None, mean: str = "zero", jitter: float = 1e-6) -> None:
        super().__init__(kernel, ard=ard, priors=priors, fixed=fixed, mean=mean, jitter=jitter)

    def example_data(self, seed: int = 0) -> dict[str, Any]:
        """A small data set for this model (contract tests, docs); see :meth:`BayesianModel.example_data`."""
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(30, 1, generator=g) * 4 - 2
        return {"x": x, "y": torch.sin(2 * x[:, 0]) + 0.2 * torch.randn(30, generator=g)}

    predicts_through_training_data: ClassVar[bool] = True

    def prediction_inputs(self, train: Mapping[str, Tensor], new: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Predict at ``new["x"]`` conditioning on the training ``x`` and ``y``.

        Raises
        ------
        DataValidationError
            ``new["x"]`` has a different number of columns than the training inputs.
        """
        xt, xn = train["x"], new["x"]
        if xn.shape[-1] != xt.shape[-1]:
            raise DataValidationError(
                f"x: expected D={xt.shape[-1]} columns as in the training data, got {tuple(xn.shape)}"
            )
        out = {"x": xn, "x_train": xt, "y_train": train["y"]}
        if new.get("y") is not None:
            out["y"] = new["y"]
        return out

    # ------------------------------------------------------------------ algebra
    def _marginal_chol(self, hp: Mapping[str, Tensor], x: Tensor) -> Tensor:
        k = kernel_matrix(self.terms, hp, x)
        eye = torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
        return _cholesky(k + self._noise(hp)[..., None, None] * eye, self.jitter)

    def _conditional(self, hp: Mapping[str, Tensor], x: Tensor, y: Tensor, x_new: Tensor,
                     full_cov: bool, chol: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Posterior mean ``batch + (M,)`` and variance ``(M,)`` or covariance ``(M, M)`` of f."""
        if chol is None:
            chol = self._marginal_chol(hp, x)
        m = self._mean(hp, x)
        ks = kernel_matrix(self.terms, hp, x, x_new)  # batch + (N, M)
        v = torch.linalg.solve_triangular(chol, ks, upper=False)  # L^-1 K*, batches broadcast
        resid = (y - m[..., None]).unsqueeze(-1)
        w = torch.linalg.solve_triangular(chol, resid, upper=False)
        loc = m[..., None] + (v * w).sum(-2)
        if full_cov:
            kss = kernel_matrix(self.terms, hp, x_new)
            return loc, kss - v.transpose(-1, -2) @ v
        var = (_kernel_diag(self.terms, hp, x_new) - v.pow(2).sum(-2)).clamp_min(0)
        return loc, var

    # ------------------------------------------------------------------ model
    def forward(self, x: Tensor, y: Tensor | None = None, x_train: Tensor | None = None,
                y_train: Tensor | None = None) -> Tensor:
        """Run the model.

        Parameters
        ----------
        x : Tensor (N, D) float
            Training inputs, or with ``x_train`` the inputs to predict at.
        y : Tensor (N,) float, optional
            Observations at ``x``; ``None`` draws them.
        x_train, y_train : Tensor (N', D), (N',), optional
            Training data to condition on (set by :meth:`prediction_inputs`).

        Returns
        -------
        Tensor (N,)
        """
        self._check_x(x)
        if (x_train is None) != (y_train is None):
            raise ValueError("x_train and y_train must be given together (prediction mode)")
        # Predictions are independent per point, in a "data" plate, so that held-out
        # log-likelihoods are pointwise; the hyperparameters then sit left of that plate.
        hp = self._hypers(x, nesting=0 if x_train is None else 1)
        if x_train is None:
            chol = self._marginal_chol(hp, x)
            m = self._mean(hp, x)
            loc = m[..., None].expand(chol.shape[:-1])
            value = pyro.sample("y", dist.MultivariateNormal(loc, scale_tril=chol), obs=y)
            if _drawn(value, y):
                # f at the training inputs, only when y is replicated (see _drawn): while
                # fitting it would add O(N^3) per step and FitResult.samples() would compute
                # it for every draw.
                f_loc, f_var = self._conditional(hp, x, value if y is None else y, x, False, chol)
                pyro.deterministic("f_loc", f_loc, event_dim=1)
                pyro.deterministic("f_var", f_var, event_dim=1)
            return value
        self._check_x(x_train, "x_train")
        if x_train.shape[-1] != x.shape[-1]:
            raise DataValidationError(f"x: expected D={x_train.shape[-1]} columns as in x_train, got {tuple(x.shape)}")
        f_loc, f_var = self._conditional(hp, x_train, y_train, x, False)
        pyro.deterministic("f_loc", f_loc, event_dim=1)
        pyro.deterministic("f_var", f_var, event_dim=1)
        scale = (f_var + self._noise(hp)[..., None]).sqrt()
        with pyro.plate("data", x.shape[0], dim=-1):
            return pyro.sample("y", dist.Normal(f_loc, scale), obs=y)

    def summarize_predictions(self, draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``mean``, ``epistemic_var``, ``aleatoric_var``, ``total_var`` of y at each input."""
        return _regression_summary(self, draws)

    # ------------------------------------------------------------------ closed form
    def _inputs(self, x: Any, y: Any, x_new: Any, hyperparams: Mapping[str, Any] | None):
        d = self.validate_data({"x": x, "y": y})
        xv, yv = d["x"], d["y"]
        xn = to_tensor("x_new", x_new, "float").to(device=xv.device, dtype=xv.dtype)
        if xn.dim() != 2 or xn.shape[-1] != xv.shape[-1]:
            raise DataValidationError(f"x_new: expected shape (M, D={xv.shape[-1]}), got {tuple(xn.shape)}")
        needed = self.hyperparameter_sites
        given = dict(hyperparams or {})
        missing = sorted(set(needed) - set(given))
        unknown = sorted(set(given) - set(needed))
        if missing or unknown:
            raise ValueError(
                f"hyperparams must give exactly the latent hyperparameters {list(needed)}"
                + (f"; missing {missing}" if missing else "") + (f"; unknown {unknown}" if unknown else "")
            )
        hp = self._hypers(xv, nesting=0, values=given)
        return xv, yv, xn, hp

    def predictive_moments(self, x: Any, y: Any, x_new: Any, hyperparams: Mapping[str, Any] | None = None,
                           *, full_cov: bool = True) -> tuple[Tensor, Tensor]:
        """Closed-form posterior mean and covariance of f at ``x_new`` for given hyperparameters.

        ``mean = m + K*^T (K + noise I)^-1 (y - m)``,
        ``cov = K** - K*^T (K + noise I)^-1 K*``.

        Parameters
        ----------
        x : array-like (N, D) float
        y : array-like (N,) float
        x_new : array-like (M, D) float
        hyperparams : dict, optional
            A value per latent hyperparameter site (:attr:`hyperparameter_sites`); values may
            carry leading batch dims (e.g. posterior draws ``(S,)``, ARD ``(S, D)``).
        full_cov : bool
            Covariance ``(M, M)`` or only its diagonal ``(M,)``.

        Returns
        -------
        (Tensor batch + (M,), Tensor batch + (M, M) or batch + (M,))

        Raises
        ------
        ValueError
            Missing or unknown hyperparameters; DataValidationError for bad shapes.
        """
        xv, yv, xn, hp = self._inputs(x, y, x_new, hyperparams)
        return self._conditional(hp, xv, yv, xn, full_cov)

    def posterior(self, x: Any, y: Any, x_new: Any, hyperparams: Mapping[str, Any] | None = None,
                  *, include_noise: bool = False) -> dist.MultivariateNormal:
        """The GP posterior of f (or of new y) at ``x_new`` as a ``MultivariateNormal``.

        See :meth:`predictive_moments` for the arguments. With ``include_noise`` the noise
        variance is added to the diagonal (the predictive of new observations). A covariance
        that is singular in floating point (e.g. a linear kernel at more points than
        dimensions) gets the model's relative ``jitter`` on its diagonal, growing tenfold
        until it factorises.

        Returns
        -------
        MultivariateNormal
            Batch shape of the hyperparameters, event shape ``(M,)``.
        """
        xv, yv, xn, hp = self._inputs(x, y, x_new, hyperparams)
        loc, cov = self._conditional(hp, xv, yv, xn, True)
        if include_noise:
            cov = cov + self._noise(hp)[..., None, None] * torch.eye(xn.shape[0], dtype=xn.dtype, device=xn.device)
        cov = (cov + cov.transpose(-1, -2)) / 2
        return dist.MultivariateNormal(loc, scale_tril=_cholesky(cov, self.jitter))

    def log_marginal_likelihood(self, x: Any, y: Any, hyperparams: Mapping[str, Any] | None = None) -> Tensor:
        """``log N(y | m, K + noise I)`` for given hyperparameters (batch over their leading dims)."""
        d = self.validate_data({"x": x, "y": y})
        xv = d["x"]
        _, yv, _, hp = self._inputs(xv, d["y"], xv[:1], hyperparams)
        chol = self._marginal_chol(hp, xv)
        loc = self._mean(hp, xv)[..., None].expand(chol.shape[:-1])
        return dist.MultivariateNormal(loc, scale_tril=chol).log_prob(yv)


# ============================================================================ sparse models


def _kmeans(x: Tensor, m: int, iters: int = 10, seed: int = 0) -> Tensor:
    """``m`` cluster centres of ``x`` by Lloyd's algorithm from a seeded random start."""
    g = torch.Generator().manual_seed(seed)
    if x.shape[0] > 10000:
        x = x[torch.randperm(x.shape[0], generator=g)[:10000].to(x.device)]
    centres = x[torch.randperm(x.shape[0], generator=g)[:m].to(x.device)].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(-1)
        counts = torch.bincount(assign, minlength=m).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        keep = counts > 0
        centres[keep] = sums[keep] / counts[keep, None]
    return centres


class _SparseGPBase(_GPBase):
    """Inducing inputs ``Z`` and values ``u``, and the conditional of f given u."""

    def __init__(self, kernel: str = "rbf", *, num_inducing: int = 32,
                 inducing_points: Sequence[Sequence[float]] | None = None, learn_inducing: bool = True,
                 whiten: bool = True, ard: bool = False, priors: Any = "default",
                 fixed: Mapping[str, Any] | None = None, mean: str = "zero", jitter: float = 1e-6) -> None:
        super().__init__(kernel, ard=ard, priors=priors, fixed=fixed, mean=mean, jitter=jitter)
        if isinstance(num_inducing, bool) or not isinstance(num_inducing, int) or num_inducing < 1:
            raise ValueError(f"num_inducing must be a positive int, got {num_inducing!r}")
        for name, v in (("learn_inducing", learn_inducing), ("whiten", whiten)):
            if not isinstance(v, bool):
                raise TypeError(f"{name} must be a bool, got {v!r}")
        self.num_inducing = num_inducing
        self.learn_inducing = learn_inducing
        self.whiten = whiten
        self.inducing_points = None
        self._z_init = None
        if inducing_points is not None:
            try:  # float64 here: the data's dtype is adopted on the first call
                arr = np.asarray(inducing_points.detach().cpu() if isinstance(inducing_points, Tensor)
                                 else inducing_points, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"inducing_points must be an (M, D) array of numbers: {exc}") from None
            if arr.ndim != 2 or arr.shape[0] < 1 or not np.all(np.isfinite(arr)):
                raise ValueError(f"inducing_points must be a finite (M, D) array, got shape {arr.shape}")
            self._z_init = torch.from_numpy(arr)

    def _set_inducing(self, z: Tensor) -> None:
        if self.learn_inducing:
            self.inducing_points = torch.nn.Parameter(z.detach().clone())
        else:
            self.__dict__.pop("inducing_points", None)
            self.register_buffer("inducing_points", z.detach().clone())

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
        # Inducing points are created on the first call; a saved fit restores them before any
        # call (FitResult.load), so make room for the saved tensor first.
        key = prefix + "inducing_points"
        if key in state_dict and self.inducing_points is None:
            self._set_inducing(torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _inducing(self, x: Tensor) -> Tensor:
        if self.inducing_points is None:
            # First call (fit() inspects the model on the full training data first): the given
            # points, else k-means centres of the inputs (or the inputs themselves when there
            # are few), in the data's dtype and device.
            if self._z_init is not None:
                z = self._z_init
            else:
                xd = x.detach()
                z = xd.clone() if xd.shape[0] <= self.num_inducing else _kmeans(xd, self.num_inducing)
            self._set_inducing(z.to(dtype=x.dtype, device=x.device))
        z = self.inducing_points
        if z.shape[-1] != x.shape[-1]:
            raise DataValidationError(
                f"x: expected D={z.shape[-1]} columns (the inducing points' dimension), got {tuple(x.shape)}"
            )
        return z.to(dtype=x.dtype, device=x.device)

    def _f_given_u(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Sample hyperparameters and ``u``; return f's conditional mean and variance at ``x``."""
        self._check_x(x)
        hp = self._hypers(x, nesting=1)
        z = self._inducing(x)
        m = z.shape[0]
        kzz = kernel_matrix(self.terms, hp, z)
        lzz = _cholesky(kzz, self.jitter, always=True)
        if self.whiten:
            prior = dist.Normal(torch.zeros(m, dtype=x.dtype, device=x.device), 1.0).to_event(1)
        else:
            prior = dist.MultivariateNormal(torch.zeros(m, dtype=x.dtype, device=x.device),
                                            scale_tril=_plate_layout(lzz, 2, 1))
        u = _global(pyro.sample("u", prior), 1, 1)  # batch + (M,)
        kzx = kernel_matrix(self.terms, hp, z, x)  # batch + (M, N)
        a = torch.linalg.solve_triangular(lzz, kzx, upper=False)  # L^-1 Kzx
        if not self.whiten:
            u = torch.linalg.solve_triangular(lzz, u.unsqueeze(-1), upper=False).squeeze(-1)
        loc = self._mean(hp, x)[..., None] + (a * u.unsqueeze(-1)).sum(-2)
        var = (_kernel_diag(self.terms, hp, x) - a.pow(2).sum(-2)).clamp_min(0)
        return loc, var, hp




@register("sparse_gp_regression")
class SparseGPRegression(_SparseGPBase):
    """Sparse (inducing-point) GP regression for large N, with minibatch training.

    ``u = f(Z)``; ``f_i | u ~ Normal(a_i, b_i)`` with ``a = m + K_xz K_zz^-1 (u - m)`` and
    ``b_i = k_ii - k_iz K_zz^-1 k_zi``; ``y_i | u ~ Normal(a_i, sqrt(b_i + noise))``.

    The likelihood of each point marginalises its f_i over ``p(f_i | u)``, the
    fully-independent-conditional (FITC) construction, so the model is a proper Bayesian model
    whose posterior every engine targets (SVI, NUTS); with ``Z`` equal to the training inputs it
    is the exact GP. ``q(u)`` is whatever the guide makes of the global site ``"u"`` (``"mvn"``
    gives a full Gaussian, as in Hensman et al. 2013; ``"normal"`` a diagonal one), and
    ``SVIConfig(batch_size=B)`` subsamples the ``"data"`` plate, scaled by N/B.

    Inducing inputs ``Z`` (:attr:`inducing_points`, (M, D)) are model parameters: with
    ``learn_inducing=True`` an ``nn.Parameter`` that SVI optimises with the guide (NUTS keeps
    them fixed). They are set on the first call (``fit`` inspects the model on the full
    training data), in the data's dtype: to ``inducing_points`` if given, else to
    ``num_inducing`` k-means centres of ``x`` (seeded), or to ``x`` itself when
    N <= num_inducing.

    Parameters
    ----------
    kernel : str
        Kernel string (module docstring).
    num_inducing : int
        Number of inducing points M when they are initialised from the data.
    inducing_points : nested list (M, D), optional
        Initial inducing inputs (a nested list keeps the hyperparameters saveable).
    learn_inducing : bool
        Optimise ``Z`` (SVI) or keep it fixed.
    whiten : bool
        Sample the whitened ``u = L_zz^-1 f(Z) ~ Normal(0, I)`` (better-conditioned SVI);
        otherwise ``u = f(Z) - m ~ MultivariateNormal(0, K_zz)``.
    ard, priors, fixed, mean : see :class:`GPRegression`.
    jitter : float
        Relative jitter always added to ``K_zz`` (grown tenfold if it does not factorise).

    Notes
    -----
    Data fields:

    - ``x``: Tensor (N, D) float; ``y``: Tensor (N,) float (observed).

    Sample sites:

    - kernel hyperparameters, ``"noise"`` and ``"mean"`` as in :class:`GPRegression`.
    - ``"u"``: (M,) latent inducing values (whitened by default), event dim 1.
    - ``"y"``: (N,) observed, ``Normal`` in plate ``"data"``.
    - ``"f_loc"``, ``"f_var"``: (N,) deterministic in plate ``"data"``, the moments of
      ``p(f_i | u)``, recorded whenever ``y`` is drawn (prediction).

    ``predict({"x": x_new})`` summarises ``mean``, ``epistemic_var``
    (``E[f_var] + Var[f_loc]``), ``aleatoric_var`` (noise) and ``total_var``. Memory is
    O(S N M) for S posterior draws at N points.

    Examples
    --------
    >>> import pyro_models
    >>> model = SparseGPRegression(num_inducing=8)
    >>> data = model.example_data()
    >>> res = pyro_models.fit(model, data, pyro_models.SVIConfig(num_steps=100, lr=0.05,
    ...                       batch_size=20), guide="normal", seed=0, progress=False)
    >>> tuple(model.inducing_points.shape)
    (8, 1)
    """

    data_spec = DataSpec(_XY_FIELDS, plate="data", plate_dim="N")

    def __init__(self, kernel: str = "rbf", *, num_inducing: int = 32,
                 inducing_points: Sequence[Sequence[float]] | None = None, learn_inducing: bool = True,
                 whiten: bool = True, ard: bool = False, priors: Any = "default",
                 fixed: Mapping[str, Any] | None = None, mean: str = "zero", jitter: float = 1e-6) -> None:
        super().__init__(kernel, num_inducing=num_inducing, inducing_points=inducing_points,
                         learn_inducing=learn_inducing, whiten=whiten, ard=ard, priors=priors,
                         fixed=fixed, mean=mean, jitter=jitter)

    def example_data(self, seed: int = 0) -> dict[str, Any]:
        """A small data set for this model (contract tests, docs); see :meth:`BayesianModel.example_data`."""
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(60, 1, generator=g) * 4 - 2
        return {"x": x, "y": torch.sin(2 * x[:, 0]) + 0.2 * torch.randn(60, generator=g)}

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Run the model; without ``y`` it draws it.

        Parameters
        ----------
        x : Tensor (N, D) float
        y : Tensor (N,) float, optional

        Returns
        -------
        Tensor (N,)
        """
        loc, var, hp = self._f_given_u(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            value = pyro.sample("y", dist.Normal(loc, (var + self._noise(hp)[..., None]).sqrt()), obs=y)
            if _drawn(value, y):
                pyro.deterministic("f_loc", loc)
                pyro.deterministic("f_var", var)
        return value

    def summarize_predictions(self, draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``mean``, ``epistemic_var``, ``aleatoric_var``, ``total_var`` of y at each input."""
        return _regression_summary(self, draws)


def _gh(ref: Tensor) -> tuple[Tensor, Tensor]:
    t, w = np.polynomial.hermite.hermgauss(_GH_POINTS)
    nodes = torch.as_tensor(t * math.sqrt(2.0), dtype=ref.dtype, device=ref.device)
    logw = torch.as_tensor(np.log(w / math.sqrt(math.pi)), dtype=ref.dtype, device=ref.device)
    return nodes, logw


def _bernoulli_logits(loc: Tensor, var: Tensor, link: str = "logit") -> Tensor:
    """Logit of ``P(y = 1) = E[link^-1(f)]``, ``f ~ Normal(loc, var)``.

    Probit: ``Phi(loc / sqrt(1 + var))`` exactly. Logit: Gauss-Hermite quadrature, in log
    space so that probabilities near 0 or 1 keep finite logits.
    """
    if link == "probit":
        z = loc / (1 + var).sqrt()
        return torch.special.log_ndtr(z) - torch.special.log_ndtr(-z)
    nodes, logw = _gh(loc)
    f = loc.unsqueeze(-1) + _safe_sqrt(var).unsqueeze(-1) * nodes
    log_p = torch.logsumexp(logw + torch.nn.functional.logsigmoid(f), -1)
    log_q = torch.logsumexp(logw + torch.nn.functional.logsigmoid(-f), -1)
    return log_p - log_q


@register("gp_classifier")
class GPClassifier(_SparseGPBase):
    """Binary GP classification with inducing points: ``y_i ~ Bernoulli(sigmoid(f(x_i)))``.

    ``P(y_i = 1 | u) = E[sigmoid(f_i)]`` over ``f_i | u ~ Normal(a_i, b_i)`` (as in
    :class:`SparseGPRegression`), so no per-point latent is needed and the model trains in
    minibatches. With the logit link the expectation is a 64-node Gauss-Hermite quadrature
    (error below 1e-5 while ``b_i <= 16``, i.e. a kernel variance up to 16); with
    ``link="probit"`` (``Phi(f)``, as GPflow and GPyTorch use) it is exact,
    ``Phi(a_i / sqrt(1 + b_i))``.

    The likelihood of each point marginalises its f_i over ``p(f_i | u)``, the
    fully-independent-conditional (FITC) construction, so the model is a proper Bayesian model
    whose posterior every engine targets (SVI, NUTS); with ``Z`` equal to the training inputs it
    is the exact GP. ``q(u)`` is whatever the guide makes of the global site ``"u"`` (``"mvn"``
    gives a full Gaussian, as in Hensman et al. 2013; ``"normal"`` a diagonal one), and
    ``SVIConfig(batch_size=B)`` subsamples the ``"data"`` plate, scaled by N/B.

    Inducing inputs ``Z`` (:attr:`inducing_points`, (M, D)) are model parameters: with
    ``learn_inducing=True`` an ``nn.Parameter`` that SVI optimises with the guide (NUTS keeps
    them fixed). They are set on the first call (``fit`` inspects the model on the full
    training data), in the data's dtype: to ``inducing_points`` if given, else to
    ``num_inducing`` k-means centres of ``x`` (seeded), or to ``x`` itself when
    N <= num_inducing.

    Parameters
    ----------
    kernel, num_inducing, inducing_points, learn_inducing, whiten, ard, priors, fixed, mean, jitter
        As in :class:`SparseGPRegression` (there is no ``"noise"`` site).
    link : {"logit", "probit"}
        Inverse link from f to ``P(y = 1)``: the logistic sigmoid or the normal CDF.

    Notes
    -----
    Data fields:

    - ``x``: Tensor (N, D) float.
    - ``y``: Tensor (N,) float with values 0 or 1 (observed; integer 0/1 input is converted).

    Sample sites:

    - kernel hyperparameters (and ``"mean"``) as in :class:`GPRegression`.
    - ``"u"``: (M,) latent inducing values, event dim 1.
    - ``"y"``: (N,) observed, ``Bernoulli`` in plate ``"data"``.
    - ``"f_loc"``, ``"f_var"``: (N,) deterministic, recorded whenever ``y`` is drawn.

    ``predict({"x": x_new})`` summarises ``probs`` (M, 2) (``[P(y=0), P(y=1)]`` averaged over
    the posterior of f), ``entropy`` of that (total), ``expected_entropy`` (aleatoric:
    ``E_f H[link^-1(f)]``) and ``mutual_info`` (epistemic: their difference), the expectations
    taken over each draw's ``Normal(f_loc, f_var)`` (by quadrature) and over the draws: the
    uncertainty about f, including f given u, counts as epistemic.

    Examples
    --------
    >>> import pyro_models
    >>> model = GPClassifier(num_inducing=10)
    >>> data = model.example_data()
    >>> res = pyro_models.fit(model, data, pyro_models.SVIConfig(num_steps=100, lr=0.05),
    ...                       seed=0, progress=False)
    >>> pred = res.predict({"x": data["x"][:4]}, num_samples=20)
    >>> tuple(pred.probs.shape)
    (4, 2)
    """

    _has_noise = False
    data_spec = DataSpec(
        (
            Field("x", ("N", "D"), doc="inputs, one row per observation"),
            Field("y", ("N",), observed=True, lower=0, upper=1, doc="binary label (0 or 1)"),
        ),
        plate="data",
        plate_dim="N",
    )

    def __init__(self, kernel: str = "rbf", *, num_inducing: int = 32,
                 inducing_points: Sequence[Sequence[float]] | None = None, learn_inducing: bool = True,
                 whiten: bool = True, ard: bool = False, priors: Any = "default",
                 fixed: Mapping[str, Any] | None = None, mean: str = "zero", jitter: float = 1e-6,
                 link: str = "logit") -> None:
        super().__init__(kernel, num_inducing=num_inducing, inducing_points=inducing_points,
                         learn_inducing=learn_inducing, whiten=whiten, ard=ard, priors=priors,
                         fixed=fixed, mean=mean, jitter=jitter)
        if link not in _LINKS:
            raise ValueError(f"link must be one of {list(_LINKS)}, got {link!r}")
        self.link = link

    def validate_data(self, data: Mapping[str, Any], *, require_observed: bool = True) -> dict[str, Tensor]:
        """Validate against :attr:`data_spec`; ``y`` must be exactly 0 or 1."""
        out = super().validate_data(data, require_observed=require_observed)
        if "y" in out:
            check_binary("y", out["y"])
        return out

    def example_data(self, seed: int = 0) -> dict[str, Any]:
        """A small data set for this model (contract tests, docs); see :meth:`BayesianModel.example_data`."""
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(60, 1, generator=g) * 4 - 2
        return {"x": x, "y": torch.bernoulli(torch.sigmoid(3 * torch.sin(2 * x[:, 0])), generator=g)}

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Run the model; without ``y`` it draws it.

        Parameters
        ----------
        x : Tensor (N, D) float
        y : Tensor (N,) float, optional

        Returns
        -------
        Tensor (N,)
        """
        loc, var, _ = self._f_given_u(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            value = pyro.sample("y", dist.Bernoulli(logits=_bernoulli_logits(loc, var, self.link)), obs=y)
            if _drawn(value, y):
                pyro.deterministic("f_loc", loc)
                pyro.deterministic("f_var", var)
        return value

    def summarize_predictions(self, draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Class probabilities with total, aleatoric and epistemic entropy (see the class docs)."""
        loc, var = draws["f_loc"], draws["f_var"]
        p1 = torch.sigmoid(_bernoulli_logits(loc, var, self.link)).mean(0)
        probs = torch.stack([1 - p1, p1], -1)
        nodes, logw = _gh(loc)
        f = loc.unsqueeze(-1) + var.sqrt().unsqueeze(-1) * nodes  # (S, M, K)
        pf = torch.sigmoid(f) if self.link == "logit" else torch.special.ndtr(f)
        binary_entropy = -(torch.special.xlogy(pf, pf) + torch.special.xlogy(1 - pf, 1 - pf))
        expected = (binary_entropy * logw.exp()).sum(-1).mean(0)
        total = entropy(probs)
        return {"probs": probs, "entropy": total, "expected_entropy": expected,
                "mutual_info": (total - expected).clamp_min(0.0)}
