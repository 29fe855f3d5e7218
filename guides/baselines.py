"""The practical baselines as guides: deep ensembles, SWAG and MC dropout.

Each is a posterior approximation like any other guide: it trains through the same
:func:`pyro_models.fit` and its :class:`~pyro_models.FitResult` offers the same ``samples``,
``predict``, ``summary`` and ``to_inference_data``. A guide tells the SVI engine what it
needs through two optional attributes, so no model or engine special-cases it:

- ``svi_overrides``: config fields the guide fixes (an ensemble trains its members as the
  vectorised particles of one ELBO, so ``num_particles`` is the number of members);
- ``svi_fallback_overrides``: config fields to use instead when the model cannot run under
  ``svi_overrides`` on the first evaluation (an ensemble whose model does not broadcast over
  a leading member dim trains its members one after another);
- ``posterior_draws(num_samples)``: the guide's own draws of the latent sites, used instead of
  running the guide once per draw (ensemble members in turn; SWAG's Gaussian).

A guide with an ``on_step(info)`` method is also called after every optimiser step (SWAG
collects its trajectory there).

Examples
--------
>>> import pyro_models
>>> from pyro_models import SVIConfig
>>> model = pyro_models.models.get("linear_regression")()
>>> data = model.example_data()
>>> res = pyro_models.fit(model, data, SVIConfig(num_steps=200, lr=0.05, num_posterior_samples=10),
...                       guide=("deep_ensemble", {"members": 5}), seed=0, progress=False)
>>> res.samples()["weight"].shape          # members in turn: 10 draws of 5 members
torch.Size([10, 2])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from operator import attrgetter
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide import AutoDelta
from pyro.nn import PyroModule, PyroParam
from pyro.poutine.runtime import get_plates
from pyro.poutine.util import site_is_subsample
from torch import nn

from ..init_strategies import get_init_strategy
from ..naming import give_unique_pyro_name
from . import register

__all__ = ["EnsembleGuide", "SWAGGuide", "deep_ensemble", "swag", "mc_dropout", "has_dropout"]


def _latent_sites(model: Callable[..., Any], args: tuple, kwargs: dict, init_loc: Callable[..., Any]):
    """One model trace with values from ``init_loc``: the latent sites and the plates' depth."""
    from pyro.infer.autoguide.initialization import InitMessenger

    with torch.no_grad(), poutine.block(), InitMessenger(init_loc):
        tr = poutine.trace(model).get_trace(*args, **kwargs)
    sites, nesting = {}, 0
    for name, site in tr.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        for f in site["cond_indep_stack"]:
            if f.vectorized and f.dim is not None:
                nesting = max(nesting, -f.dim)
        if not site["is_observed"] and not site["infer"].get("_deterministic", False):
            sites[name] = site
    if not sites:
        raise ValueError("the model has no latent sites to put a guide on")
    return sites, nesting


def _check_members(members: int) -> int:
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ValueError(f"members must be a positive int, got {members!r}")
    return members


