"""Bayesian neural networks from any ``torch.nn.Module``.

:func:`bayesian_net` turns a user's net Bayesian: every parameter tensor becomes a latent
sample site named by its module path (``"net.0.weight"``) with a prior (Gaussian, Laplace or
a hierarchical Gaussian with a learned per-tensor scale), chosen per module if wanted; listed
modules stay deterministic (point estimates). A likelihood turns the net's output into a
distribution over ``y``: homoscedastic Gaussian with a learned (or fixed) noise, heteroscedastic
Gaussian (the net outputs a mean and a scale), Bernoulli or Categorical.

Two MLPs are registered: ``bnn_regression`` and ``bnn_classifier``.

The model is engine-agnostic: SVI (minibatches scale the likelihood by ``N / batch_size``
through the ``"data"`` plate) and NUTS (small nets, full batch) both work, and prediction is
vectorised over posterior draws: with draws stacked along leading batch dimensions of the
weights, the net runs once under :func:`torch.func.vmap`, or, on CPU when each draw has
enough work (many inputs), once per draw inside a single model run, which keeps a draw's
activations in cache (:mod:`pyro_models.models.per_draw`).

``FitResult.predict`` summarises the draws: a regression net gives the predictive mean and its
variance split into epistemic and aleatoric parts, a classifier the predictive probabilities,
entropy and mutual information (see :mod:`pyro_models.evaluation.uncertainty`).

Examples
--------
>>> import torch, pyro_models
>>> from torch import nn
>>> from pyro_models.models.bnn import bayesian_net
>>> net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
>>> bnn = bayesian_net(net, prior="normal", prior_scale=1.0)
>>> x = torch.linspace(-1, 1, 20).unsqueeze(-1)
>>> y = torch.sin(3 * x[:, 0])
>>> res = pyro_models.fit(bnn, {"x": x, "y": y}, pyro_models.SVIConfig(num_steps=100, lr=0.02),
...                       seed=0, progress=False)
>>> pred = res.predict({"x": torch.tensor([[0.0], [3.0]])}, num_samples=50)
>>> tuple(pred["y"].shape), tuple(pred.mean.shape), tuple(pred.epistemic_var.shape)
((50, 2), (2,), (2,))
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.utils.stateless import _reparametrize_module

from ..data import DataSpec, Field, check_binary
from ..errors import DataValidationError
from ..evaluation.uncertainty import decompose_classification, decompose_regression
from . import per_draw, register
from .base import BayesianModel

__all__ = [
    "BNN",
    "BNNRegression",
    "BNNClassifier",
    "bayesian_net",
    "make_mlp",
    "LIKELIHOODS",
    "PRIORS",
    "ACTIVATIONS",
]

#: Likelihoods and what the net must output per datum.
LIKELIHOODS: dict[str, str] = {
    "gaussian": "(N,) or (N, 1): the mean; the noise sigma is a latent site (or fixed)",
    "heteroscedastic": "(N, 2): column 0 the mean, column 1 the scale before softplus",
    "bernoulli": "(N,) or (N, 1): the logit of P(y = 1)",
    "categorical": "(N, C) with C >= 2: the class logits",
}
#: Prior families for the Bayesian parameters.
PRIORS: tuple[str, ...] = ("normal", "laplace", "hierarchical")
#: Activations of :func:`make_mlp`.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU, "elu": nn.ELU,
}
_REGRESSION = ("gaussian", "heteroscedastic")
# Added to the softplus of the heteroscedastic scale so it never underflows to zero.
_MIN_SCALE = 1e-6

#: A prior spec: a family name, or ``{"name": family, "scale": float}``.
PriorSpec = Union[str, Mapping[str, Any]]


def _positive(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite float{' or None' if allow_none else ''}, got {value!r}")
    return float(value)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def make_mlp(
    in_features: int,
    hidden_sizes: Sequence[int],
    out_features: int,
    activation: str = "relu",
    dropout: float = 0.0,
) -> nn.Sequential:
    """A multilayer perceptron ``Linear -> act [-> Dropout] -> ... -> Linear``.

    Parameters
    ----------
    in_features : int
    hidden_sizes : sequence of int
        Widths of the hidden layers (empty: a linear model).
    out_features : int
    activation : {"relu", "tanh", "gelu", "silu", "elu"}
    dropout : float
        Dropout probability after each hidden activation (0: no dropout layers). Dropout
        stays active at prediction, which is what the ``mc_dropout`` guide relies on.

    Returns
    -------
    nn.Sequential
        Without dropout, linear layers at even indices (``"0"``, ``"2"``, ...) and activations
        between them; with dropout, every third index (``"0"``, ``"3"``, ...).

    Raises
    ------
    ValueError
        A non-positive size or an unknown activation.

    Examples
    --------
    >>> make_mlp(2, (8,), 1, "tanh")
    Sequential(
      (0): Linear(in_features=2, out_features=8, bias=True)
      (1): Tanh()
      (2): Linear(in_features=8, out_features=1, bias=True)
    )
    """
    _positive_int("in_features", in_features)
    _positive_int("out_features", out_features)
    if isinstance(hidden_sizes, (str, bytes)) or not isinstance(hidden_sizes, Sequence):
        raise ValueError(f"hidden_sizes must be a sequence of positive ints, got {hidden_sizes!r}")
    for h in hidden_sizes:
        _positive_int("hidden_sizes entries", h)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    layers: list[nn.Module] = []
    widths = [in_features, *hidden_sizes]
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(widths[-1], out_features))
    return nn.Sequential(*layers)


def _record_list_hparam(model: BayesianModel, name: str, value: Sequence[int]) -> None:
    """Record a sequence hyperparameter as a list, as JSON gives it back (save/load round trip)."""
    hp = model.__dict__.get("_hparams")
    if hp is not None and name in hp:
        hp[name] = list(value)


@dataclass(frozen=True)
class _ParamPrior:
    """The prior of one Bayesian parameter tensor."""

    name: str  # path inside the net, e.g. "0.weight"
    site: str  # sample site, "net." + name
    shape: tuple[int, ...]
    family: str
    scale: float

    @property
    def scale_site(self) -> str:
        # "_scale", not ".scale": autoguides store sites as nested attributes by their dotted
        # names, and "net.0.weight" cannot be both a parameter and a module holding "scale".
        return self.site + "_scale"


def _matches(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _parse_spec(where: str, spec: Any, default_scale: float) -> tuple[str, float]:
    if isinstance(spec, str):
        if spec not in PRIORS:
            raise ValueError(f"{where}: unknown prior {spec!r}; choose one of {list(PRIORS)}")
        return spec, default_scale
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {"name", "scale"})
        if unknown or "name" not in spec:
            raise ValueError(
                f"{where}: a prior spec mapping has keys 'name' (one of {list(PRIORS)}) and optionally "
                f"'scale', got keys {sorted(spec)}"
            )
        family, _ = _parse_spec(where, spec["name"], default_scale)
        scale = _positive(f"{where} scale", spec.get("scale", default_scale))
        return family, scale
    raise TypeError(
        f"{where}: a prior is a name in {list(PRIORS)} or a mapping {{'name': ..., 'scale': ...}}, "
        f"got {type(spec).__name__}"
    )


def _resolve_priors(
    names: list[str], shapes: dict[str, tuple[int, ...]], prior: Any, prior_scale: float,
    deterministic: tuple[str, ...],
) -> list[_ParamPrior]:
    """One :class:`_ParamPrior` per Bayesian parameter (longest matching prefix wins)."""
    bayes = [n for n in names if not any(_matches(n, d) for d in deterministic)]
    if not bayes:
        raise ValueError(
            f"deterministic={list(deterministic)} covers every parameter of the net ({names}); "
            "at least one parameter must be Bayesian"
        )
    if isinstance(prior, Mapping):
        table: dict[str, tuple[str, float]] = {}
        for key, spec in prior.items():
            if not isinstance(key, str):
                raise TypeError(f"prior keys are module-name prefixes (str), got {key!r}")
            table[key] = _parse_spec(f"prior[{key!r}]", spec, prior_scale)
            if not any(_matches(n, key) for n in bayes):
                hit_det = any(_matches(n, key) for n in names)
                raise ValueError(
                    f"prior key {key!r} matches no Bayesian parameter"
                    + (" (only deterministic ones)" if hit_det else "")
                    + f"; the Bayesian parameters are {bayes}"
                )
        default = ("normal", prior_scale)
    else:
        table, default = {}, _parse_spec("prior", prior, prior_scale)
    out = []
    for n in bayes:
        keys = [k for k in table if _matches(n, k)]
        family, scale = table[max(keys, key=len)] if keys else default
        out.append(_ParamPrior(n, "net." + n, shapes[n], family, scale))
    return out


#: Site values per chunk of draws when the net runs once per draw (32 MiB in float32).
PREDICTION_LOOP_CHUNK_ELEMENTS = 2**23


def _spec(x_shape: tuple[str | int, ...], likelihood: str, num_classes: int | None) -> DataSpec:
    if likelihood in _REGRESSION:
        y = Field("y", ("N",), observed=True, doc="real-valued response")
    elif likelihood == "bernoulli":
        y = Field("y", ("N",), observed=True, lower=0, upper=1, doc="binary label (0 or 1)")
    else:
        y = Field("y", ("N",), dtype="int", observed=True, lower=0,
                  upper=None if num_classes is None else num_classes - 1,
                  doc="class label in [0, C)")
    x = Field("x", x_shape, doc="inputs, one row per datum")
    return DataSpec((x, y), plate="data", plate_dim="N")


class BNN(BayesianModel):
    """A Bayesian neural network: a ``torch.nn.Module`` with priors on its parameters.

    Build it with :func:`bayesian_net` (same arguments). The net is deep-copied (the caller's
    net is left untouched); the copy is :attr:`net`.

    Parameters
    ----------
    net : torch.nn.Module
        Maps inputs ``(N, *input_shape)`` to outputs whose shape the likelihood fixes (see
        :data:`LIKELIHOODS`). Rows must be independent (no batch statistics: put BatchNorm in
        eval mode).
    likelihood : {"gaussian", "heteroscedastic", "bernoulli", "categorical"}
    prior : str or dict
        ``"normal"`` (``Normal(0, prior_scale)`` on every weight), ``"laplace"``
        (``Laplace(0, prior_scale)``), ``"hierarchical"`` (per parameter tensor a scale
        ``tau ~ HalfNormal(prior_scale)`` and weights ``Normal(0, tau)``; centred, so NUTS may
        find it hard), or a dict ``{module-name prefix: spec}`` where ``spec`` is a name or
        ``{"name": ..., "scale": ...}``; the longest matching prefix wins and unmatched
        parameters get ``"normal"`` with ``prior_scale``. ``""`` matches every parameter.
    prior_scale : float
        Default prior scale.
    deterministic : iterable of str
        Module-name prefixes (``"head"``, ``"0"``, ``"0.bias"``) whose parameters stay point
        estimates: plain ``nn.Parameter`` s that SVI trains with the guide. Under NUTS they are
        constants at their current values. They are not part of ``FitResult.save`` (pass the
        trained model to ``FitResult.load(..., model=bnn)``).
    noise_scale : float, optional
        ``"gaussian"`` only: a fixed noise standard deviation; ``None`` makes it a latent
        ``"sigma" ~ HalfNormal(noise_prior_scale)``.
    noise_prior_scale : float
        Scale of the noise prior.
    input_shape : sequence of int, optional
        Per-datum shape of ``x`` (without N), e.g. ``(1, 28, 28)`` for a conv net. ``None``:
        ``x`` is ``(N, D)`` for any ``D``. When given, the net is checked against the
        likelihood at construction.

    Raises
    ------
    ValueError, TypeError
        Unknown likelihood or prior name, a non-positive scale, prefixes that match no
        parameter, a net whose output does not fit the likelihood.

    Notes
    -----
    Data fields:

    - ``x``: Tensor ``(N, *input_shape)`` float.
    - ``y``: Tensor ``(N,)`` (observed): float for the Gaussian likelihoods, float 0/1 for
      ``"bernoulli"``, int in ``[0, C)`` for ``"categorical"``.

    Sample sites:

    - ``"net.<path>"``: one latent per Bayesian parameter tensor, of the parameter's shape
      (all dims are event dims), e.g. ``"net.0.weight"`` (H, D).
    - ``"net.<path>_scale"``: () latent, the hierarchical prior's scale of that tensor.
    - ``"sigma"``: () latent, the homoscedastic noise (``"gaussian"`` without ``noise_scale``).
    - ``"loc"``, ``"scale"``: (N,) deterministic, the predictive mean and noise sd per datum
      (regression); ``"probs"``: (N, C) deterministic class probabilities (classification;
      ``C = 2`` with columns ``P(y=0), P(y=1)`` for ``"bernoulli"``).
    - ``"y"``: (N,) observed, in plate ``"data"`` (dim -1), which ``SVIConfig(batch_size=...)``
      subsamples and scales by ``N / batch_size``.

    The heteroscedastic noise sd is ``softplus(column 1) + 1e-6``.

    Posterior draws (``FitResult.predict``, ``log_likelihood``) and vectorised ELBO particles
    reach the model as leading batch dims of every latent site, ``(*outer, 1, *shape)`` (the 1
    is the ``"data"`` plate's dim). The net then runs once under :func:`torch.func.vmap` over
    the flattened ``outer`` dims (``randomness="different"``: dropout differs per draw) and
    its output keeps ``outer`` to the left of the data plate. Without autograd on CPU, when a
    draw has enough multiply-adds (inputs x Bayesian parameters), it runs as a loop of plain
    forward passes instead, one per draw, with the same result (2-6x faster than ``vmap`` at
    thousands of inputs; see :mod:`pyro_models.models.per_draw`). Without batch dims
    (NUTS, single-particle SVI) it is one :func:`torch.func.functional_call`.

    Prior constants follow the dtype and device of ``x``: float64 inputs give a float64 model
    (deterministic parameters are cast), CUDA inputs a CUDA model.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> bnn = BNN(nn.Linear(3, 2), likelihood="categorical", prior="laplace")
    >>> sorted(bnn.latent_site_names)
    ['net.bias', 'net.weight']
    >>> bnn(x=torch.randn(5, 3)).shape  # a prior predictive draw of the labels
    torch.Size([5])
    """

    data_spec = _spec(("N", "D"), "gaussian", None)

    def __init__(
        self,
        net: nn.Module,
        *,
        likelihood: str = "gaussian",
        prior: PriorSpec | Mapping[str, PriorSpec] = "normal",
        prior_scale: float = 1.0,
        deterministic: Iterable[str] = (),
        noise_scale: float | None = None,
        noise_prior_scale: float = 1.0,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if isinstance(net, PyroModule):
            raise TypeError(
                "net must be a plain torch.nn.Module, not a PyroModule: bayesian_net adds the priors itself"
            )
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {list(LIKELIHOODS)}, got {likelihood!r}")
        self.likelihood = likelihood
        if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in net.modules()):
            # Dropout makes the log density random: no Markov chain targets it. (The mc_dropout
            # guide and VI with dropout are fine.)
            self.supports_mcmc = False
        self.prior_scale = _positive("prior_scale", prior_scale)
        self.noise_scale = _positive("noise_scale", noise_scale, allow_none=True)
        if self.noise_scale is not None and likelihood != "gaussian":
            raise ValueError(
                f"noise_scale applies to the homoscedastic 'gaussian' likelihood only, not {likelihood!r}"
            )
        self.noise_prior_scale = _positive("noise_prior_scale", noise_prior_scale)
        if isinstance(deterministic, str):
            deterministic = (deterministic,)
        det = tuple(deterministic)
        for d in det:
            if not isinstance(d, str):
                raise TypeError(f"deterministic must be an iterable of module-name prefixes (str), got {d!r}")
        net = copy.deepcopy(net)
        named = dict(net.named_parameters())
        if not named:
            raise ValueError("net has no parameters: there is nothing to make Bayesian")
        names = list(named)
        for d in det:
            if not any(_matches(n, d) for n in names):
                raise ValueError(f"deterministic entry {d!r} matches no parameter; the net's parameters are {names}")
        self.deterministic = det
        self._priors = _resolve_priors(names, {n: tuple(p.shape) for n, p in named.items()},
                                       prior, self.prior_scale, det)
        # The Bayesian parameters' own values are never used (functional_call replaces them);
        # they stay as frozen templates that carry shape, dtype and device.
        for p in self._priors:
            named[p.name].requires_grad_(False)
        self.net = net
        if input_shape is not None:
            if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
                raise TypeError(f"input_shape must be a sequence of positive ints or None, got {input_shape!r}")
            input_shape = tuple(_positive_int("input_shape entries", s) for s in input_shape)
        self.input_shape = input_shape
        num_classes = None
        if input_shape is not None:
            ref = self._reference_tensor()
            probe = torch.zeros((1,) + input_shape, dtype=ref.dtype, device=ref.device)
            out_shape = self._probe(probe, what=f"input_shape={input_shape}", error=ValueError)
            if likelihood == "categorical":
                num_classes = out_shape[0]
        x_shape = ("N", *input_shape) if input_shape is not None else ("N", "D")
        self.data_spec = _spec(x_shape, likelihood, num_classes)
        self.prediction_sites = ("loc", "scale") if likelihood in _REGRESSION else ("probs",)

    # ------------------------------------------------------------------ introspection
    @property
    def latent_site_names(self) -> tuple[str, ...]:
        """Names of the latent sites (weights, hierarchical scales, noise)."""
        out: list[str] = []
        for p in self._priors:
            if p.family == "hierarchical":
                out.append(p.scale_site)
            out.append(p.site)
        if self.likelihood == "gaussian" and self.noise_scale is None:
            out.append("sigma")
        return tuple(out)

    @property
    def last_layer_sites(self) -> tuple[str, ...]:
        """Sample sites of the last Bayesian module (its weight and bias), in net order.

        What the ``last_layer_laplace`` guide puts its Gaussian on; hierarchical scales and
        the noise stay at their MAP values.
        """
        last = self._priors[-1].name.rpartition(".")[0]
        return tuple(p.site for p in self._priors if p.name.rpartition(".")[0] == last)

    def initial_values(self) -> dict[str, Tensor]:
        """A fresh draw of the net's own default initialisation, ``{site: value}``.

        Every submodule's ``reset_parameters()`` (PyTorch's defaults, e.g. Kaiming-uniform
        for ``nn.Linear``) runs on a copy of the net, drawing from the global torch RNG; the
        Bayesian tensors are returned by site name. This is how a deep ensemble's members
        start in Lakshminarayanan et al. (2017) (``deep_ensemble(init_loc="net")``), at the
        scale the architecture was designed for, rather than as prior draws.

        Examples
        --------
        >>> from pyro_models.models import get
        >>> net = get("bnn_regression")(in_features=3, hidden_sizes=[8])
        >>> vals = net.initial_values()
        >>> sorted(vals), float(vals["net.0.weight"].abs().max()) <= 3 ** -0.5
        (['net.0.bias', 'net.0.weight', 'net.2.bias', 'net.2.weight'], True)
        """
        net = copy.deepcopy(self._module())
        with torch.no_grad():
            for m in net.modules():
                if callable(getattr(m, "reset_parameters", None)):
                    m.reset_parameters()
        named = dict(net.named_parameters())
        return {p.site: named[p.name].detach().clone() for p in self._priors}

    @property
    def priors(self) -> dict[str, tuple[str, float]]:
        """``{site: (family, scale)}`` for every Bayesian parameter."""
        return {p.site: (p.family, p.scale) for p in self._priors}

    @property
    def is_regression(self) -> bool:
        return self.likelihood in _REGRESSION

    def _module(self) -> nn.Module:
        # Not ``self.net``: PyroModule.__getattr__ would register a plain submodule's
        # parameters in Pyro's global param store (pyro.module) on every call.
        return self._modules["net"]

    def _reference_tensor(self) -> Tensor:
        net = self._module()
        return next(itertools.chain(net.parameters(), net.buffers()))

    # ------------------------------------------------------------------ validation
    def _probe(self, x: Tensor, *, what: str, error: type[Exception]) -> tuple[int, ...]:
        """Run the net's own (template) parameters on one row; return the per-datum output shape."""
        net = self._module()
        ref = self._reference_tensor()
        xs = x[:1].to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else x.dtype)
        was_training = net.training
        try:
            net.eval()
            with torch.no_grad():
                out = net(xs)
        except Exception as exc:
            raise error(
                f"the net cannot be applied to {what}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            ) from exc
        finally:
            net.train(was_training)
        if not isinstance(out, Tensor):
            raise TypeError(f"the net must return one Tensor, got {type(out).__name__}")
        if out.dim() < 1 or out.shape[0] != 1:
            raise ValueError(
                f"the net must map a batch of inputs (N, ...) to outputs (N, ...); for one input row "
                f"it returned shape {tuple(out.shape)}"
            )
        out_shape = tuple(out.shape[1:])
        self._check_output_shape(out_shape)
        return out_shape

    def _check_output_shape(self, out_shape: tuple[int, ...]) -> None:
        lik = self.likelihood
        if lik in ("gaussian", "bernoulli"):
            ok = out_shape in ((), (1,))
        elif lik == "heteroscedastic":
            ok = out_shape == (2,)
        else:
            ok = len(out_shape) == 1 and out_shape[0] >= 2
        if not ok:
            given = "(N, " + ", ".join(map(str, out_shape)) + ")" if out_shape else "(N,)"
            raise ValueError(f"likelihood {lik!r} needs the net to output {LIKELIHOODS[lik]}; it outputs {given}")

    def validate_data(
        self, data: Mapping[str, Any], *, require_observed: bool = True
    ) -> dict[str, Tensor]:
        """Validate against :attr:`data_spec`, then check ``x`` fits the net and ``y`` the likelihood.

        Raises
        ------
        DataValidationError
            Wrong shapes, NaN/inf, labels that are not 0/1 (Bernoulli) or not in ``[0, C)``
            (categorical), inputs the net cannot process.
        TypeError
            Float labels for a categorical likelihood, non-numeric data.
        """
        out = super().validate_data(data, require_observed=require_observed)
        x = out.get("x")
        if x is None or x.shape[0] == 0:
            return out
        xdesc = f"x of shape {tuple(x.shape)}"
        out_shape = self._probe(x, what=xdesc, error=DataValidationError)
        y = out.get("y")
        if y is None:
            return out
        if self.likelihood == "bernoulli":
            check_binary("y", y, "labels (Bernoulli likelihood)")
        elif self.likelihood == "categorical":
            c = out_shape[0]
            if y.numel() and int(y.max()) >= c:
                raise DataValidationError(
                    f"y: class labels must be in [0, {c}) for a net with {c} output logits, got max {int(y.max())}"
                )
        return out

    # ------------------------------------------------------------------ the model
    def _sample_parameters(self, ref: Tensor) -> dict[str, Tensor]:
        """One ``pyro.sample`` per Bayesian tensor; returns ``{name in net: value}``."""
        values = {}
        # Constants made on the input's device by a fill (no host-to-device copy per step).
        zero = ref.new_zeros(())
        for p in self._priors:
            scale = ref.new_full((), p.scale)
            if p.family == "normal":
                prior = dist.Normal(zero, scale).expand(p.shape)
            elif p.family == "laplace":
                prior = dist.Laplace(zero, scale).expand(p.shape)
            else:
                tau = pyro.sample(p.scale_site, dist.HalfNormal(scale))
                tau = tau.reshape(tau.shape + (1,) * len(p.shape))
                prior = dist.Normal(ref.new_zeros(p.shape), tau)
            values[p.name] = pyro.sample(p.site, prior.to_event(len(p.shape)))
        return values

    def _fixed_tensors(self, ref: Tensor) -> dict[str, Tensor]:
        """Deterministic parameters and buffers to pass in place of the net's own.

        Cast to the input's floating dtype where it differs. Under the JIT tracer (NUTS with
        ``jit_compile=True``) all are passed detached: they are constants there, and the tracer
        cannot bake in a tensor that requires grad.
        """
        net = self._module()
        bayes = {p.name for p in self._priors}
        tracing = torch.jit.is_tracing()
        out = {}
        for n, t in itertools.chain(net.named_parameters(), net.named_buffers()):
            if n in bayes:
                continue
            cast = t.is_floating_point() and t.dtype != ref.dtype
            if tracing:
                t = t.data  # not ``detach()``: that is itself a traced op on a grad-requiring constant
            if cast:
                t = t.to(ref.dtype)
            if cast or tracing:
                out[n] = t
        return out

    def _run_net(self, x: Tensor, values: dict[str, Tensor]) -> tuple[Tensor, int]:
        """The net's output ``(*outer, N, *out)`` with the sampled parameters, and ``len(outer)``.

        Posterior draws (or vectorised ELBO particles) arrive as leading batch dims of each
        parameter, ``(*outer, 1, *shape)``: the trailing 1 is the ``"data"`` plate's dim. The
        net then runs once under ``vmap`` (or once per draw where ``per_draw.loop_pays``) and its
        output keeps ``outer`` on the left, so the likelihood broadcasts against the plates.
        """
        net = self._module()
        fixed = self._fixed_tensors(x)
        shapes = {p.name: p.shape for p in self._priors}
        batch = torch.broadcast_shapes(*(v.shape[: v.dim() - len(shapes[k])] for k, v in values.items()))
        if len(batch) == 0:
            if torch.jit.is_tracing():
                # functional_call refuses to run under the JIT tracer (MCMCConfig(jit_compile=True));
                # the context manager it wraps works, and the tracer records the swapped-in tensors.
                with _reparametrize_module(net, {**fixed, **values}, tie_weights=True):
                    return net(x), 0
            return functional_call(net, {**fixed, **values}, (x,)), 0
        if batch[-1] != 1:
            raise ValueError(
                f"the net's parameters carry leading batch shape {tuple(batch)}; its last dim must be 1 "
                f"(it lines up with the 'data' plate at dim -1), so draws belong in dims <= -2"
            )
        outer = batch[:-1]
        n = math.prod(outer)
        flat = {k: v.expand(batch + shapes[k]).reshape((n,) + shapes[k]) for k, v in values.items()}
        if per_draw.loop_pays(x, flat, n):
            out = per_draw.run_per_draw(net, fixed, flat, x, n)
        else:
            out = vmap(lambda p: functional_call(net, {**fixed, **p}, (x,)), randomness="different")(flat)
        if not isinstance(out, Tensor):
            raise TypeError(f"the net must return one Tensor, got {type(out).__name__}")
        return out.reshape(outer + out.shape[1:]), len(outer)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Run the model; without ``y`` it draws the labels/responses.

        Parameters
        ----------
        x : Tensor ``(N, *input_shape)`` float
        y : Tensor (N,), optional
            Float (Gaussian likelihoods, Bernoulli 0/1) or long (categorical).

        Returns
        -------
        Tensor (N,)
            ``y`` (observed or drawn).
        """
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1:
            raise TypeError("x must be a floating-point Tensor (N, ...); check data with model.validate_data")
        n = x.shape[0]
        values = self._sample_parameters(x)
        lik = self.likelihood
        sigma = None
        if lik == "gaussian":
            if self.noise_scale is not None:
                sigma = x.new_full((), self.noise_scale)
            else:
                prior_scale = x.new_full((), self.noise_prior_scale)
                sigma = pyro.sample("sigma", dist.HalfNormal(prior_scale))
        out, k = self._run_net(x, values)
        if not isinstance(out, Tensor):
            raise TypeError(f"the net must return one Tensor, got {type(out).__name__}")
        if out.dim() < k + 1 or out.shape[k] != n:
            raise ValueError(f"the net must map inputs (N={n}, ...) to outputs (N, ...); got {tuple(out.shape[k:])}")
        self._check_output_shape(tuple(out.shape[k + 1:]))
        squeeze = out if out.dim() == k + 1 else out[..., 0]  # (N,) or (N, 1) outputs
        with pyro.plate("data", n, dim=-1):
            if lik in _REGRESSION:
                if lik == "gaussian":
                    loc = squeeze
                else:
                    loc, sigma = out[..., 0], F.softplus(out[..., 1]) + _MIN_SCALE
                scale = torch.broadcast_to(sigma, torch.broadcast_shapes(sigma.shape, loc.shape))
                pyro.deterministic("loc", loc)
                pyro.deterministic("scale", scale)
                return pyro.sample("y", dist.Normal(loc, scale), obs=y)
            if lik == "bernoulli":
                p1 = torch.sigmoid(squeeze)
                pyro.deterministic("probs", torch.stack([1 - p1, p1], -1), event_dim=1)
                return pyro.sample("y", dist.Bernoulli(logits=squeeze), obs=y)
            pyro.deterministic("probs", torch.softmax(out, -1), event_dim=1)
            return pyro.sample("y", dist.Categorical(logits=out), obs=y)

    # ------------------------------------------------------------------ prediction hooks
    def prediction_chunk_elements(self, data: Mapping[str, Any]) -> int | None:
        """A 32x larger chunk budget where the net will run once per draw
        (:func:`~pyro_models.models.per_draw.loop_pays`).

        The net's activations then do not grow with the chunk; only its site values (``y``,
        ``loc``, ...) do, so chunks can be larger and the per-chunk cost of a Pyro model run
        (~2 ms) is paid fewer times. Elsewhere (GPU, small inputs) the default budget keeps
        the vmapped activations bounded.
        """
        x = data.get("x")
        if not isinstance(x, Tensor):
            return None
        numbers = sum(math.prod(p.shape) for p in self._priors)
        return PREDICTION_LOOP_CHUNK_ELEMENTS if per_draw.enough_work(x, numbers) else None

    def summarize_predictions(self, draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Regression: ``mean``, ``epistemic_var``, ``aleatoric_var``, ``total_var`` (each (N,)).
        Classification: ``probs`` (N, C), ``entropy``, ``expected_entropy``, ``mutual_info`` (N,)."""
        if self.is_regression:
            return decompose_regression(draws["loc"], draws["scale"])
        return decompose_classification(draws["probs"])



