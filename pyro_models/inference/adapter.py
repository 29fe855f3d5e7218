"""One view of "the model" for the engines, whatever the user handed to ``fit``.

A registered name, a :class:`~pyro_models.models.BayesianModel` and a plain Pyro callable
all become a :class:`ModelAdapter`: the callable, its validated data, which data keys are
observed (so prediction can drop them), and its latent / deterministic / observed sites.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.util import site_is_subsample

from ..data import check_callable_data
from ..init_strategies import get_init_strategy
from ..errors import DataValidationError
from ..models import BayesianModel
from ..models import get as get_model

__all__ = ["ModelAdapter", "resolve_model", "SiteInfo", "is_factor_site"]


def is_factor_site(site: Mapping[str, Any]) -> bool:
    """Whether a trace site is a ``pyro.factor`` term (an observed ``Unit`` site).

    Factors add to the log joint (the engines keep them) but are not data: they have no
    pointwise log-likelihood and nothing to predict.
    """
    return site["type"] == "sample" and isinstance(site["fn"], pyro.distributions.Unit)


@dataclass(frozen=True)
class SiteInfo:
    latent: tuple[str, ...]
    deterministic: tuple[str, ...]
    observed: dict[str, str]  # observed site name -> data key
    plates: dict[str, int]  # plate name -> full size
    site_plates: dict[str, tuple[str, ...]] = field(default_factory=dict)  # latent site -> its plates
    max_plate_nesting: int = 0


@dataclass
class ModelAdapter:
    fn: Callable[..., Any]
    name: str
    registered_name: str | None
    hparams: dict[str, Any] | None
    sites: SiteInfo = field(init=False)
    spec: Any = None

    @property
    def is_registered_model(self) -> bool:
        return isinstance(self.fn, BayesianModel)

    def validate(self, data: Mapping[str, Any], *, require_observed: bool = True) -> dict[str, Any]:
        if isinstance(self.fn, BayesianModel):
            return self.fn.validate_data(data, require_observed=require_observed)
        return check_callable_data(self.fn, data)

    def inspect(self, data: Mapping[str, Any]) -> SiteInfo:
        """Trace the model once on ``data`` to find its sites (no gradients, prior draws)."""
        # Values come from an init strategy rather than the prior, so improper (flat)
        # priors, which cannot be sampled, are inspected too.
        base_init = get_init_strategy("uniform")

        def init(site: dict[str, Any]) -> torch.Tensor:
            # Refuse discrete latents here, by name: Pyro's own error at this point speaks of
            # autoguides, whatever the engine.
            try:
                discrete = site["fn"].support.is_discrete
            except NotImplementedError:  # a custom distribution without a declared support
                discrete = False
            if discrete:
                kind = "enumerated " if site["infer"].get("enumerate") else ""
                raise ValueError(
                    f"model {self.name!r} has a discrete latent site {site['name']!r} "
                    f"({kind}{type(site['fn']).__name__}); pyro-models' engines (NUTS and the SVI "
                    f"guides) infer continuous latent variables only. Marginalise it in the model "
                    f"(e.g. dist.MixtureSameFamily for a mixture, or a logsumexp over its values "
                    f"in pyro.factor), or observe it"
                )
            return base_init(site)

        with torch.no_grad(), poutine.block():
            tr = poutine.trace(InitMessenger(init)(self.fn)).get_trace(**data)
        latent, determ, observed, plates, site_plates = [], [], {}, {}, {}
        nesting = 0
        ids = {id(v): k for k, v in data.items() if isinstance(v, torch.Tensor)}
        for name, site in tr.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            for frame in site["cond_indep_stack"]:
                if frame.vectorized and frame.dim is not None:
                    nesting = max(nesting, -frame.dim)
                if frame.vectorized and frame.name not in plates:
                    plates[frame.name] = int(frame.full_size if frame.full_size is not None else frame.size)
            if site["infer"].get("_deterministic"):
                determ.append(name)
            elif is_factor_site(site):
                continue
            elif site["is_observed"]:
                key = ids.get(id(site["value"]))
                if key is None and name in data:
                    key = name
                if key is None:
                    # an obs built from data inside the model (e.g. a transformed tensor)
                    key = ""
                observed[name] = key
            else:
                latent.append(name)
                site_plates[name] = tuple(f.name for f in site["cond_indep_stack"] if f.vectorized)
        if not latent:
            raise DataValidationError(
                f"model {self.name!r} has no latent sample sites given this data; nothing to infer"
            )
        self.sites = SiteInfo(tuple(latent), tuple(determ), observed, plates, site_plates, nesting)
        return self.sites

    def predictive_data(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` with the observed keys set to ``None`` (the model then samples them)."""
        out = dict(data)
        if self.spec is not None:
            for key in self.spec.observed:
                out[key] = None
            return out
        for key in self.sites.observed.values():
            if key:
                out[key] = None
        return out


def resolve_model(model: Any) -> ModelAdapter:
    """Turn a registered name, a BayesianModel or a plain callable into a :class:`ModelAdapter`."""
    if isinstance(model, str):
        fn = get_model(model)()
        if not isinstance(fn, BayesianModel):
            raise TypeError(f"registered model {model!r} did not build a BayesianModel, got {type(fn).__name__}")
        reg = model
    elif isinstance(model, type) and issubclass(model, BayesianModel):
        raise TypeError(
            f"pass a model instance, not the class: fit({model.__name__}(), ...) "
            f"or the registered name"
        )
    elif callable(model):
        fn = model
        reg = type(model).registered_name if isinstance(model, BayesianModel) else None
    else:
        raise TypeError(
            "model must be a registered name (see pyro_models.models.available()), a BayesianModel "
            f"or a Pyro model callable, got {type(model).__name__}"
        )
    if isinstance(fn, BayesianModel):
        hp = fn.jsonable_hparams()
        name = reg or type(fn).__name__
        return ModelAdapter(fn=fn, name=name, registered_name=reg, hparams=hp, spec=fn.data_spec)
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return ModelAdapter(fn=fn, name=name, registered_name=None, hparams=None)