class EnsembleGuide(PyroModule):
    """``members`` point estimates (MAP), independently initialised, trained together.

    The members are the vectorised particles of one ELBO: each particle evaluates the model
    at its own member, so the loss is the mean of the members' negative log joints and each
    member follows its own MAP gradient (the members share nothing). Draws cycle through the
    members, so predictions are the equal-weight mixture of Lakshminarayanan et al. (2017).

    Vectorising needs a model whose sites broadcast over an extra leading dim (batch dims
    declared with ``pyro.plate``). For a model that does not (e.g. ``X @ beta`` with a latent
    vector ``beta``), the SVI engine falls back, silently, to ``svi_fallback_overrides``: the
    same ELBO over ``M`` sequential particles, where the guide's ``M`` plain calls per step
    visit the members in turn. The objective, the gradients and the members' initial values
    are the same; each step costs ``M`` model runs instead of one. The fit's
    ``config.vectorize_particles`` says which path trained it.

    Parameters
    ----------
    model : callable
    members : int
        Ensemble size M.
    init_loc : str or callable
        Initialisation of each member; the default ``"sample"`` draws each member from the
        prior (independent random initialisations). ``"net"`` starts each member from the
        net's own default initialisation (PyTorch's ``reset_parameters``), for models that
        provide ``initial_values()`` (the BNNs): the recipe of Lakshminarayanan et al.
        (2017). Prior draws from ``N(0, 1)`` weight priors give outputs far larger than the
        data, which a short training budget may not undo; other sites (the noise scale,
        hierarchical scales) are then drawn from the prior.
    """

    def __init__(self, model: Callable[..., Any], members: int = 5, init_loc: str | Callable[..., Any] = "sample"):
        super().__init__()
        self.members = _check_members(members)
        self._model = (model,)  # a tuple: keep the model out of this module's parameters
        self._net_init = init_loc == "net"
        if self._net_init and not callable(getattr(model, "initial_values", None)):
            raise ValueError(
                f"init_loc='net' needs a model with initial_values() (a BNN from bayesian_net or "
                f"bnn_regression/bnn_classifier); {type(model).__name__} has none. Use 'sample', "
                f"'median', 'uniform' or a callable"
            )
        self._init_loc = get_init_strategy("sample" if self._net_init else init_loc)
        self._sites: dict[str, dict[str, Any]] | None = None
        self.locs = PyroModule()
        self._cycle = 0

    @property
    def svi_overrides(self) -> dict[str, Any]:
        return {"num_particles": self.members, "vectorize_particles": True}

    @property
    def svi_fallback_overrides(self) -> dict[str, Any]:
        # A sequential loop over the members: M plain calls per ELBO evaluation, each taking
        # the next member (see ``forward``), so every step still updates every member once.
        return {"num_particles": self.members, "vectorize_particles": False}

    def _setup(self, args: tuple, kwargs: dict) -> None:
        model = self._model[0]
        values: dict[str, list[torch.Tensor]] = {}
        for _ in range(self.members):
            init = self._init_loc
            if self._net_init:
                net_values = model.initial_values()  # a fresh default initialisation per member
                base = self._init_loc

                def init(site: dict[str, Any], net_values: dict[str, torch.Tensor] = net_values,
                         base: Callable[..., Any] = base) -> torch.Tensor:
                    value = net_values.get(site["name"])
                    return base(site) if value is None else value
            sites, nesting = _latent_sites(model, args, kwargs, init)
            for name, site in sites.items():
                values.setdefault(name, []).append(site["value"].detach())
        self._nesting = nesting
        self._sites = {}
        for name, site in sites.items():
            fn = site["fn"]
            event = fn.event_shape
            batch = site["value"].shape[: site["value"].dim() - len(event)]
            self._sites[name] = {"event_dim": len(event), "batch": tuple(batch), "support": fn.support,
                                 "frames": [f for f in site["cond_indep_stack"] if f.vectorized]}
            stacked = torch.stack(values[name])  # (M, *batch, *event)
            setattr(self.locs, name.replace(".", "__"),
                    PyroParam(stacked, constraint=fn.support, event_dim=len(event) + len(batch)))

    def member_values(self) -> dict[str, torch.Tensor]:
        """Each latent site's members, ``(M, *site_shape)`` (constrained space)."""
        if self._sites is None:
            raise RuntimeError("the ensemble has not been run yet (fit it first)")
        return {name: getattr(self.locs, name.replace(".", "__")) for name in self._sites}

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        if self._sites is None:
            self._setup(args, kwargs)
        k, m = self._nesting, self.members
        over_members = any(f.dim == -(k + 1) and f.size == m for f in get_plates())
        out = {}
        for name, info in self._sites.items():
            v = getattr(self.locs, name.replace(".", "__"))
            if over_members:
                pad = (1,) * (k - len(info["batch"]))
                v = v.reshape((m,) + pad + v.shape[1:])
            else:  # a plain call (sequential training, parameters on load): one member in turn
                v = v[self._cycle % m]
            out[name] = pyro.sample(name, dist.Delta(v, event_dim=info["event_dim"]))
        if not over_members:
            self._cycle += 1
        return out

    def posterior_draws(self, num_samples: int) -> dict[str, torch.Tensor]:
        """``num_samples`` draws, member ``i % M`` for draw ``i``: ``(S, *site_shape)``."""
        idx = torch.arange(num_samples) % self.members
        return {k: v.detach()[idx.to(v.device)] for k, v in self.member_values().items()}