def bayesian_net(
    net: nn.Module,
    *,
    likelihood: str = "gaussian",
    prior: PriorSpec | Mapping[str, PriorSpec] = "normal",
    prior_scale: float = 1.0,
    deterministic: Iterable[str] = (),
    noise_scale: float | None = None,
    noise_prior_scale: float = 1.0,
    input_shape: Sequence[int] | None = None,
) -> BNN:
    """Turn any ``torch.nn.Module`` into a Bayesian neural network (a :class:`BNN`).

    Parameters
    ----------
    net : torch.nn.Module
        A plain module mapping ``x`` ``(N, *input_shape)`` to outputs (N, ...) that fit the
        likelihood; it is deep-copied.
    likelihood : {"gaussian", "heteroscedastic", "bernoulli", "categorical"}
        What the net's output means (see :data:`LIKELIHOODS`): ``"gaussian"`` a mean (noise
        ``sigma`` learned, or fixed by ``noise_scale``); ``"heteroscedastic"`` 2 columns, mean
        and pre-softplus scale; ``"bernoulli"`` one logit; ``"categorical"`` C logits.
    prior : {"normal", "laplace", "hierarchical"} or dict
        Prior on the Bayesian parameters, or ``{module-name prefix: spec}`` per module with
        ``spec`` a name or ``{"name": ..., "scale": ...}`` (see :class:`BNN`).
    prior_scale : float
        Default prior scale (sd of ``"normal"``, scale of ``"laplace"``, scale of the
        ``HalfNormal`` on the per-tensor scale of ``"hierarchical"``).
    deterministic : iterable of str
        Module-name prefixes whose parameters stay point estimates (trained by SVI; constants
        under NUTS).
    noise_scale : float, optional
        Fixed noise sd for ``"gaussian"``; ``None`` learns ``sigma ~ HalfNormal(noise_prior_scale)``.
    noise_prior_scale : float
    input_shape : sequence of int, optional
        Per-datum shape of ``x``; ``None`` accepts ``(N, D)``. Needed for inputs with more than
        one feature dimension (images, sequences).

    Returns
    -------
    BNN
        Fit it with :func:`pyro_models.fit` (SVI with any guide; NUTS for small nets).

    Raises
    ------
    ValueError, TypeError
        See :class:`BNN`.

    Examples
    --------
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> bnn = bayesian_net(net, likelihood="categorical", prior={"0": "laplace", "2": {"name": "normal", "scale": 0.5}},
    ...                    deterministic=["2.bias"])
    >>> bnn.priors
    {'net.0.weight': ('laplace', 1.0), 'net.0.bias': ('laplace', 1.0), 'net.2.weight': ('normal', 0.5)}
    """
    return BNN(net, likelihood=likelihood, prior=prior, prior_scale=prior_scale, deterministic=deterministic,
               noise_scale=noise_scale, noise_prior_scale=noise_prior_scale, input_shape=input_shape)


