"""Structured Gaussian guide for hierarchical models: joint globals, locals conditioned on them.

In a hierarchical model the posterior couples the group-level (global) parameters with the
group effects (local latents, inside a plate), and a mean-field guide misses exactly that
coupling (the funnel of eight schools, the intercept/slope correlation of radon). This guide
keeps the structure of the model, in the unconstrained space:

- **global** sites (outside every plate) are *jointly* Gaussian with a full covariance
  (a full-rank Gaussian within each site plus a linear dependence of each global site on
  every earlier one);
- **local** sites (inside at least one plate) are Gaussian with a diagonal conditional
  covariance and a mean that depends *linearly on every global*: one regression
  coefficient per local element and global coordinate;
- with ``couple_locals=True``, local sites that share their plates and shape also depend
  on each other element by element (a diagonal linear map), so each group's effects are
  jointly Gaussian (e.g. radon's ``alpha_raw[j]`` and ``beta_raw[j]``), while different
  groups stay conditionally independent given the globals.

The joint is a Gaussian whose precision has the sparsity of the model: ``O(G^2 + L G)``
parameters for ``G`` global and ``L`` local coordinates, instead of ``O((G + L)^2)`` for a
full-rank Gaussian. A model with no plates gets a full-rank Gaussian (everything is global).

It is Pyro's :class:`~pyro.infer.autoguide.AutoStructured` with its conditionals and
dependencies derived from the plates of the model's trace. Pyro's alternative,
``AutoHierarchicalNormalMessenger``, conditions locals on globals only through the
*prior*'s dependence (a learned blend of the prior mean and a free location, per site),
keeps globals mean-field, and is a messenger rather than an ``nn.Module`` guide; the
structured Gaussian here captures the global-global and global-local posterior correlations.
On a linear-Gaussian hierarchical model whose local sites hold one scalar per group (given
the globals, the groups are then independent and each group's effects jointly Gaussian)
the exact posterior lies in this family.

Examples
--------
>>> from pyro_models import guides, models
>>> model = models.get("eight_schools")()
>>> data = model.validate_data(model.example_data())
>>> guide = guides.get("structured")(model)
>>> sorted(guide(**data))
['mu', 'tau', 'theta_trans']
>>> guide.conditionals
{'mu': 'mvn', 'tau': 'mvn', 'theta_trans': 'normal'}
>>> {site: sorted(deps) for site, deps in guide.dependencies.items()}
{'tau': ['mu'], 'theta_trans': ['mu', 'tau']}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide import AutoStructured
from torch import Tensor, nn

from . import _check_scale, _init_fn, register

__all__ = ["AutoHierarchical", "DiagonalDependency", "structured"]


class DiagonalDependency(nn.Module):
    """Element-wise linear map between two flattened perturbations of the same size.

    ``downstream += weight * upstream``: element ``i`` of one local site depends on element
    ``i`` of another in the same plate (the same group), and on nothing else.

    Parameters
    ----------
    numel : int
        Size of both flattened perturbations.
    like : Tensor
        Any tensor on the target device and dtype (the weight starts at zero there).

    Examples
    --------
    >>> import torch
    >>> dep = DiagonalDependency(3, torch.zeros(()))
    >>> dep(torch.ones(2, 3)).shape
    torch.Size([2, 3])
    """

    def __init__(self, numel: int, like: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(like.new_zeros(numel))

    def forward(self, upstream: Tensor) -> Tensor:
        """``upstream * weight`` for a flattened perturbation ``(..., numel)``."""
        return upstream * self.weight


def _plates(site: dict[str, Any]) -> tuple[tuple[str, int | None, int], ...]:
    return tuple(sorted((f.name, f.dim, f.size) for f in site["cond_indep_stack"]))


class AutoHierarchical(AutoStructured):
    """:class:`~pyro.infer.autoguide.AutoStructured` configured from the model's plates.

    Sites outside every plate are global (``"mvn"`` conditionals, each depending linearly
    on all earlier globals: one full-rank Gaussian), sites inside a plate are local
    (``"normal"`` conditionals depending linearly on every global and, with
    ``couple_locals``, element-wise on earlier local sites with the same plates and shape).
    Sites are ordered as the model samples them.

    Parameters
    ----------
    model : callable
        A Pyro model with continuous latent sites.
    init_loc_fn : callable
        Pyro init strategy for the locations.
    init_scale : float
        Initial standard deviation of every coordinate (> 0).
    couple_locals : bool
        Element-wise dependencies between local sites of the same plates and shape.

    Attributes
    ----------
    conditionals : dict
        Site name -> ``"mvn"`` or ``"normal"`` (after the first call).
    dependencies : dict
        Downstream site -> {upstream site -> ``nn.Linear`` (no bias, starts at zero) or
        :class:`DiagonalDependency`}, maps of flattened unconstrained perturbations.
    global_sites, local_sites : tuple of str
        The split (after the first call).

    Examples
    --------
    >>> import pyro, pyro.distributions as dist
    >>> def model():
    ...     a = pyro.sample("a", dist.Normal(0.0, 1.0))
    ...     b = pyro.sample("b", dist.Normal(a, 1.0))
    >>> guide = AutoHierarchical(model, init_loc_fn=lambda site: site["fn"].mean, init_scale=0.1)
    >>> _ = guide()
    >>> guide.global_sites, guide.conditionals
    (('a', 'b'), {'a': 'mvn', 'b': 'mvn'})
    >>> {site: sorted(deps) for site, deps in guide.dependencies.items()}
    {'b': ['a']}
    """

    def __init__(
        self,
        model: Callable[..., Any],
        *,
        init_loc_fn: Callable[..., Any],
        init_scale: float = 0.1,
        couple_locals: bool = True,
    ) -> None:
        _check_scale(init_scale)
        if not isinstance(couple_locals, bool):
            raise TypeError(f"couple_locals must be a bool, got {couple_locals!r}")
        self.couple_locals = couple_locals
        self.global_sites: tuple[str, ...] = ()
        self.local_sites: tuple[str, ...] = ()
        super().__init__(model, conditionals="normal", dependencies="linear",
                         init_loc_fn=init_loc_fn, init_scale=float(init_scale))

    def _auto_config(self, sample_sites: dict[str, dict[str, Any]], args: Any, kwargs: Any) -> None:
        # Unconstrained values: their sizes are those of the perturbations the maps act on,
        # and they carry the device and dtype the maps must live on (built after ``.to``).
        free = {n: biject_to(s["fn"].support).inv(s["value"].detach()).detach() for n, s in sample_sites.items()}
        globals_ = [n for n, s in sample_sites.items() if not s["cond_indep_stack"]]
        locals_ = [n for n, s in sample_sites.items() if s["cond_indep_stack"]]
        self.global_sites, self.local_sites = tuple(globals_), tuple(locals_)
        self.conditionals = {n: ("mvn" if n in globals_ else "normal") for n in sample_sites}

        def linear(downstream: str, upstream: str) -> nn.Linear:
            like = free[downstream]
            lin = nn.Linear(free[upstream].numel(), like.numel(), bias=False, device=like.device, dtype=like.dtype)
            nn.init.zeros_(lin.weight)  # start at the mean-field guide
            return lin

        deps: dict[str, dict[str, Any]] = {}
        for i, name in enumerate(globals_):
            if i:
                deps[name] = {u: linear(name, u) for u in globals_[:i]}
        for i, name in enumerate(locals_):
            d: dict[str, Any] = {u: linear(name, u) for u in globals_}
            if self.couple_locals:
                key = (_plates(sample_sites[name]), free[name].shape)
                for upstream in locals_[:i]:
                    if (_plates(sample_sites[upstream]), free[upstream].shape) == key:
                        d[upstream] = DiagonalDependency(free[name].numel(), free[name])
            if d:
                deps[name] = d
        self.dependencies = deps
        self._original_model = None


@register("structured",
          description="Hierarchical Gaussian: globals jointly Gaussian, locals linear in the globals (AutoStructured).")
def structured(
    model: Callable[..., Any],
    *,
    couple_locals: bool = True,
    init_scale: float = 0.1,
    init_loc: str | Callable[..., Any] = "median",
) -> AutoHierarchical:
    """Structured Gaussian guide for hierarchical models (see the module docstring).

    Parameters
    ----------
    model : callable
        A Pyro model with continuous latent sites; plates mark the local ones.
    couple_locals : bool
        Let local sites of the same plates and shape depend on each other element-wise
        (each group's effects jointly Gaussian).
    init_scale : float
        Initial standard deviation of every coordinate in the unconstrained space (> 0).
    init_loc : str or callable
        Initial location: an init strategy name (``"median"``, ``"mean"``, ``"feasible"``,
        ``"uniform"``, ``"sample"``) or a Pyro init callable.

    Returns
    -------
    AutoHierarchical

    Raises
    ------
    ValueError, TypeError
        A bad option.

    Examples
    --------
    >>> from pyro_models import guides
    >>> guides.entry("structured").options()
    {'couple_locals': True, 'init_scale': 0.1, 'init_loc': 'median'}
    """
    return AutoHierarchical(model, init_loc_fn=_init_fn(init_loc), init_scale=init_scale,
                            couple_locals=couple_locals)