class SWAGGuide(nn.Module):
    """SWAG (Maddox et al., 2019): a Gaussian fitted to the optimiser's trajectory of the MAP.

    Training is MAP (an :class:`~pyro.infer.autoguide.AutoDelta`); after the first
    ``swa_start`` fraction of the steps, every ``collect_every`` steps the unconstrained
    parameter vector is collected into running first and second moments and the last
    ``rank`` deviations from the running mean. The posterior is
    ``N(mean, diag/2 + D D^T / (2 (rank - 1)))`` (``rank=0``: diagonal SWAG), drawn in the
    unconstrained space and mapped to each site's support.

    Parameters
    ----------
    model : callable
    rank : int
        Number of deviation columns (low-rank part); 0 gives diagonal SWAG.
    swa_start : float
        Fraction of the steps before collection starts (the run should have converged).
    collect_every : int
        Steps between collected snapshots.
    init_loc : str or callable
    """

    def __init__(self, model: Callable[..., Any], rank: int = 20, swa_start: float = 0.5, collect_every: int = 1,
                 init_loc: str | Callable[..., Any] = "median"):
        super().__init__()
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0 or rank == 1:
            raise ValueError(f"rank must be 0 (diagonal SWAG) or an int >= 2, got {rank!r}")
        if not (isinstance(swa_start, (int, float)) and 0.0 <= swa_start < 1.0):
            raise ValueError(f"swa_start must be a fraction in [0, 1), got {swa_start!r}")
        if isinstance(collect_every, bool) or not isinstance(collect_every, int) or collect_every < 1:
            raise ValueError(f"collect_every must be a positive int, got {collect_every!r}")
        self.rank, self.swa_start, self.collect_every = rank, float(swa_start), collect_every
        # A plain nn.Module is not renamed by the package, so name the inner PyroModule here:
        # otherwise two SWAG fits would share its values through Pyro's global param store.
        self.delta = give_unique_pyro_name(AutoDelta(model, init_loc_fn=get_init_strategy(init_loc)), "SWAGGuide.delta")
        self._layout: list[tuple[str, torch.Size, Any]] | None = None

    # The moments are buffers, so they travel with state_dict / .to(device) / save-load.
    def _setup_buffers(self) -> None:
        if self._layout is not None:
            return
        self._layout = []
        total = 0
        for name, site in self.delta.prototype_trace.iter_stochastic_nodes():
            # The unconstrained shape: a simplex of size K has K - 1 free coordinates.
            shape = biject_to(site["fn"].support).inv(site["value"].detach()).shape
            self._layout.append((name, shape, site["fn"].support))
            total += math.prod(shape)
        ref = next(self.delta.parameters())
        self.register_buffer("mean", torch.zeros(total, dtype=ref.dtype, device=ref.device))
        self.register_buffer("sq_mean", torch.zeros(total, dtype=ref.dtype, device=ref.device))
        self.register_buffer("deviations", torch.zeros(max(self.rank, 1), total, dtype=ref.dtype, device=ref.device))
        self.register_buffer("num_collected", torch.zeros((), dtype=torch.long, device=ref.device))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.delta(*args, **kwargs)
        self._setup_buffers()
        return out

    def _flat_unconstrained(self) -> torch.Tensor:
        parts = []
        for name, _, support in self._layout:
            value = attrgetter(name)(self.delta)  # AutoDelta keeps each site as a (nested) PyroParam
            parts.append(biject_to(support).inv(value.detach()).reshape(-1))
        return torch.cat(parts)

    @torch.no_grad()
    def on_step(self, info: dict[str, Any]) -> None:
        """Collect the trajectory (called by the SVI engine after each optimiser step)."""
        if self._layout is None:
            return
        step, total = info["step"], info["num_steps"]
        start = int(self.swa_start * total)
        if step <= start or (step - start) % self.collect_every:
            return
        theta = self._flat_unconstrained()
        n = int(self.num_collected)
        self.mean.mul_(n / (n + 1)).add_(theta / (n + 1))
        self.sq_mean.mul_(n / (n + 1)).add_(theta.pow(2) / (n + 1))
        if self.rank:
            self.deviations.copy_(torch.roll(self.deviations, -1, 0))
            self.deviations[-1] = theta - self.mean
        self.num_collected += 1

    def _unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for name, shape, support in self._layout:
            size = math.prod(shape)
            out[name] = biject_to(support)(theta[..., i:i + size].reshape(theta.shape[:-1] + tuple(shape)))
            i += size
        return out

    def mean_values(self) -> dict[str, torch.Tensor]:
        """The SWA solution: the running mean of the trajectory, per site (constrained)."""
        return self._unflatten(self.mean)

    def posterior_draws(self, num_samples: int) -> dict[str, torch.Tensor]:
        """SWAG draws of each latent site, ``(S, *site_shape)``."""
        n = int(self.num_collected)
        if n < 2:
            raise RuntimeError(
                f"SWAG collected {n} snapshot(s); it needs at least 2 (more steps, a smaller "
                f"swa_start or collect_every)"
            )
        var = (self.sq_mean - self.mean.pow(2)).clamp_min(1e-30)
        z = torch.randn(num_samples, var.numel(), dtype=var.dtype, device=var.device)
        theta = self.mean + z * (var / 2).sqrt()
        k = min(self.rank, n)
        if k >= 2:
            dev = self.deviations[-k:]
            z2 = torch.randn(num_samples, k, dtype=var.dtype, device=var.device)
            theta = theta + (z2 @ dev) / math.sqrt(2 * (k - 1))
        return self._unflatten(theta)


