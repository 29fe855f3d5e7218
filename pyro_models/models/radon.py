"""Radon: Gelman & Hill's multilevel regression of household radon on floor and county.

``log_radon[i] ~ Normal(alpha[county[i]] + beta[county[i]] * floor_measure[i], sigma_y)`` for
919 Minnesota houses in 85 counties (data shipped with the package, see
:func:`pyro_models.datasets.load_radon`), with four kinds of pooling across counties:

- ``pooling="pooled"``: one ``alpha`` and one ``beta`` for all houses
  (posteriordb's ``radon_pooled``).
- ``"unpooled"``: an independent ``alpha[j]`` per county, one ``beta``
  (``radon_county_intercept``).
- ``"varying_intercept"``: ``alpha[j] ~ Normal(mu_alpha, sigma_alpha)``, one ``beta``
  (``radon_variable_intercept_centered`` / ``_noncentered``).
- ``"varying_intercept_slope"``: ``alpha[j]`` as above and, independently,
  ``beta[j] ~ Normal(mu_beta, sigma_beta)`` (``radon_variable_intercept_slope_centered`` /
  ``_noncentered``).

Priors are posteriordb's (github.com/stan-dev/posteriordb, the Stan programs named above) and
are the same for every pooling: ``sigma_y, sigma_alpha, sigma_beta ~ HalfNormal(1)``;
``mu_alpha, mu_beta`` and the pooled/unpooled coefficients ``~ Normal(0, 10)``. On the log scale
of the data (log_radon has sd 0.8) these are weakly informative.

Examples
--------
>>> from pyro_models.datasets import load_radon
>>> from pyro_models.models.radon import Radon
>>> model = Radon()  # varying intercept, non-centred: posteriordb's reference posterior
>>> data = model.validate_data(load_radon())
>>> tuple(data["county_idx"].shape), model.num_counties
((919,), 85)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from ..data import DataSpec, Field
from ..datasets.radon import RADON_NUM_COUNTIES, load_radon
from ..errors import DataValidationError
from . import register
from .base import BayesianModel

__all__ = [
    "Radon",
    "RadonPooled",
    "RadonUnpooled",
    "RadonVaryingIntercept",
    "RadonVaryingInterceptSlope",
    "POOLINGS",
]

#: Allowed values of ``Radon(pooling=...)``.
POOLINGS: tuple[str, ...] = ("pooled", "unpooled", "varying_intercept", "varying_intercept_slope")

_COEF_SCALE = 10.0  # Normal(0, 10): mu_alpha, mu_beta, pooled/unpooled alpha and beta
_SIGMA_SCALE = 1.0  # HalfNormal(1): sigma_y, sigma_alpha, sigma_beta

_EXAMPLE_SIZE = 60


@register("radon")
class Radon(BayesianModel):
    """Household radon regressed on floor, with county intercepts (and slopes) pooled or not.

    Parameters
    ----------
    pooling : {"pooled", "unpooled", "varying_intercept", "varying_intercept_slope"}
        How counties share information (see the module docstring). Default
        ``"varying_intercept"``, whose non-centred form is posteriordb's
        ``radon_variable_intercept_noncentered``.
    centered : bool
        Parameterisation of the county-level distributions. ``False`` (default): sample
        standard normals ``alpha_raw`` (and ``beta_raw``) and record
        ``alpha = mu_alpha + sigma_alpha * alpha_raw`` (``beta = mu_beta + sigma_beta *
        beta_raw``) as deterministic sites; NUTS samples this well when counties have few
        houses. ``True``: sample ``alpha ~ Normal(mu_alpha, sigma_alpha)`` directly. The
        posterior is the same. ``"pooled"`` and ``"unpooled"`` have no county-level
        distribution to reparameterise (as in posteriordb, which has one program for each), so
        for them both values give the same program.
    num_counties : int
        Number of counties J; ``county_idx`` must lie in ``[0, J)``. Default 85 (the Minnesota
        data). Counties without houses in the data keep their prior (partial pooling) or prior
        alone (unpooled), so predictions for any county ``< J`` need only the new houses.

    Raises
    ------
    ValueError
        Unknown ``pooling`` or a non-positive ``num_counties``.
    TypeError
        ``centered`` is not a bool or ``num_counties`` not an int.

    Notes
    -----
    Data fields (N houses):

    - ``county_idx``: Tensor (N,) int64, 0-based county of each house, in ``[0, num_counties)``.
    - ``floor_measure``: Tensor (N,) float, 0 = basement, 1 = first floor.
    - ``log_radon``: Tensor (N,) float (observed).

    Sample sites (plate ``"counties"``, size J, dim -1; plate ``"data"``, size N, dim -1;
    names follow posteriordb):

    - always ``"sigma_y"`` () latent and ``"log_radon"`` (N,) observed in ``"data"``.
    - ``"pooled"``: ``"alpha"``, ``"beta"`` () latent.
    - ``"unpooled"``: ``"beta"`` () latent; ``"alpha"`` (J,) latent in ``"counties"``.
    - ``"varying_intercept"``: ``"sigma_alpha"``, ``"mu_alpha"``, ``"beta"`` () latent; in
      ``"counties"``: ``"alpha"`` (J,) latent (centred) or ``"alpha_raw"`` (J,) latent and
      ``"alpha"`` (J,) deterministic (non-centred).
    - ``"varying_intercept_slope"``: ``"sigma_alpha"``, ``"sigma_beta"``, ``"mu_alpha"``,
      ``"mu_beta"`` () latent; in ``"counties"``: ``"alpha"``, ``"beta"`` (J,) latent
      (centred) or ``"alpha_raw"``, ``"beta_raw"`` latent and ``"alpha"``, ``"beta"``
      deterministic (non-centred).

    Latent sites may carry extra leading batch dimensions (vectorised posterior predictive):
    county coefficients are indexed as ``alpha[..., county_idx]``.

    Examples
    --------
    >>> from pyro import poutine
    >>> from pyro_models.datasets import load_radon
    >>> model = Radon(pooling="varying_intercept_slope", centered=False)
    >>> data = model.validate_data(load_radon())
    >>> trace = poutine.trace(model).get_trace(**data)
    >>> [n for n in trace.stochastic_nodes if n not in ("counties", "data")]  # less the plates
    ['sigma_y', 'sigma_alpha', 'sigma_beta', 'mu_alpha', 'mu_beta', 'alpha_raw', 'beta_raw']
    >>> model(county_idx=data["county_idx"][:3], floor_measure=data["floor_measure"][:3]).shape
    torch.Size([3])
    """

    data_spec = DataSpec(
        (
            Field("county_idx", ("N",), dtype="int",
                  doc="0-based county of each house, in [0, num_counties)"),
            Field("floor_measure", ("N",), doc="floor of the measurement: 0 basement, 1 first floor"),
            Field("log_radon", ("N",), observed=True, doc="log radon activity, log(pCi/L)"),
        ),
        plate="data",
        plate_dim="N",
    )

    def __init__(
        self,
        pooling: str = "varying_intercept",
        centered: bool = False,
        num_counties: int = RADON_NUM_COUNTIES,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not isinstance(centered, bool):
            raise TypeError(f"centered must be a bool (True or False), got {centered!r}")
        if isinstance(num_counties, bool) or not isinstance(num_counties, int):
            raise TypeError(f"num_counties must be a positive int, got {num_counties!r}")
        if num_counties < 1:
            raise ValueError(f"num_counties must be a positive int, got {num_counties}")
        self.pooling = pooling
        self.centered = centered
        self.num_counties = num_counties

    def validate_data(
        self, data: Mapping[str, Any], *, require_observed: bool = True
    ) -> dict[str, Tensor]:
        """Validate against :attr:`data_spec`; ``county_idx`` must lie in ``[0, num_counties)``.

        Raises
        ------
        DataValidationError
            Besides the contract checks: a county index below 0 or at/above ``num_counties``
            (the message says which rows and how to fix it).
        """
        out = super().validate_data(data, require_observed=require_observed)
        idx = out.get("county_idx")
        if idx is None or idx.numel() == 0:
            return out
        j = self.num_counties
        bad = ((idx < 0) | (idx >= j)).nonzero().flatten()
        if bad.numel():
            rows = bad[:5].tolist()
            vals = idx[bad[:5]].tolist()
            hint = ""
            if int(idx.min()) >= 1 and int(idx.max()) == j:
                hint = " (it looks 1-based, as in Stan/posteriordb: subtract 1)"
            elif int(idx.max()) >= j:
                hint = f"; for a data set with more counties use num_counties={int(idx.max()) + 1} or more"
            raise DataValidationError(
                f"county_idx: expected 0-based county indices in [0, {j}) for num_counties={j}, "
                f"got {vals} at row(s) {rows}" + (" ..." if bad.numel() > 5 else "") + hint
            )
        return out

    # ------------------------------------------------------------------ model
    def _counties(self) -> pyro.plate:
        return pyro.plate("counties", self.num_counties, dim=-1)

    def _county_coef(self, name: str, mu: Tensor, sigma: Tensor, one: Tensor) -> Tensor:
        """``name ~ Normal(mu, sigma)`` per county, centred or via ``name_raw`` (in the plate)."""
        if self.centered:
            return pyro.sample(name, dist.Normal(mu, sigma))
        raw = pyro.sample(f"{name}_raw", dist.Normal(torch.zeros_like(one), one))
        return pyro.deterministic(name, mu + sigma * raw, event_dim=0)

    def forward(
        self, county_idx: Tensor, floor_measure: Tensor, log_radon: Tensor | None = None
    ) -> Tensor:
        """Run the model; without ``log_radon`` it draws it.

        Parameters
        ----------
        county_idx : Tensor (N,) int64
        floor_measure : Tensor (N,) float
        log_radon : Tensor (N,) float, optional

        Returns
        -------
        Tensor (N,)
        """
        one = floor_measure.new_tensor(1.0)
        zero = floor_measure.new_tensor(0.0)
        coef_prior = dist.Normal(zero, floor_measure.new_tensor(_COEF_SCALE))
        sigma_prior = dist.HalfNormal(floor_measure.new_tensor(_SIGMA_SCALE))
        sigma_y = pyro.sample("sigma_y", sigma_prior)
        if self.pooling == "pooled":
            alpha = pyro.sample("alpha", coef_prior)
            beta = pyro.sample("beta", coef_prior)
            mean = alpha + beta * floor_measure
        elif self.pooling == "unpooled":
            beta = pyro.sample("beta", coef_prior)
            with self._counties():
                alpha = pyro.sample("alpha", coef_prior)
            mean = alpha[..., county_idx] + beta * floor_measure
        elif self.pooling == "varying_intercept":
            sigma_alpha = pyro.sample("sigma_alpha", sigma_prior)
            mu_alpha = pyro.sample("mu_alpha", coef_prior)
            beta = pyro.sample("beta", coef_prior)
            with self._counties():
                alpha = self._county_coef("alpha", mu_alpha, sigma_alpha, one)
            mean = alpha[..., county_idx] + beta * floor_measure
        else:  # varying_intercept_slope
            sigma_alpha = pyro.sample("sigma_alpha", sigma_prior)
            sigma_beta = pyro.sample("sigma_beta", sigma_prior)
            mu_alpha = pyro.sample("mu_alpha", coef_prior)
            mu_beta = pyro.sample("mu_beta", coef_prior)
            with self._counties():
                alpha = self._county_coef("alpha", mu_alpha, sigma_alpha, one)
                beta = self._county_coef("beta", mu_beta, sigma_beta, one)
            mean = alpha[..., county_idx] + beta[..., county_idx] * floor_measure
        with pyro.plate("data", floor_measure.shape[-1], dim=-1):
            return pyro.sample("log_radon", dist.Normal(mean, sigma_y), obs=log_radon)

    def example_data(self, seed: int = 0) -> dict[str, Any]:
        """60 houses drawn at random (by ``seed``) from the Minnesota data.

        County indices keep their meaning (0-based Minnesota counties), restricted to
        ``county_idx < num_counties`` when ``num_counties`` is below 85.

        Returns
        -------
        dict
            ``county_idx`` (60,) int64, ``floor_measure`` (60,) float32, ``log_radon`` (60,)
            float32 (fewer rows if a small ``num_counties`` leaves fewer houses).
        """
        full = load_radon()
        keep = (full["county_idx"] < self.num_counties).nonzero().flatten()
        g = torch.Generator().manual_seed(int(seed))
        n = min(_EXAMPLE_SIZE, keep.numel())
        rows = keep[torch.randperm(keep.numel(), generator=g)[:n]].sort().values
        return {k: v[rows] for k, v in full.items()}


@register("radon_pooled")
class RadonPooled(Radon):
    """:class:`Radon` with ``pooling="pooled"``: one intercept and one slope for every county
    (posteriordb's ``radon_pooled``). ``centered`` changes nothing here; it is accepted so that
    every radon name takes the same arguments."""

    def __init__(self, centered: bool = False, num_counties: int = RADON_NUM_COUNTIES) -> None:
        super().__init__(pooling="pooled", centered=centered, num_counties=num_counties)


@register("radon_unpooled")
class RadonUnpooled(Radon):
    """:class:`Radon` with ``pooling="unpooled"``: independent ``Normal(0, 10)`` county
    intercepts, one slope (posteriordb's ``radon_county_intercept``). ``centered`` changes
    nothing here."""

    def __init__(self, centered: bool = False, num_counties: int = RADON_NUM_COUNTIES) -> None:
        super().__init__(pooling="unpooled", centered=centered, num_counties=num_counties)


@register("radon_varying_intercept")
class RadonVaryingIntercept(Radon):
    """:class:`Radon` with ``pooling="varying_intercept"`` (posteriordb's
    ``radon_variable_intercept_noncentered``, or ``_centered`` with ``centered=True``)."""

    def __init__(self, centered: bool = False, num_counties: int = RADON_NUM_COUNTIES) -> None:
        super().__init__(pooling="varying_intercept", centered=centered, num_counties=num_counties)


@register("radon_varying_intercept_slope")
class RadonVaryingInterceptSlope(Radon):
    """:class:`Radon` with ``pooling="varying_intercept_slope"`` (posteriordb's
    ``radon_variable_intercept_slope_noncentered``, or ``_centered`` with ``centered=True``)."""

    def __init__(self, centered: bool = False, num_counties: int = RADON_NUM_COUNTIES) -> None:
        super().__init__(
            pooling="varying_intercept_slope", centered=centered, num_counties=num_counties
        )
