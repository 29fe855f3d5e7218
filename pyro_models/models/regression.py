"""Generalised linear models: Bayesian linear and logistic regression.

With a known noise scale and Gaussian (or flat) priors, linear regression has a closed-form
Gaussian posterior (:meth:`LinearRegression.exact_joint_posterior`), the standard exact
reference for testing guides and samplers.

Examples
--------
>>> import torch
>>> from pyro_models.models.regression import LinearRegression
>>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
>>> y = torch.tensor([1.0, 3.1, 4.9, 7.0])
>>> post = LinearRegression(noise_scale=0.5).exact_posterior(x, y)
>>> round(float(post["weight"].mean[0]), 3)
1.887
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from ..data import DataSpec, Field, check_binary
from ..errors import DataValidationError
from . import register
from .base import BayesianModel

__all__ = ["LinearRegression", "LogisticRegression"]

_NOISE_PRIORS = ("half_normal", "half_cauchy")


def _scale_or_none(name: str, value: Any, *, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        allowed = "a positive float" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def _const(value: float, ref: Tensor) -> Tensor:
    # Constants follow the data's device and dtype so the model runs on CUDA / in float64.
    return torch.as_tensor(value, dtype=ref.dtype, device=ref.device)


def _linear(x: Tensor, bias: Tensor, weight: Tensor) -> Tensor:
    # Elementwise product + sum instead of ``x @ weight``: under an outer vectorising plate
    # weight has shape (P, 1, D) and the 1 lines up with the data plate, giving (P, N).
    return bias + (x * weight).sum(-1)


def _coef_prior(scale: float | None, shape: tuple[int, ...], ref: Tensor) -> dist.Distribution:
    if scale is None:
        # The support must carry the event dimensions too: guides that transform each site
        # with biject_to(support) (AutoStructured) check that event dims agree.
        return dist.ImproperUniform(constraints.independent(constraints.real, len(shape)), (), shape)
    d = dist.Normal(torch.zeros(shape, dtype=ref.dtype, device=ref.device), _const(scale, ref))
    return d.to_event(len(shape)) if shape else d


_XY_SPEC = DataSpec(
    (
        Field("x", ("N", "D"), doc="covariates, one row per observation"),
        Field("y", ("N",), observed=True, doc="response"),
    ),
    plate="data",
    plate_dim="N",
)


@register("linear_regression")
class LinearRegression(BayesianModel):
    """Bayesian linear regression ``y ~ Normal(bias + x @ weight, sigma)``.

    Parameters
    ----------
    weight_scale : float or None
        Prior standard deviation of each weight, ``weight ~ Normal(0, weight_scale)``;
        ``None`` gives an improper flat prior.
    bias_scale : float or None
        Prior standard deviation of the bias; ``None`` gives a flat prior.
    noise_scale : float or None
        Known observation noise; ``None`` makes it a latent ``"sigma"``.
    noise_prior : {"half_normal", "half_cauchy"}
        Prior of ``sigma`` when it is latent.
    noise_prior_scale : float
        Scale of that prior.

    Raises
    ------
    ValueError
        An invalid hyperparameter (the message names it and the allowed values).

    Notes
    -----
    With ``weight_scale=None, bias_scale=None, noise_prior="half_cauchy",
    noise_prior_scale=2.5`` this is posteriordb's ``kidiq-kidscore_momiq`` Stan program
    (``beta[1]`` = bias, ``beta[2]`` = weight).

    Data fields:

    - ``x``: Tensor (N, D) float.
    - ``y``: Tensor (N,) float (observed).

    Sample sites:

    - ``"bias"``: () latent.
    - ``"weight"``: (D,) latent (event dim 1).
    - ``"sigma"``: () latent, only when ``noise_scale`` is None.
    - ``"y"``: (N,) observed, in plate ``"data"``.

    Examples
    --------
    >>> import torch
    >>> model = LinearRegression(weight_scale=1.0, noise_prior="half_cauchy")
    >>> model(x=torch.randn(5, 3)).shape  # prior predictive draw of y
    torch.Size([5])
    """

    data_spec = _XY_SPEC

    def __init__(
        self,
        weight_scale: float | None = 1.0,
        bias_scale: float | None = 10.0,
        noise_scale: float | None = None,
        noise_prior: str = "half_normal",
        noise_prior_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.weight_scale = _scale_or_none("weight_scale", weight_scale, allow_none=True)
        self.bias_scale = _scale_or_none("bias_scale", bias_scale, allow_none=True)
        self.noise_scale = _scale_or_none("noise_scale", noise_scale, allow_none=True)
        if noise_prior not in _NOISE_PRIORS:
            raise ValueError(f"noise_prior must be one of {_NOISE_PRIORS}, got {noise_prior!r}")
        self.noise_prior = noise_prior
        self.noise_prior_scale = _scale_or_none(
            "noise_prior_scale", noise_prior_scale, allow_none=False
        )

    def example_data(self, seed: int = 0) -> dict[str, Any]:
        """A small data set for this model (contract tests, docs); see :meth:`BayesianModel.example_data`."""
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(30, 2, generator=g)
        return {"x": x, "y": x @ torch.tensor([1.0, -0.5]) + 0.3 + 0.5 * torch.randn(30, generator=g)}

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
        bias = pyro.sample("bias", _coef_prior(self.bias_scale, (), x))
        weight = pyro.sample("weight", _coef_prior(self.weight_scale, (x.shape[-1],), x))
        if self.noise_scale is not None:
            sigma = _const(self.noise_scale, x)
        else:
            family = dist.HalfNormal if self.noise_prior == "half_normal" else dist.HalfCauchy
            sigma = pyro.sample("sigma", family(_const(self.noise_prior_scale, x)))
        with pyro.plate("data", x.shape[-2], dim=-1):
            return pyro.sample("y", dist.Normal(_linear(x, bias, weight), sigma), obs=y)

    def exact_joint_posterior(self, x: Any, y: Any) -> dist.MultivariateNormal:
        """Closed-form Gaussian posterior of ``[bias, weight_1, ..., weight_D]``.

        Needs a known ``noise_scale``. Flat priors (``None`` scales) contribute zero prior
        precision, which is exact as long as the posterior is proper (``[1, x]`` has full
        column rank for the flat coefficients).

        Parameters
        ----------
        x : array-like (N, D) float
        y : array-like (N,) float

        Returns
        -------
        MultivariateNormal
            Event shape ``(D + 1,)``, bias first. Computed in float64, returned in ``x``'s dtype.

        Raises
        ------
        ValueError
            If the noise is latent (the posterior is then not Gaussian) or the posterior is
            improper (flat prior and a rank-deficient design).
        """
        if self.noise_scale is None:
            raise ValueError(
                "exact posterior needs a known noise: this model has a latent 'sigma' "
                f"({self.noise_prior} prior), so its posterior is not Gaussian; construct "
                "LinearRegression(noise_scale=<float>, ...) for the closed form"
            )
        d = self.validate_data({"x": x, "y": y})
        xv, yv = d["x"], d["y"]
        z = torch.cat([torch.ones_like(xv[:, :1]), xv], -1).double()
        prior_prec = torch.tensor(
            [0.0 if self.bias_scale is None else self.bias_scale**-2]
            + [0.0 if self.weight_scale is None else self.weight_scale**-2] * xv.shape[-1],
            dtype=torch.float64,
            device=xv.device,
        )
        noise_prec = self.noise_scale**-2
        precision = torch.diag(prior_prec) + noise_prec * z.T @ z
        chol, info = torch.linalg.cholesky_ex(precision)
        improper = int(info) != 0
        if not improper and bool((prior_prec == 0).any()):
            # Round-off can make a singular precision (flat prior, collinear columns) factorise.
            eig = torch.linalg.eigvalsh(precision)
            improper = bool(eig[0] <= 1e-12 * eig[-1])
        if improper:
            raise ValueError(
                "exact posterior is improper: with a flat prior the design [1, x] must have full "
                "column rank (more observations than coefficients, no constant or collinear columns)"
            )
        rhs = (noise_prec * z.T @ yv.double()).unsqueeze(-1)
        mean = torch.cholesky_solve(rhs, chol).squeeze(-1)
        cov = torch.cholesky_inverse(chol)
        cov = (cov + cov.T) / 2
        # Factor in float64: a float32 Cholesky of an ill-conditioned covariance can fail.
        scale_tril = torch.linalg.cholesky(cov)
        return dist.MultivariateNormal(mean.to(xv.dtype), scale_tril=scale_tril.to(xv.dtype))

    def exact_posterior(self, x: Any, y: Any) -> dict[str, dist.Distribution]:
        """Closed-form marginal posteriors of ``bias`` and ``weight``.

        See :meth:`exact_joint_posterior` for when the closed form applies.

        Parameters
        ----------
        x : array-like (N, D) float
        y : array-like (N,) float

        Returns
        -------
        dict
            ``{"bias": Normal (scalar), "weight": MultivariateNormal (event shape (D,))}``.
        """
        joint = self.exact_joint_posterior(x, y)
        cov = joint.covariance_matrix.double()
        mean = joint.loc
        return {
            "bias": dist.Normal(mean[0], cov[0, 0].sqrt().to(mean.dtype)),
            "weight": dist.MultivariateNormal(
                mean[1:], scale_tril=torch.linalg.cholesky(cov[1:, 1:]).to(mean.dtype)
            ),
        }


@register("logistic_regression")
class LogisticRegression(BayesianModel):
    """Bayesian logistic regression ``y ~ Bernoulli(logits=bias + x @ weight)``.

    Parameters
    ----------
    weight_scale : float
        Prior standard deviation of each weight (``Normal(0, weight_scale)``).
    bias_scale : float
        Prior standard deviation of the bias.

    Notes
    -----
    Data fields:

    - ``x``: Tensor (N, D) float.
    - ``y``: Tensor (N,) float with values 0 or 1 (observed; integer 0/1 input is converted).

    Sample sites:

    - ``"bias"``: () latent.
    - ``"weight"``: (D,) latent (event dim 1).
    - ``"y"``: (N,) observed, in plate ``"data"``.

    Examples
    --------
    >>> import torch
    >>> model = LogisticRegression(weight_scale=2.0)
    >>> data = model.validate_data({"x": torch.randn(4, 2), "y": [0, 1, 1, 0]})
    >>> data["y"].dtype
    torch.float32
    >>> model(x=data["x"]).shape
    torch.Size([4])
    """

    data_spec = DataSpec(
        (
            Field("x", ("N", "D"), doc="covariates, one row per observation"),
            Field("y", ("N",), observed=True, lower=0, upper=1, doc="binary outcome (0 or 1)"),
        ),
        plate="data",
        plate_dim="N",
    )

    def __init__(self, weight_scale: float = 1.0, bias_scale: float = 10.0) -> None:
        super().__init__()
        self.weight_scale = _scale_or_none("weight_scale", weight_scale, allow_none=False)
        self.bias_scale = _scale_or_none("bias_scale", bias_scale, allow_none=False)

    def validate_data(
        self, data: Mapping[str, Any], *, require_observed: bool = True
    ) -> dict[str, Tensor]:
        """Validate against :attr:`data_spec`; ``y`` must be exactly 0 or 1."""
        out = super().validate_data(data, require_observed=require_observed)
        if "y" in out:
            check_binary("y", out["y"])
        return out

    def example_data(self, seed: int = 0) -> dict[str, Any]:
        """A small data set for this model (contract tests, docs); see :meth:`BayesianModel.example_data`."""
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(40, 2, generator=g)
        p = torch.sigmoid(x @ torch.tensor([2.0, -1.0]))
        return {"x": x, "y": torch.bernoulli(p, generator=g)}

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
        bias = pyro.sample("bias", _coef_prior(self.bias_scale, (), x))
        weight = pyro.sample("weight", _coef_prior(self.weight_scale, (x.shape[-1],), x))
        with pyro.plate("data", x.shape[-2], dim=-1):
            return pyro.sample("y", dist.Bernoulli(logits=_linear(x, bias, weight)), obs=y)