def has_dropout(model: Any) -> bool:
    """Whether ``model`` (an ``nn.Module``) contains a dropout layer with ``p > 0``."""
    if not isinstance(model, nn.Module):
        return False
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


def _needs_dropout(model: Any) -> str | None:
    if has_dropout(model):
        return None
    return (f"mc_dropout needs a model with dropout layers (p > 0); {type(model).__name__} has none "
            f"(e.g. models.get('bnn_regression')(..., dropout=0.1), or a net containing nn.Dropout)")


@register("deep_ensemble", description="M independently initialised MAP members trained together; a mixture.")
def deep_ensemble(model: Callable[..., Any], *, members: int = 5,
                  init_loc: str | Callable[..., Any] = "sample") -> EnsembleGuide:
    """Deep ensemble: ``members`` MAP point estimates from independent random initialisations.

    The members train as the vectorised particles of one loss (one batched computation per
    step); the predictive is their equal-weight mixture. ``num_particles`` of the config is
    set to ``members``. A model that cannot run vectorised over the members (it does not
    broadcast over a leading dim) trains them one after another instead: same result,
    ``members`` model runs per step, ``config.vectorize_particles`` is then ``False``.
    """
    return EnsembleGuide(model, members=members, init_loc=init_loc)


def _swag_finish(guide: SWAGGuide, model: Callable[..., Any], data: dict[str, Any]) -> SWAGGuide:
    guide.posterior_draws(1)  # fails now, with the fix, if too few snapshots were collected
    return guide


@register("swag", post_fit=_swag_finish,
          description="SWAG: a diagonal plus low-rank Gaussian from the optimiser's trajectory of the MAP.")
def swag(model: Callable[..., Any], *, rank: int = 20, swa_start: float = 0.5, collect_every: int = 1,
         init_loc: str | Callable[..., Any] = "median") -> SWAGGuide:
    """SWAG (Maddox et al., 2019); ``rank=0`` is diagonal SWAG. Use a constant learning rate."""
    return SWAGGuide(model, rank=rank, swa_start=swa_start, collect_every=collect_every, init_loc=init_loc)


@register("mc_dropout", check=_needs_dropout, description="MC dropout: MAP weights, dropout kept on at prediction (T = draws).")
def mc_dropout(model: Callable[..., Any], *, init_loc: str | Callable[..., Any] = "median") -> AutoDelta:
    """MC dropout (Gal & Ghahramani, 2016) for models with dropout layers.

    Training is MAP with dropout active (the prior is the weight decay); every posterior
    draw is one stochastic forward pass with fresh dropout masks, so ``num_posterior_samples``
    is the number of passes T.

    Raises
    ------
    TypeError
        The model has no dropout layer (e.g. ``bnn_regression(dropout=0.1)`` has one).
    """
    reason = _needs_dropout(model)
    if reason is not None:
        raise TypeError(reason)
    return AutoDelta(model, init_loc_fn=get_init_strategy(init_loc))
