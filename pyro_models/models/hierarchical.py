"""Hierarchical models: partial pooling across groups.

``eight_schools`` is Rubin's (1981) SAT-coaching meta-analysis with posteriordb's priors,
in the centred and the non-centred parameterisation (the latter samples well with NUTS; the
former shows the funnel).

Examples
--------
>>> from pyro_models.models.hierarchical import EightSchools, EIGHT_SCHOOLS_DATA
>>> model = EightSchools()
>>> data = model.validate_data(EIGHT_SCHOOLS_DATA)
>>> tuple(data["y"].shape)
(8,)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from ..data import DataSpec, Field
from ..errors import DataValidationError
from . import register
from .base import BayesianModel

__all__ = ["EightSchools", "EightSchoolsCentered", "EightSchoolsNonCentered", "EIGHT_SCHOOLS_DATA"]

#: Rubin's eight schools: estimated coaching effects ``y`` and their standard errors ``sigma``.
EIGHT_SCHOOLS_DATA: dict[str, list[float]] = {
    "y": [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0],
    "sigma": [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0],
}


@register("eight_schools")
class EightSchools(BayesianModel):
    """Eight schools: ``y[j] ~ Normal(theta[j], sigma[j])`` with ``theta[j] ~ Normal(mu, tau)``.

    Priors as in posteriordb: ``mu ~ Normal(0, 5)``, ``tau ~ HalfCauchy(5)``.

    Parameters
    ----------
    centered : bool
        ``False`` (default): sample ``theta_trans ~ Normal(0, 1)`` and record
        ``theta = mu + tau * theta_trans`` as a deterministic site (posteriordb's
        ``eight_schools_noncentered``). ``True``: sample ``theta ~ Normal(mu, tau)`` directly.

    Notes
    -----
    Data fields:

    - ``y``: Tensor (J,) float (observed).
    - ``sigma``: Tensor (J,) float > 0, the known standard errors.

    Sample sites:

    - ``"mu"``, ``"tau"``: () latent.
    - In plate ``"schools"`` (size J, dim -1): ``"theta_trans"`` (J,) latent and
      ``"theta"`` (J,) deterministic when non-centred; ``"theta"`` (J,) latent when centred;
      ``"y"`` (J,) observed.

    Examples
    --------
    >>> import torch
    >>> from pyro import poutine
    >>> model = EightSchools(centered=False)
    >>> data = model.validate_data(EIGHT_SCHOOLS_DATA)
    >>> trace = poutine.trace(model).get_trace(**data)
    >>> [n for n in trace.stochastic_nodes if n != "schools"]  # latent sites (less the plate)
    ['mu', 'tau', 'theta_trans']
    >>> model(sigma=data["sigma"]).shape  # prior predictive y
    torch.Size([8])
    """

    data_spec = DataSpec(
        (
            Field("y", ("J",), observed=True, doc="estimated treatment effect per school"),
            Field("sigma", ("J",), lower=0, doc="standard error of each estimate (> 0)"),
        ),
        plate="schools",
        plate_dim="J",
    )

    def __init__(self, centered: bool = False) -> None:
        super().__init__()
        if not isinstance(centered, bool):
            raise TypeError(f"centered must be a bool (True or False), got {centered!r}")
        self.centered = centered

    def validate_data(
        self, data: Mapping[str, Any], *, require_observed: bool = True
    ) -> dict[str, Tensor]:
        """Validate against :attr:`data_spec`; ``sigma`` must be strictly positive."""
        out = super().validate_data(data, require_observed=require_observed)
        if "sigma" in out and bool((out["sigma"] == 0).any()):
            idx = (out["sigma"] == 0).nonzero().flatten().tolist()
            raise DataValidationError(
                f"sigma: standard errors must be > 0, got 0 for school(s) {idx} "
                f"(a zero standard error makes the likelihood degenerate)"
            )
        return out

    def example_data(self, seed: int = 0) -> dict[str, Any]:
        """A small data set for this model (contract tests, docs); see :meth:`BayesianModel.example_data`."""
        return {k: torch.tensor(v) for k, v in EIGHT_SCHOOLS_DATA.items()}

    def forward(self, sigma: Tensor, y: Tensor | None = None) -> Tensor:
        """Run the model; without ``y`` it draws it.

        Parameters
        ----------
        sigma : Tensor (J,) float
        y : Tensor (J,) float, optional

        Returns
        -------
        Tensor (J,)
        """
        zero, five = sigma.new_tensor(0.0), sigma.new_tensor(5.0)
        mu = pyro.sample("mu", dist.Normal(zero, five))
        tau = pyro.sample("tau", dist.HalfCauchy(five))
        with pyro.plate("schools", sigma.shape[-1], dim=-1):
            if self.centered:
                theta = pyro.sample("theta", dist.Normal(mu, tau))
            else:
                theta_trans = pyro.sample("theta_trans", dist.Normal(zero, sigma.new_tensor(1.0)))
                theta = pyro.deterministic("theta", mu + tau * theta_trans)
            return pyro.sample("y", dist.Normal(theta, sigma), obs=y)


@register("eight_schools_centered")
class EightSchoolsCentered(EightSchools):
    """:class:`EightSchools` with ``centered=True`` by default (registered name for configs)."""

    def __init__(self, centered: bool = True) -> None:
        super().__init__(centered=centered)


@register("eight_schools_noncentered")
class EightSchoolsNonCentered(EightSchools):
    """:class:`EightSchools` with ``centered=False`` by default (registered name for configs)."""

    def __init__(self, centered: bool = False) -> None:
        super().__init__(centered=centered)
