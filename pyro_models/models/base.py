"""The base class every registered model derives from."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from pyro.nn import PyroModule

from ..data import DataSpec, validate_data
from ..naming import give_unique_pyro_name

__all__ = ["BayesianModel"]


def is_jsonable(value: Any) -> bool:
    """Whether ``json.dumps`` accepts ``value`` (what save/load can record)."""
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


class BayesianModel(PyroModule):
    """A Pyro model with one declared data contract.

    Subclasses set the class attribute ``data_spec`` (a :class:`~pyro_models.data.DataSpec`)
    and implement ``forward(**data)``; observed fields default to ``None`` so that calling
    the model without them draws from the predictive. Models never know their engine:
    :func:`pyro_models.fit` chooses SVI or MCMC from the config.

    Constructor keyword arguments are recorded in :attr:`hparams` so a saved result can
    rebuild the model by its registered name.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist
    >>> from pyro_models.data import DataSpec, Field
    >>> class Coin(BayesianModel):
    ...     data_spec = DataSpec((Field("flips", ("N",), observed=True, required=True),))
    ...     def __init__(self, a: float = 1.0, b: float = 1.0):
    ...         super().__init__()
    ...         self.a, self.b = a, b
    ...     def forward(self, flips=None):
    ...         p = pyro.sample("p", dist.Beta(self.a, self.b))
    ...         n = 1 if flips is None else flips.shape[0]
    ...         with pyro.plate("data", n):
    ...             return pyro.sample("flips", dist.Bernoulli(p), obs=flips)
    >>> Coin(a=2.0).hparams
    {'a': 2.0, 'b': 1.0}
    """

    data_spec: ClassVar[DataSpec]
    #: Name under which the class was first registered (set by ``models.register``).
    registered_name: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        sig = inspect.signature(init)

        @functools.wraps(init)
        def __init__(self: BayesianModel, *args: Any, **kw: Any) -> None:
            # The outermost constructor in a subclass chain records the arguments.
            outermost = "_hparams" not in self.__dict__
            if outermost:
                bound = sig.bind(self, *args, **kw)
                bound.apply_defaults()
                hp = {k: v for k, v in bound.arguments.items() if k != "self"}
                for k, p in sig.parameters.items():
                    if p.kind is inspect.Parameter.VAR_KEYWORD and k in hp:
                        hp.update(hp.pop(k))
                # JSON form (tuples become lists) so a saved and reloaded model compares equal.
                hp = {k: (json.loads(json.dumps(v)) if is_jsonable(v) else v) for k, v in hp.items()}
                self.__dict__["_hparams"] = hp
            init(self, *args, **kw)
            if outermost:
                give_unique_pyro_name(self)

        cls.__init__ = __init__  # type: ignore[method-assign]

    @property
    def hparams(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable ones are what ``save`` records)."""
        return dict(self.__dict__.get("_hparams", {}))

    def jsonable_hparams(self) -> dict[str, Any] | None:
        """``hparams`` if every value is JSON-serialisable, else ``None``."""
        hp = self.hparams
        return hp if all(is_jsonable(v) for v in hp.values()) else None

    def validate_data(
        self, data: Mapping[str, Any], *, require_observed: bool = True
    ) -> dict[str, torch.Tensor]:
        """Validate ``data`` against :attr:`data_spec` (see :func:`pyro_models.data.validate_data`)."""
        return validate_data(self.data_spec, data, require_observed=require_observed)

    @property
    def observed_fields(self) -> tuple[str, ...]:
        return self.data_spec.observed

    # ------------------------------------------------------------------ optional hooks
    #: ``False`` for models with point-estimated network weights (e.g. a VAE decoder): NUTS
    #: would treat those as constants, so ``fit`` refuses MCMC for them with a clear error.
    supports_mcmc: ClassVar[bool] = True
    #: ``True`` for models whose predictions condition on the training data (Gaussian
    #: processes): ``predict()`` and held-out ``log_likelihood(data)`` then go through
    #: :meth:`prediction_inputs` with the training data, also when no new data are given.
    predicts_through_training_data: ClassVar[bool] = False

    #: Deterministic sites ``predict()`` also draws so :meth:`summarize_predictions` can use
    #: them (e.g. a regression net's per-draw ``"loc"`` and ``"scale"``).
    prediction_sites: ClassVar[tuple[str, ...]] = ()

    def summarize_predictions(self, draws: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Summaries of posterior predictive draws, added to ``FitResult.predict``'s output.

        ``draws`` maps the observed sites and :attr:`prediction_sites` to ``(S, ...)`` tensors.
        The default adds nothing; regression nets return the predictive mean with epistemic and
        aleatoric variance, classifiers the probabilities, entropy and mutual information.
        """
        return {}

    def prediction_chunk_elements(self, data: Mapping[str, Any]) -> int | None:
        """Site values per vectorised chunk of posterior draws when evaluating at ``data``.

        ``FitResult.predict`` and ``log_likelihood`` run the model once per chunk of draws;
        by default a chunk holds about :data:`~pyro_models.inference.predictive.CHUNK_ELEMENTS`
        site values, which also bounds the model's working memory when that grows with the
        number of draws. A model whose working memory does not (it loops over draws inside)
        returns a larger budget here: fewer, larger chunks pay less per-run overhead. ``None``
        keeps the default.
        """
        return None

    def prediction_inputs(
        self, train: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The keyword arguments ``FitResult.predict(new)`` runs the model with.

        ``train`` is the validated training data, ``new`` the validated prediction inputs
        (observed fields already dropped). The default predicts from ``new`` alone; models
        whose predictions condition on the training data (Gaussian processes) merge both here.
        """
        return dict(new)

    def example_data(self, seed: int = 0) -> dict[str, Any]:
        """A small data set that satisfies this model's contract.

        Used by the contract tests over the registry (every registered model must fit its
        own example with every applicable guide) and by the docs. Registered models override it.

        Raises
        ------
        NotImplementedError
            The model does not provide an example.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define example_data()")

    def forward(self, **data: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward(**data)")
