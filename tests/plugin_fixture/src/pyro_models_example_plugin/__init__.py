"""An example third-party plug-in for pyro-models: one guide and one model.

Registered through entry points (see ``pyproject.toml``), not by importing this module:

- guide ``example_diag``: a diagonal Gaussian over all latent sites jointly, in the
  unconstrained space (Pyro's ``AutoDiagonalNormal``), initialised at the prior median;
- model ``example_coin``: Beta-Bernoulli coin flips.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoDiagonalNormal, init_to_median

from pyro_models import DataSpec, Field
from pyro_models.models import BayesianModel

__all__ = ["make_guide", "Coin"]


def make_guide(model: Callable[..., Any], *, init_scale: float = 0.05) -> AutoDiagonalNormal:
    """Diagonal Gaussian in the unconstrained space, initialised at the prior median."""
    if not (isinstance(init_scale, (int, float)) and init_scale > 0):
        raise ValueError(f"init_scale must be a positive number, got {init_scale!r}")
    return AutoDiagonalNormal(model, init_loc_fn=init_to_median, init_scale=init_scale)


class Coin(BayesianModel):
    """Coin flips with a Beta prior on the probability of heads.

    ``p ~ Beta(a, b)`` and ``flips[n] ~ Bernoulli(p)``; ``flips``: Tensor (N,) float (observed).
    """

    data_spec = DataSpec((Field("flips", ("N",), observed=True, lower=0, upper=1),),
                         plate="data", plate_dim="N")

    def __init__(self, a: float = 1.0, b: float = 1.0) -> None:
        super().__init__()
        self.a, self.b = float(a), float(b)

    def example_data(self, seed: int = 0) -> dict[str, Any]:
        g = torch.Generator().manual_seed(seed)
        return {"flips": (torch.rand(30, generator=g) < 0.3).float()}

    def forward(self, flips: torch.Tensor | None = None) -> torch.Tensor:
        ref = flips if flips is not None else torch.zeros(())
        p = pyro.sample("p", dist.Beta(ref.new_tensor(self.a), ref.new_tensor(self.b)))
        n = 1 if flips is None else flips.shape[-1]
        with pyro.plate("data", n, dim=-1):
            return pyro.sample("flips", dist.Bernoulli(p), obs=flips)
