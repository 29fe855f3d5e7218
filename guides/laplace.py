"""Laplace approximations: MAP by SVI, then a Gaussian from the Hessian at the mode.

:class:`LaplaceGuide` trains as a point mass (an :class:`~pyro.infer.autoguide.AutoDelta`)
and, once training ends, replaces a chosen block of latent sites by a Gaussian in their
unconstrained space, ``N(map, H^-1)``, where ``H`` is the Hessian of the negative log joint
(full data, no minibatch scaling) with respect to that block, every other site held at its
MAP value. Two registered guides use it:

- ``laplace``: the block is every latent site (the classic Laplace approximation);
- ``last_layer_laplace``: the block is the last layer of a Bayesian net
  (Daxberger et al., 2021, "Laplace Redux"); the other weights stay at their MAP values.
  For a Gaussian likelihood the model is linear in the last layer, so the Hessian is the
  exact posterior precision of Bayesian linear regression on the MAP features.

The Hessian is exact (autograd), not a generalised Gauss-Newton approximation, so it is only
positive definite at a mode: a run that stopped short of one gets a clear error rather than a
silently wrong covariance. A few Newton steps first move the SVI point to the mode of the
unconstrained density. For the whole of a ReLU net the log joint is not smooth and Adam's
point is rarely a mode; use ``last_layer_laplace`` there (the log joint is concave in the last
layer for Gaussian, Bernoulli and categorical likelihoods, so its Hessian is positive
definite wherever the rest of the net stands). We compute it with PyTorch instead of laplace-torch because the
block is defined by Pyro sample sites (priors, constraints, hierarchical scales), which
laplace-torch, built around ``nn.Module`` parameters and a loss, does not see.

Examples
--------
>>> import pyro_models
>>> from pyro_models import SVIConfig
>>> model = pyro_models.models.get("bnn_regression")(in_features=1, hidden_sizes=[8])
>>> model.last_layer_sites
('net.2.weight', 'net.2.bias')
>>> res = pyro_models.fit(model, model.example_data(), SVIConfig(num_steps=1500, lr=0.02),
...                       guide="last_layer_laplace", seed=0, progress=False)
>>> res.guide.covariance().shape                     # 8 weights + 1 bias
torch.Size([9, 9])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from operator import attrgetter
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.distributions.util import sum_rightmost
from pyro.infer.autoguide import AutoDelta
from torch import nn

from ..init_strategies import get_init_strategy
from ..naming import give_unique_pyro_name
from . import register

__all__ = ["LaplaceGuide", "laplace", "last_layer_laplace"]


class LaplaceGuide(nn.Module):
    """MAP by SVI, then a Gaussian over a block of sites from the Hessian at the mode.

    Parameters
    ----------
    model : callable
        The Pyro model.
    sites : sequence of str, optional
        Latent sites that get the Gaussian; ``None`` means all of them. The other latent sites
        keep their MAP values (a point mass).
    init_loc : str or callable
        Initialisation of the MAP search.

    Notes
    -----
    Before :meth:`fit_laplace` the guide is a point mass (what SVI trains); after it, calling
    the guide draws the block jointly from ``N(map, H^-1)`` in the unconstrained space and
    maps each site to its support (with the Jacobian in the log density, like Pyro's
    ``AutoContinuous``). The Gaussian lives in buffers, so it is saved and loaded with the
    result.
    """

    def __init__(self, model: Callable[..., Any], sites: Sequence[str] | None = None,
                 init_loc: str | Callable[..., Any] = "median") -> None:
        super().__init__()
        if sites is not None:
            if isinstance(sites, str) or not all(isinstance(s, str) for s in sites) or not sites:
                raise TypeError(f"sites must be a non-empty sequence of site names or None, got {sites!r}")
            sites = tuple(sites)
        self.sites = sites
        # Named here: a plain nn.Module is not renamed by the package, and two fits must
        # never share MAP values through Pyro's global param store.
        self.delta = give_unique_pyro_name(AutoDelta(model, init_loc_fn=get_init_strategy(init_loc)),
                                           "LaplaceGuide.delta")
        self._model = (model,)  # a tuple keeps the model out of this module's submodules
        self._layout: list[tuple[str, torch.Size, Any]] | None = None

    # ------------------------------------------------------------------ layout
    def _setup(self) -> None:
        if self._layout is not None:
            return
        proto = self.delta.prototype_trace
        latent = {name: site for name, site in proto.iter_stochastic_nodes()}
        chosen = tuple(latent) if self.sites is None else self.sites
        unknown = [s for s in chosen if s not in latent]
        if unknown:
            raise ValueError(f"Laplace sites {unknown} are not latent sites of the model; "
                             f"its latent sites are {list(latent)}")
        # Shapes in the unconstrained space (a simplex of size K has K - 1 free coordinates).
        self._layout = [(name, _unconstrained_shape(latent[name]), latent[name]["fn"].support) for name in chosen]
        total = sum(math.prod(shape) for _, shape, _ in self._layout)
        ref = next(self.delta.parameters())
        self.register_buffer("loc", torch.zeros(total, dtype=ref.dtype, device=ref.device))
        self.register_buffer("scale_tril", torch.zeros(total, total, dtype=ref.dtype, device=ref.device))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool, device=ref.device))

    @property
    def has_density(self) -> bool:
        """Whether the guide is a proper density over every latent site (all sites Gaussian)."""
        self._require_fitted()
        proto = self.delta.prototype_trace
        return {n for n, _, _ in self._layout} == {n for n, _ in proto.iter_stochastic_nodes()}

    def _require_fitted(self) -> None:
        if self._layout is None or not bool(self.fitted):
            raise RuntimeError("the Laplace approximation has not been computed yet: fit the guide "
                               "(pyro_models.fit runs it after training) or call fit_laplace(**data)")

    def _unflatten(self, theta: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{site: (unconstrained, constrained)}`` from flat vectors ``(..., D)``."""
        out, i = {}, 0
        for name, shape, support in self._layout:
            size = math.prod(shape)
            u = theta[..., i:i + size].reshape(theta.shape[:-1] + tuple(shape))
            out[name] = (u, biject_to(support)(u))
            i += size
        return out

    def map_values(self) -> dict[str, torch.Tensor]:
        """MAP value of every latent site (constrained space); the Gaussian's centre once fitted."""
        out = {name: attrgetter(name)(self.delta).detach()
               for name, _ in self.delta.prototype_trace.iter_stochastic_nodes()}
        if self._layout is not None and bool(self.fitted):
            out.update({name: x for name, (_, x) in self._unflatten(self.loc).items()})
        return out

    # ------------------------------------------------------------------ the Laplace step
    def _neg_log_joint(self, theta: torch.Tensor, fixed: dict[str, torch.Tensor], data: dict[str, Any]) -> torch.Tensor:
        parts = self._unflatten(theta)
        values = dict(fixed)
        log_jac = theta.new_zeros(())
        for name, shape, support in self._layout:
            u, x = parts[name]
            values[name] = x
            log_jac = log_jac + biject_to(support).log_abs_det_jacobian(u, x).sum()
        model = self._model[0]
        with poutine.block():
            tr = poutine.trace(poutine.condition(model, values)).get_trace(**data)
        return -(tr.log_prob_sum() + log_jac)

    def fit_laplace(self, **data: Any) -> LaplaceGuide:
        """Compute ``N(map, H^-1)`` for the block at the current MAP values.

        Parameters
        ----------
        **data
            The full training data (the model's keyword arguments).

        Returns
        -------
        LaplaceGuide
            ``self``.

        Raises
        ------
        ValueError
            The Hessian is not positive definite (the MAP search has not reached a mode).
        """
        if self.delta.prototype_trace is None:
            with torch.no_grad(), poutine.block():
                self.delta(**data)
        self._setup()
        fixed = self.map_values()
        theta0 = torch.cat([biject_to(support).inv(fixed[name]).reshape(-1)
                            for name, _, support in self._layout]).detach()
        fn = lambda t: self._neg_log_joint(t, fixed, data)  # noqa: E731
        theta0, hess, info = self._newton(fn, theta0)
        if int(info) != 0 or not torch.isfinite(hess).all():
            eig = torch.linalg.eigvalsh(hess).min().item() if torch.isfinite(hess).all() else float("nan")
            raise ValueError(
                f"Laplace: the Hessian of the negative log joint at the MAP estimate is not positive "
                f"definite (smallest eigenvalue {eig:.3g}), so the MAP search has not reached a mode; "
                f"train longer (SVIConfig num_steps), adjust lr, or use another guide"
            )
        scale_tril = _cholesky_of_inverse(hess.double()).to(hess.dtype)
        with torch.no_grad():
            self.loc.copy_(theta0)
            self.scale_tril.copy_(scale_tril)
            self.fitted.fill_(True)
        return self

    @staticmethod
    def _hessian(fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
        try:
            hess = torch.autograd.functional.hessian(fn, theta, vectorize=True)
        except RuntimeError:  # some models do not vmap (data-dependent control flow)
            hess = torch.autograd.functional.hessian(fn, theta)
        return (hess + hess.T) / 2

    def _newton(self, fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor,
                max_iter: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Polish the SVI point into the mode of the unconstrained density.

        SVI's point mass maximises ``p(x, z)`` over the constrained values, but the Gaussian
        lives in the unconstrained space, whose density carries the Jacobian of the transform
        (e.g. ``log sigma``); and Adam stops near, not at, the mode. A few damped Newton steps
        (each accepted only if it lowers the negative log joint) close both gaps on smooth
        posteriors and never move away from the SVI point otherwise.
        """
        hess = self._hessian(fn, theta)
        _, info = torch.linalg.cholesky_ex(hess)
        for _ in range(max_iter):
            if int(info) != 0:
                break
            t = theta.clone().requires_grad_(True)
            value = fn(t)
            (grad,) = torch.autograd.grad(value, t)
            step = torch.linalg.solve(hess.double(), grad.double()).to(theta.dtype)
            if grad.abs().max() < 1e-5:
                break
            for damping in (1.0, 0.5, 0.25, 0.125):
                candidate = (theta - damping * step).detach()
                with torch.no_grad():
                    new_value = fn(candidate)
                if torch.isfinite(new_value) and new_value < value:
                    break
            else:
                break
            new_hess = self._hessian(fn, candidate)
            _, new_info = torch.linalg.cholesky_ex(new_hess)
            if int(new_info) != 0:
                # Lower but no longer curved upwards: heading down a funnel with no mode (a
                # centred hierarchical scale); keep the last point where the Gaussian exists.
                break
            theta, hess, info = candidate, new_hess, new_info
        return theta.detach(), hess, info

    def covariance(self) -> torch.Tensor:
        """``H^-1``: the block's covariance in the unconstrained space, ``(D, D)``."""
        self._require_fitted()
        return self.scale_tril @ self.scale_tril.T

    # ------------------------------------------------------------------ drawing
    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        if self._layout is None or not bool(self.fitted):
            out = self.delta(*args, **kwargs)
            self._setup()
            return out
        gaussian = {n for n, _, _ in self._layout}
        plates = self.delta._create_plates(*args, **kwargs)
        theta = pyro.sample("_laplace_latent", dist.MultivariateNormal(self.loc, scale_tril=self.scale_tril),
                            infer={"is_auxiliary": True})
        parts = self._unflatten(theta)
        fixed = self.map_values()
        out = {}
        for name, site in self.delta.prototype_trace.iter_stochastic_nodes():
            event_dim = site["fn"].event_dim
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                if name in gaussian:
                    u, x = parts[name]
                    support = site["fn"].support
                    log_density = biject_to(support).inv.log_abs_det_jacobian(x, u)
                    log_density = sum_rightmost(log_density, log_density.dim() - x.dim() + event_dim)
                    out[name] = pyro.sample(name, dist.Delta(x, log_density=log_density, event_dim=event_dim))
                else:
                    out[name] = pyro.sample(name, dist.Delta(fixed[name], event_dim=event_dim))
        return out

    def posterior_draws(self, num_samples: int) -> dict[str, torch.Tensor]:
        """``num_samples`` draws of every latent site, ``(S, *site_shape)`` (constrained)."""
        self._require_fitted()
        z = torch.randn(num_samples, self.loc.numel(), dtype=self.loc.dtype, device=self.loc.device)
        theta = self.loc + z @ self.scale_tril.T
        out = {name: x for name, (_, x) in self._unflatten(theta).items()}
        for name, value in self.map_values().items():
            if name not in out:
                out[name] = value.expand((num_samples,) + value.shape)
        return out


def _unconstrained_shape(site: dict[str, Any]) -> torch.Size:
    return biject_to(site["fn"].support).inv(site["value"].detach()).shape


def _cholesky_of_inverse(precision: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of ``precision^-1`` without forming the inverse.

    With the order of the coordinates reversed (``P``), ``P H P = M M^T`` gives
    ``H^-1 = (P M^-T P)(P M^-T P)^T`` and ``P M^-T P`` is lower triangular; this stays
    accurate where inverting first and factorising again loses definiteness to round-off.
    """
    flipped = torch.flip(precision, (-2, -1))
    m = torch.linalg.cholesky(flipped)
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
    m_inv_t = torch.linalg.solve_triangular(m, eye, upper=False).mT
    return torch.flip(m_inv_t, (-2, -1))


def _deterministic_model(model: Any) -> str | None:
    from .baselines import has_dropout

    if has_dropout(model):
        return ("the model has dropout layers, which make its log joint random, so it has no "
                "Hessian to take; use the model without dropout, or guide='mc_dropout'")
    return None


def _fit_laplace(guide: LaplaceGuide, model: Callable[..., Any], data: dict[str, Any]) -> LaplaceGuide:
    return guide.fit_laplace(**data)


@register("laplace", post_fit=_fit_laplace, check=_deterministic_model,
          description="MAP then a Gaussian from the Hessian at the mode (Laplace approximation).")
def laplace(model: Callable[..., Any], *, init_loc: str | Callable[..., Any] = "median") -> LaplaceGuide:
    """Laplace approximation over every latent site: MAP by SVI, then ``N(map, H^-1)``.

    Raises ``ValueError`` after training if the Hessian is not positive definite there.
    """
    reason = _deterministic_model(model)
    if reason is not None:
        raise TypeError(f"laplace: {reason}")
    return LaplaceGuide(model, sites=None, init_loc=init_loc)


def _needs_last_layer(model: Any) -> str | None:
    sites = getattr(model, "last_layer_sites", None)
    if sites:
        return _deterministic_model(model)
    return ("it needs a Bayesian net that names its last layer (a last_layer_sites attribute, as "
            "bnn_regression, bnn_classifier and pyro_models.bayesian_net provide); for any other "
            "model use guide=('last_layer_laplace', ...) on a net, or 'laplace'")


@register("last_layer_laplace", post_fit=_fit_laplace, check=_needs_last_layer,
          description="MAP net, then a Gaussian over the last layer from the Hessian (Laplace Redux).")
def last_layer_laplace(model: Callable[..., Any], *, init_loc: str | Callable[..., Any] = "median") -> LaplaceGuide:
    """Last-layer Laplace for Bayesian nets: MAP weights, Gaussian last layer.

    Raises
    ------
    TypeError
        The model does not name its last layer (``last_layer_sites``).
    """
    reason = _needs_last_layer(model)
    if reason is not None:
        raise TypeError(f"last_layer_laplace: {reason}")
    return LaplaceGuide(model, sites=tuple(model.last_layer_sites), init_loc=init_loc)