@register("bnn_regression")
class BNNRegression(BNN):
    """An MLP Bayesian neural network for a scalar response (registered as ``bnn_regression``).

    Parameters
    ----------
    in_features : int
        Number of input features D.
    hidden_sizes : sequence of int
        Hidden-layer widths.
    out_features : int
        Must be 1: the response is a scalar per datum (kept as an argument for symmetry with
        :class:`BNNClassifier`).
    activation : {"relu", "tanh", "gelu", "silu", "elu"}
    prior : str or dict
        As in :class:`BNN`; module prefixes are the layer indices ``"0"``, ``"2"``, ...
    prior_scale : float
    heteroscedastic : bool
        ``True``: the last layer outputs a mean and a (pre-softplus) noise scale per datum;
        ``False``: one shared noise ``sigma``.
    noise_scale : float, optional
        Fixed shared noise (homoscedastic only); ``None`` learns it.
    noise_prior_scale : float
        ``sigma ~ HalfNormal(noise_prior_scale)``.
    dropout : float
        Dropout after each hidden activation (for the ``mc_dropout`` guide); 0 by default.

    Notes
    -----
    Data: ``x`` (N, in_features) float, ``y`` (N,) float. Sites as in :class:`BNN`:
    ``"net.0.weight"`` (hidden_sizes[0], in_features), ``"net.0.bias"``, ..., ``"sigma"``,
    ``"loc"``, ``"scale"``, ``"y"``.

    Examples
    --------
    >>> model = BNNRegression(in_features=2, hidden_sizes=(8,))
    >>> model.latent_site_names
    ('net.0.weight', 'net.0.bias', 'net.2.weight', 'net.2.bias', 'sigma')
    >>> data = model.example_data()
    >>> tuple(data["x"].shape), tuple(data["y"].shape)
    ((40, 2), (40,))
    """

    def __init__(
        self,
        in_features: int = 1,
        hidden_sizes: Sequence[int] = (50,),
        out_features: int = 1,
        activation: str = "relu",
        prior: PriorSpec | Mapping[str, PriorSpec] = "normal",
        prior_scale: float = 1.0,
        heteroscedastic: bool = False,
        noise_scale: float | None = None,
        noise_prior_scale: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        if out_features != 1:
            raise ValueError(
                f"bnn_regression models a scalar response: out_features must be 1, got {out_features!r} "
                "(wrap a multi-output net with bayesian_net for anything else)"
            )
        if not isinstance(heteroscedastic, bool):
            raise TypeError(f"heteroscedastic must be a bool, got {heteroscedastic!r}")
        net = make_mlp(in_features, hidden_sizes, 2 if heteroscedastic else 1, activation, dropout)
        _record_list_hparam(self, "hidden_sizes", hidden_sizes)
        super().__init__(
            net, likelihood="heteroscedastic" if heteroscedastic else "gaussian", prior=prior,
            prior_scale=prior_scale, noise_scale=noise_scale, noise_prior_scale=noise_prior_scale,
            input_shape=(in_features,),
        )

    def example_data(self, seed: int = 0) -> dict[str, Any]:
        """A small data set for this model (contract tests, docs); see :meth:`BayesianModel.example_data`.

        40 points, ``y = sin(2 * mean(x)) + noise`` with noise sd ``0.1 + 0.2 |mean(x)|``.
        """
        d = self.input_shape[0]
        g = torch.Generator().manual_seed(seed)
        x = 4 * torch.rand(40, d, generator=g) - 2
        m = x.mean(-1)
        y = torch.sin(2 * m) + (0.1 + 0.2 * m.abs()) * torch.randn(40, generator=g)
        return {"x": x, "y": y}


@register("bnn_classifier")
class BNNClassifier(BNN):
    """An MLP Bayesian neural network classifier (registered as ``bnn_classifier``).

    Parameters
    ----------
    in_features : int
        Number of input features D.
    hidden_sizes : sequence of int
        Hidden-layer widths.
    out_features : int
        Number of classes C >= 2 (Categorical likelihood, ``y`` int in ``[0, C)``), or 1 for
        a binary classifier with one logit (Bernoulli likelihood, ``y`` float 0/1).
    activation : {"relu", "tanh", "gelu", "silu", "elu"}
    prior : str or dict
        As in :class:`BNN`.
    prior_scale : float
    dropout : float
        Dropout after each hidden activation (for the ``mc_dropout`` guide); 0 by default.

    Notes
    -----
    Data: ``x`` (N, in_features) float, ``y`` (N,). ``FitResult.predict`` gives ``probs``
    (N, C) (C = 2 columns ``P(y=0), P(y=1)`` with ``out_features=1``), ``entropy``,
    ``expected_entropy`` and ``mutual_info``.

    Examples
    --------
    >>> model = BNNClassifier(in_features=2, hidden_sizes=(8,), out_features=3)
    >>> model.likelihood, model.data_spec["y"].upper
    ('categorical', 2)
    >>> BNNClassifier(out_features=1).likelihood
    'bernoulli'
    """

    def __init__(
        self,
        in_features: int = 2,
        hidden_sizes: Sequence[int] = (50,),
        out_features: int = 2,
        activation: str = "relu",
        prior: PriorSpec | Mapping[str, PriorSpec] = "normal",
        prior_scale: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        net = make_mlp(in_features, hidden_sizes, out_features, activation, dropout)
        _record_list_hparam(self, "hidden_sizes", hidden_sizes)
        super().__init__(
            net, likelihood="bernoulli" if out_features == 1 else "categorical", prior=prior,
            prior_scale=prior_scale, input_shape=(in_features,),
        )

    @property
    def num_classes(self) -> int:
        """Number of classes (2 for the Bernoulli classifier)."""
        last = self._module()[-1]
        return max(2, last.out_features)

    def example_data(self, seed: int = 0) -> dict[str, Any]:
        """A small data set for this model (contract tests, docs); see :meth:`BayesianModel.example_data`.

        40 points in Gaussian blobs (sd 0.5), one per class, with centres evenly spaced on a
        circle of radius 3 in the first two features (on a line for one feature): separable.
        """
        d, c = self.input_shape[0], self.num_classes
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(40) % c
        centres = torch.zeros(c, d)
        if d == 1:
            centres[:, 0] = torch.linspace(-3, 3, c)
        else:
            angle = 2 * math.pi * torch.arange(c) / c
            centres[:, 0], centres[:, 1] = 3 * angle.cos(), 3 * angle.sin()
        x = centres[labels] + 0.5 * torch.randn(40, d, generator=g)
        y = labels.to(torch.get_default_dtype()) if self.likelihood == "bernoulli" else labels
        return {"x": x, "y": y}
