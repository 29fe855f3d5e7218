"""A Pyro model's potential energy for many chains at once: ``U(q)`` for ``q`` of shape (C, D).

The model runs once per call under an outer ``pyro.plate`` over chains, placed left of every
plate and batch dimension of the model, with each latent site conditioned on its
constrained value of shape (C, 1.., *site_shape). This is how Pyro's
``vectorize_particles`` ELBO batches particles. Log-densities are summed per chain and the
log-Jacobians of the ``biject_to`` transforms are added, so row ``c`` of the result equals
Pyro's own single-chain ``potential_fn`` at ``q[c]``.

Not every model can be batched that way (Python control flow on latent values, shapes
computed from latent values, ``.item()``, matrix products that assume a fixed rank, discrete
latent sites). :meth:`BatchedPotential.verify` compares the batched potential and gradient
with Pyro's per-chain potential on a few distinct points and raises
:class:`ModelNotVectorizableError` with the reason when they disagree or the batched run
fails.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.mcmc.util import initialize_model
from pyro.poutine.util import site_is_subsample

from ..init_strategies import get_init_strategy

__all__ = ["BatchedPotential", "ModelNotVectorizableError"]

_CHAIN_PLATE = "_pyro_models_chains"


class ModelNotVectorizableError(ValueError):
    """The model cannot be evaluated for many chains in one batched pass."""


@dataclass(frozen=True)
class _Site:
    name: str
    shape: torch.Size  # the site's value shape: batch_shape + event_shape
    # The unconstrained shape differs from ``shape`` for supports of lower dimension than
    # their ambient space: a simplex of K numbers has K - 1 free coordinates, a d x d
    # correlation Cholesky factor d (d - 1) / 2.
    ushape: torch.Size
    batch_dims: int
    start: int  # its slice of the flat unconstrained vector
    stop: int
    transform: Any  # unconstrained -> constrained (``biject_to(support)``)


class BatchedPotential:
    """Potential energy and gradient of a Pyro model for a batch of chains.

    Parameters
    ----------
    model : callable
        A Pyro model taking ``data`` as keyword arguments. Continuous latent sites only.
    data : dict
        Keyword arguments of ``model`` (observations included).
    num_chains : int
        Number of chains C to initialise.
    max_plate_nesting : int
        Number of plate dimensions the model uses (the chain plate goes to their left).
    init_strategy : str or callable
        Pyro ``init_to_*`` strategy name (see :mod:`pyro_models.init_strategies`) or callable.

    Attributes
    ----------
    initial_params : Tensor (C, D)
        Valid starting points in the unconstrained space, one row per chain.
    dim : int
        D, the number of unconstrained scalars.
    sites : tuple of str
        Latent site names, in the order of the flat vector.

    Raises
    ------
    ModelNotVectorizableError
        The model has discrete latent sites (which NUTS cannot sample without enumeration).

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch
    >>> def model(y):
    ...     s = pyro.sample("s", dist.HalfNormal(1.0))
    ...     with pyro.plate("n", y.shape[0]):
    ...         pyro.sample("y", dist.Normal(0.0, s), obs=y)
    >>> pot = BatchedPotential(model, {"y": torch.tensor([0.5, -1.0])}, num_chains=3,
    ...                        max_plate_nesting=1)
    >>> u, g = pot.potential_and_grad(pot.initial_params)
    >>> u.shape, g.shape
    (torch.Size([3]), torch.Size([3, 1]))
    >>> pot.verify(pot.initial_params)  # agrees with Pyro's per-chain potential
    """

    def __init__(
        self,
        model: Callable[..., Any],
        data: Mapping[str, Any],
        *,
        num_chains: int,
        max_plate_nesting: int,
        init_strategy: str | Callable[..., Any] = "uniform",
    ) -> None:
        if isinstance(num_chains, bool) or not isinstance(num_chains, int) or num_chains < 1:
            raise ValueError(f"num_chains must be a positive int, got {num_chains!r}")
        self.model = model
        self.data = dict(data)
        init, potential_fn, transforms, proto = initialize_model(
            model,
            model_kwargs=self.data,
            max_plate_nesting=max_plate_nesting,
            num_chains=num_chains,
            init_strategy=get_init_strategy(init_strategy),
        )
        self._single_potential = potential_fn
        sites, start, nesting = [], 0, max_plate_nesting
        for name, node in proto.nodes.items():
            if node["type"] != "sample" or site_is_subsample(node):
                continue
            fn = node["fn"]
            # Sites with batch dimensions outside any plate also need the chain dim left of them.
            nesting = max(nesting, len(fn.batch_shape))
            if node["is_observed"]:
                continue
            if getattr(fn, "has_enumerate_support", False) and name not in transforms:
                raise ModelNotVectorizableError(
                    f"site {name!r} is a discrete latent variable; NUTS samples continuous "
                    f"latents only"
                )
            if name not in transforms:
                continue
            shape = node["value"].shape
            transform = transforms[name].inv
            ushape = torch.Size(transform.inverse_shape(shape))
            n = int(math.prod(ushape))
            sites.append(_Site(name, shape, ushape, len(fn.batch_shape), start, start + n, transform))
            start += n
        self._sites = tuple(sites)
        self._nesting = nesting
        self.dim = start
        if not sites:
            raise ModelNotVectorizableError("the model has no continuous latent sites")
        first = next(iter(init.values()))
        self.dtype = first.dtype
        self.device = first.device
        # Pyro returns one dict per chain stacked on dim 0 only when num_chains > 1.
        lead = (num_chains,) if num_chains > 1 else (1,)
        self.initial_params = torch.cat(
            [init[s.name].reshape(lead + (-1,)) for s in self._sites], dim=-1
        ).detach()

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._sites)

    def site_shapes(self) -> dict[str, torch.Size]:
        """Each latent site's shape (as the model sees it, without the chain dim)."""
        return {s.name: s.shape for s in self._sites}

    # ------------------------------------------------------------------ transforms
    def unconstrained(self, q: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split ``q`` (C, D) into per-site unconstrained values (C, *unconstrained_shape)."""
        c = q.shape[0]
        return {s.name: q[:, s.start:s.stop].reshape((c,) + s.ushape) for s in self._sites}

    def constrain(self, q: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-site constrained values (C, *site_shape) of ``q`` (C, D)."""
        return {s.name: s.transform(v) for s, v in zip(self._sites, self.unconstrained(q).values())}

    def unconstrain(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`constrain`: constrained values (C, *site_shape) to ``q`` (C, D)."""
        parts = []
        for s in self._sites:
            v = values[s.name]
            parts.append(s.transform.inv(v).reshape(v.shape[0], -1))
        return torch.cat(parts, dim=-1)

    # ------------------------------------------------------------------ potential
    def log_density(self, q: torch.Tensor) -> torch.Tensor:
        """Log joint density in the unconstrained space (Jacobians included), shape (C,)."""
        c = q.shape[0]
        k = self._nesting
        total = q.new_zeros(c)
        conditioned = {}
        for s in self._sites:
            u = q[:, s.start:s.stop].reshape((c,) + s.ushape)
            x = s.transform(u)
            ladj = s.transform.log_abs_det_jacobian(u, x)
            # Elementwise transforms return one term per scalar, event transforms (stick
            # breaking, corr Cholesky) one per event: summing all but the chain dim covers both,
            # as Pyro's potential_fn sums the whole tensor for one chain.
            total = total + ladj.reshape(c, -1).sum(-1)
            # The chain dim sits at batch position -(k + 1), left of every plate.
            conditioned[s.name] = x.reshape((c,) + (1,) * (k - s.batch_dims) + tuple(s.shape))
        with poutine.trace() as tracer, pyro.plate(_CHAIN_PLATE, c, dim=-(k + 1)):
            poutine.condition(self.model, data=conditioned)(**self.data)
        for name, site in tracer.trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site) or site["infer"].get("_deterministic"):
                continue
            if not site["is_observed"]:
                raise ModelNotVectorizableError(
                    f"site {name!r} is latent but was not in the model's first trace (a site "
                    f"that appears depending on latent values cannot be batched)"
                )
            lp = site["fn"].log_prob(site["value"])
            lp = scale_and_mask(lp, site["scale"], site["mask"])
            if not isinstance(lp, torch.Tensor):
                total = total + lp
                continue
            if lp.dim() < k + 1 or lp.shape[-(k + 1)] != c:
                if lp.numel() == 1:
                    total = total + lp.reshape(())
                    continue
                raise ModelNotVectorizableError(
                    f"site {name!r}: log_prob of shape {tuple(lp.shape)} has no chain dimension "
                    f"of size {c} at dim {-(k + 1)}"
                )
            total = total + lp.movedim(-(k + 1), 0).reshape(c, -1).sum(-1)
        return total

    def potential_and_grad(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Potential energy ``U = -log density`` (C,) and its gradient (C, D) at ``q`` (C, D)."""
        with torch.enable_grad():
            q = q.detach().requires_grad_(True)
            u = -self.log_density(q)
            (g,) = torch.autograd.grad(u.sum(), q)
        return u.detach(), g

    def single_potential_and_grad(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pyro's own single-chain potential and gradient at ``q`` (D,), for checks."""
        with torch.enable_grad():
            qq = q.detach().clone().requires_grad_(True)
            params = {s.name: qq[s.start:s.stop].reshape(s.ushape) for s in self._sites}
            u = self._single_potential(params)
            (g,) = torch.autograd.grad(u, qq, allow_unused=True)
        if g is None:
            g = torch.zeros_like(qq)
        return u.detach(), g

    def verify(self, q: torch.Tensor, *, rtol: float = 1e-3) -> None:
        """Check the batched potential against Pyro's per-chain potential at the rows of ``q``.

        Rows should be distinct points; with at least two rows a model that mixes chains
        (Python control flow on a latent, a sum over the chain dim, ``.item()``) fails.

        Parameters
        ----------
        q : Tensor (K, D)
        rtol : float
            Relative tolerance of the comparison (float32 sums differ in their last bits).

        Raises
        ------
        ModelNotVectorizableError
            The batched run failed or disagrees with the per-chain potential.
        """
        try:
            with pyro.validation_enabled(False):
                u, g = self.potential_and_grad(q)
        except ModelNotVectorizableError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot batch this model"
            raise ModelNotVectorizableError(
                f"running the model for {q.shape[0]} chains at once failed "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        if u.shape != (q.shape[0],) or g.shape != q.shape:
            raise ModelNotVectorizableError(
                f"batched potential has shape {tuple(u.shape)} / gradient {tuple(g.shape)}, "
                f"expected ({q.shape[0]},) / {tuple(q.shape)}"
            )
        for i in range(q.shape[0]):
            u1, g1 = self.single_potential_and_grad(q[i])
            if not _close(u[i], u1, rtol) or not _close(g[i], g1, rtol):
                raise ModelNotVectorizableError(
                    f"the batched potential disagrees with Pyro's per-chain potential at point "
                    f"{i} (U={float(u[i]):.6g} vs {float(u1):.6g}); the model's computation "
                    f"depends on the batch of chains: e.g. Python control flow on a latent value, or an "
                    f"operation over a fixed dim that the chain dim shifts (softmax(dim=0), x @ w with a "
                    f"batched w, sum over dim 0); index dims from the right (dim=-1) so extra leading "
                    f"dims broadcast, or use backend='pyro'"
                )


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    a, b = a.detach().double(), b.detach().double()
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    if not torch.equal(fa, fb):
        return False
    if not bool(fa.any()):
        return True
    scale = 1.0 + float(b[fb].abs().max())
    return bool(((a[fa] - b[fb]).abs() <= rtol * scale).all())
