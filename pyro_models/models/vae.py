"""Variational autoencoders: :class:`VAE` and the class-conditional :class:`CVAE`.

A VAE (Kingma & Welling, 2014) has one local latent code per example,
``z_i ~ Normal(0, I)``, and a decoder network that maps it to the likelihood of the
example, ``x_i ~ p_theta(x | z_i)``. The decoder's weights are ordinary network parameters
(point estimates trained jointly with the guide by SVI); the posterior over each ``z_i`` is
what the guide approximates. The ``"amortized"`` guide (:mod:`pyro_models.guides.amortized`)
asks the model for an encoder network (:meth:`VAE.make_encoder`) that maps ``x_i`` to
``q(z_i | x_i)``, so it trains on minibatches and encodes unseen data; the ``"normal"``
autoguide also works (one Gaussian per training example, full batch only).

Trained models are evaluated on held-out data in nats per example with
:meth:`VAE.elbo` and the importance-weighted bound :meth:`VAE.iwae_log_likelihood`
(Burda et al., 2016), which tightens towards ``log p(x)`` as the number of samples grows.

Examples
--------
>>> import torch, pyro_models
>>> model = VAE(in_features=16, latent_dim=2, hidden_sizes=(32,))
>>> x = (torch.rand(40, 16) < 0.3).float()
>>> res = pyro_models.fit(model, {"x": x}, pyro_models.SVIConfig(num_steps=20, batch_size=16),
...                       guide="amortized", seed=0, progress=False)
>>> model.elbo(res.guide, {"x": x}, num_particles=10).shape
torch.Size([40])
>>> res.predict(num_samples=5)["x"].shape      # replicates of the training examples
torch.Size([5, 40, 16])
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn
from torch.nn import functional as F

from ..data import DataSpec, Field
from ..errors import DataValidationError
from . import register
from .base import BayesianModel

__all__ = ["VAE", "CVAE", "GaussianEncoder", "Decoder"]

LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian")
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU}
# Floor on the encoder's standard deviations: keeps log q finite when a code collapses.
_MIN_ENCODER_SCALE = 1e-5
_PARTICLE_PLATE = "_vae_particles"


# ------------------------------------------------------------------------------ validation
def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _hidden_sizes(value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(
            f"hidden_sizes must be a sequence of positive ints (e.g. (128,) or () for linear), got {value!r}"
        )
    return tuple(_positive_int("each hidden size", h) for h in value)


def _choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def _mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between them (none last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(ACTIVATIONS[activation]())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


def _one_hot(c: Tensor | None, num_classes: int, like: Tensor) -> Tensor | None:
    if c is None or num_classes == 0:
        return None
    return F.one_hot(c, num_classes).to(like.dtype)


def _with_condition(h: Tensor, onehot: Tensor | None) -> Tensor:
    """Append the one-hot label to the features, broadcasting it over ``h``'s extra leading dims."""
    if onehot is None:
        return h
    onehot = onehot.expand(h.shape[:-1] + onehot.shape[-1:])
    return torch.cat([h, onehot], dim=-1)


# ------------------------------------------------------------------------------ networks
class GaussianEncoder(nn.Module):
    """Encoder network ``x_i (, c_i) -> q(z_i | x_i, c_i) = Normal(loc, scale)``.

    An MLP ``in_features (+ num_classes) -> *hidden_sizes -> 2 * latent_dim`` whose output is
    split into the location and, through a softplus, the scale of a diagonal Gaussian.

    Parameters
    ----------
    in_features : int
        D, the number of features of ``x``.
    latent_dim : int
        L, the size of each code ``z_i``.
    hidden_sizes : sequence of int
        Widths of the hidden layers (``()`` gives a linear encoder).
    activation : str
        One of ``"relu"``, ``"tanh"``, ``"softplus"``, ``"elu"``.
    num_classes : int
        C > 0 appends a one-hot label ``c`` to the input (conditional VAE); 0 for none.
    site : str
        Name of the latent sample site the distribution is for.

    Examples
    --------
    >>> enc = GaussianEncoder(in_features=4, latent_dim=2, hidden_sizes=(8,))
    >>> q = enc(torch.zeros(3, 4))["z"]
    >>> q.batch_shape, q.event_shape
    (torch.Size([3]), torch.Size([2]))
    """

    def __init__(self, in_features: int, latent_dim: int, hidden_sizes: Sequence[int] = (128,),
                 activation: str = "relu", num_classes: int = 0, site: str = "z") -> None:
        super().__init__()
        self.in_features = _positive_int("in_features", in_features)
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.num_classes = _positive_int("num_classes", num_classes, minimum=0)
        self.activation = _choice("activation", activation, tuple(ACTIVATIONS))
        self.site = site
        self.net = _mlp((self.in_features + self.num_classes, *_hidden_sizes(hidden_sizes), 2 * self.latent_dim),
                        self.activation)

    def forward(self, x: Tensor | None = None, c: Tensor | None = None) -> dict[str, dist.Distribution]:
        """The approximate posterior of every example's code.

        Parameters
        ----------
        x : Tensor (N, D) float
        c : Tensor (N,) long, optional
            Class labels (required when ``num_classes > 0``).

        Returns
        -------
        dict
            ``{site: Normal(loc, scale).to_event(1)}`` with batch shape (N,), event shape (L,).
        """
        if x is None:
            raise ValueError("the encoder needs the observed x to encode (got x=None)")
        if self.num_classes and c is None:
            raise ValueError(f"this encoder is conditional ({self.num_classes} classes): pass the labels c")
        h = self.net(_with_condition(x, _one_hot(c, self.num_classes, x)))
        loc, raw = h.split(self.latent_dim, dim=-1)
        scale = F.softplus(raw) + _MIN_ENCODER_SCALE
        return {self.site: dist.Normal(loc, scale).to_event(1)}


class Decoder(nn.Module):
    """Decoder network ``z (, c) -> p(x | z, c)`` with a Bernoulli, continuous-Bernoulli or Gaussian likelihood.

    An MLP ``latent_dim (+ num_classes) -> *hidden_sizes -> out_features`` gives the logits
    (Bernoulli, continuous Bernoulli) or the mean (Gaussian). The Gaussian's per-feature
    standard deviation is a learned parameter, ``min_scale + softplus(raw_scale)``, initially 1.

    Parameters
    ----------
    latent_dim, out_features : int
    hidden_sizes : sequence of int
    activation : str
    likelihood : {"bernoulli", "continuous_bernoulli", "gaussian"}
    num_classes : int
    min_scale : float
        Lower bound on the Gaussian standard deviation.

    Examples
    --------
    >>> dec = Decoder(latent_dim=2, out_features=4, hidden_sizes=(8,))
    >>> dec(torch.zeros(5, 3, 2)).batch_shape     # any leading dims broadcast
    torch.Size([5, 3])
    """

    def __init__(self, latent_dim: int, out_features: int, hidden_sizes: Sequence[int] = (128,),
                 activation: str = "relu", likelihood: str = "bernoulli", num_classes: int = 0,
                 min_scale: float = 1e-3) -> None:
        super().__init__()
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.out_features = _positive_int("out_features", out_features)
        self.num_classes = _positive_int("num_classes", num_classes, minimum=0)
        self.likelihood = _choice("likelihood", likelihood, LIKELIHOODS)
        if not isinstance(min_scale, (int, float)) or isinstance(min_scale, bool) or not min_scale > 0:
            raise ValueError(f"min_scale must be a positive float, got {min_scale!r}")
        self.min_scale = float(min_scale)
        self.net = _mlp((self.latent_dim + self.num_classes, *_hidden_sizes(hidden_sizes), self.out_features),
                        _choice("activation", activation, tuple(ACTIVATIONS)))
        if self.likelihood == "gaussian":
            # Start at a unit standard deviation (standardised data): softplus(raw) = 1 - min_scale.
            excess = max(1.0 - self.min_scale, 1e-2)
            self.raw_scale = nn.Parameter(torch.full((self.out_features,), math.log(math.expm1(excess))))

    def forward(self, z: Tensor, onehot: Tensor | None = None) -> dist.Distribution:
        """The likelihood of ``x`` given codes ``z``.

        Parameters
        ----------
        z : Tensor (..., L)
            Codes; any leading (batch) dims broadcast.
        onehot : Tensor (N, C), optional
            One-hot labels, broadcast against ``z``'s leading dims.

        Returns
        -------
        Distribution
            Batch shape ``z.shape[:-1]``, event shape (D,).
        """
        out = self.net(_with_condition(z, onehot))
        if self.likelihood == "bernoulli":
            # validate_args=False: grey levels in [0, 1] are allowed as soft targets (the usual
            # cross-entropy "Bernoulli" VAE); the support check would only admit 0 and 1.
            base = dist.Bernoulli(logits=out, validate_args=False)
            return dist.Independent(base, 1, validate_args=False)
        if self.likelihood == "continuous_bernoulli":
            return dist.ContinuousBernoulli(logits=out).to_event(1)
        scale = self.min_scale + F.softplus(self.raw_scale)
        return dist.Normal(out, scale).to_event(1)


# ------------------------------------------------------------------------------ models
def _spec(conditional: bool) -> DataSpec:
    fields = [Field("x", ("N", "D"), observed=True,
                    doc="examples, one row each (values in [0, 1] for the Bernoulli likelihoods)")]
    if conditional:
        fields.append(Field("c", ("N",), dtype="int", doc="class label of each example, 0 <= c < num_classes"))
    return DataSpec(tuple(fields), plate="data", plate_dim="N")


class _VAEBase(BayesianModel):
    """Shared machinery of :class:`VAE` and :class:`CVAE` (``num_classes=0`` is unconditional)."""

    #: The data plate's dim, which the amortised guide uses for its local sites.
    local_plate_dim = -1
    #: The decoder's weights are point estimates trained with the guide; NUTS would hold them
    #: at their initial values, so ``fit`` refuses MCMC.
    supports_mcmc = False

    def __init__(self, in_features: int, latent_dim: int, hidden_sizes: Sequence[int], likelihood: str,
                 activation: str, min_scale: float, num_classes: int) -> None:
        super().__init__()
        self.in_features = _positive_int("in_features", in_features)
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.hidden_sizes = _hidden_sizes(hidden_sizes)
        self.likelihood = _choice("likelihood", likelihood, LIKELIHOODS)
        self.activation = _choice("activation", activation, tuple(ACTIVATIONS))
        ok = isinstance(min_scale, (int, float)) and not isinstance(min_scale, bool)
        if not ok or not math.isfinite(min_scale) or min_scale <= 0:
            raise ValueError(f"min_scale must be a positive float, got {min_scale!r}")
        self.min_scale = float(min_scale)
        self.num_classes = num_classes
        self.decoder = Decoder(self.latent_dim, self.in_features, tuple(reversed(self.hidden_sizes)),
                               self.activation, self.likelihood, num_classes, self.min_scale)

    # -------------------------------------------------------------- data
    @property
    def _ref(self) -> Tensor:
        return next(self.decoder.parameters())

    def validate_data(self, data: Mapping[str, Any], *, require_observed: bool = True) -> dict[str, Tensor]:
        """Validate ``data`` (see :meth:`BayesianModel.validate_data`) and this model's sizes.

        Besides the declared shapes: ``x`` must have ``in_features`` columns (values in
        [0, 1] for the Bernoulli likelihoods) and is cast to the networks' dtype; labels ``c``
        must lie in ``[0, num_classes)``.

        Raises
        ------
        DataValidationError
            Wrong feature count, values outside [0, 1] (Bernoulli), labels out of range.
        """
        out = super().validate_data(data, require_observed=require_observed)
        x = out.get("x")
        if x is not None:
            if x.shape[-1] != self.in_features:
                raise DataValidationError(
                    f"x: expected shape (N, {self.in_features}) for in_features={self.in_features}, "
                    f"got {tuple(x.shape)}"
                )
            if self.likelihood != "gaussian" and x.numel() and bool(((x < 0) | (x > 1)).any()):
                raise DataValidationError(
                    f"x: the {self.likelihood} likelihood needs values in [0, 1], got min "
                    f"{x.min().item():.4g} and max {x.max().item():.4g}; rescale the data "
                    f"(e.g. pixel / max) or use likelihood='gaussian'"
                )
            out["x"] = x.to(self._ref.dtype)
        c = out.get("c")
        if c is not None and c.numel() and bool(((c < 0) | (c >= self.num_classes)).any()):
            raise DataValidationError(
                f"c: labels must be in [0, {self.num_classes - 1}] (num_classes={self.num_classes}), "
                f"got min {int(c.min())} and max {int(c.max())}"
            )
        return out

    def _prior(self, n_ref: Tensor) -> dist.Distribution:
        zero = torch.zeros((), dtype=n_ref.dtype, device=n_ref.device)
        return dist.Normal(zero, torch.ones_like(zero)).expand([self.latent_dim]).to_event(1)

    def _model(self, x: Tensor | None, c: Tensor | None, n: int) -> Tensor:
        ref = self._ref
        onehot = _one_hot(c, self.num_classes, ref)
        with pyro.plate("data", n, dim=-1):
            z = pyro.sample("z", self._prior(ref))
            return pyro.sample("x", self.decoder(z, onehot), obs=x)

    # -------------------------------------------------------------- guide support
    def make_encoder(self, hidden_sizes: Sequence[int] | None = None) -> GaussianEncoder:
        """A fresh encoder network for the ``"amortized"`` guide.

        Parameters
        ----------
        hidden_sizes : sequence of int, optional
            Hidden widths (default: the decoder's, mirrored).

        Returns
        -------
        GaussianEncoder
            ``encoder(x[, c]) -> {"z": Normal(loc, scale).to_event(1)}``, on this model's
            device and dtype.
        """
        hs = self.hidden_sizes if hidden_sizes is None else _hidden_sizes(hidden_sizes)
        ref = self._ref
        enc = GaussianEncoder(self.in_features, self.latent_dim, hs, self.activation, self.num_classes)
        return enc.to(device=ref.device, dtype=ref.dtype)

    # -------------------------------------------------------------- evaluation
    def _eval_data(self, data: Mapping[str, Any]) -> dict[str, Tensor]:
        clean = self.validate_data(data, require_observed=True)
        return {k: v.to(self._ref.device) for k, v in clean.items()}

    @torch.no_grad()
    def log_importance_weights(self, guide: Any, data: Mapping[str, Any], num_samples: int, *,
                               chunk: int = 256) -> Tensor:
        """``log p(x_i, z_ik) - log q(z_ik | x_i)`` for K draws ``z_ik ~ q`` per example.

        Parameters
        ----------
        guide : callable or FitResult
            A trained guide (or a fit result, whose ``.guide`` is used). An amortised guide
            evaluates any data; an autoguide only the data it was trained on.
        data : dict
            ``{"x": (N, D)}`` (and ``"c": (N,)`` for the CVAE).
        num_samples : int
            K, draws per example.
        chunk : int
            Draws evaluated at once (bounds memory at about ``chunk * N * D`` numbers).

        Returns
        -------
        Tensor (K, N)
            In the dtype of the model, on its device.
        """
        guide = _as_guide(guide)
        num_samples = _positive_int("num_samples", num_samples)
        chunk = _positive_int("chunk", chunk)
        clean = self._eval_data(data)
        n = clean["x"].shape[0]
        parts = []
        for start in range(0, num_samples, chunk):
            k = min(chunk, num_samples - start)
            try:
                with poutine.block(), pyro.plate(_PARTICLE_PLATE, k, dim=self.local_plate_dim - 1):
                    gtr = poutine.trace(guide).get_trace(**clean)
                    mtr = poutine.trace(poutine.replay(self, trace=gtr)).get_trace(**clean)
                parts.append(_sum_log_prob(mtr, k, n) - _sum_log_prob(gtr, k, n))
            except (RuntimeError, ValueError, IndexError) as exc:
                raise ValueError(
                    f"could not evaluate the guide on this data ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}); an autoguide has one set of "
                    "parameters per training example and only evaluates its training data - use "
                    "guide='amortized' to evaluate held-out data"
                ) from exc
        return torch.cat(parts)

    def elbo(self, guide: Any, data: Mapping[str, Any], num_particles: int = 100) -> Tensor:
        """Per-example evidence lower bound ``E_q[log p(x_i, z) - log q(z | x_i)]`` in nats.

        A Monte Carlo average over ``num_particles`` draws per example; its standard error is
        ``log_importance_weights(...).std(0) / sqrt(num_particles)``.

        Parameters
        ----------
        guide : callable or FitResult
        data : dict
            ``{"x": (N, D)}`` (and ``"c": (N,)`` for the CVAE).
        num_particles : int

        Returns
        -------
        Tensor (N,)
            ``.mean()`` is the test ELBO in nats per example.
        """
        return self.log_importance_weights(guide, data, num_particles).mean(0)

    def iwae_log_likelihood(self, guide: Any, data: Mapping[str, Any], num_samples: int = 1000) -> Tensor:
        """Importance-weighted bound on ``log p(x_i)`` (Burda et al., 2016), per example, in nats.

        ``log (1/K) sum_k p(x_i, z_k) / q(z_k | x_i)`` with ``z_k ~ q``: a lower bound in
        expectation that increases with K (K = 1 is the ELBO) and converges to ``log p(x_i)``.

        Parameters
        ----------
        guide : callable or FitResult
        data : dict
        num_samples : int
            K.

        Returns
        -------
        Tensor (N,)
        """
        lw = self.log_importance_weights(guide, data, num_samples)
        return torch.logsumexp(lw.double(), 0).to(lw.dtype) - math.log(lw.shape[0])

    @torch.no_grad()
    def reconstruct(self, guide: Any, data: Mapping[str, Any], num_samples: int = 1) -> Tensor:
        """Decoder means at codes drawn from the guide, averaged over ``num_samples`` draws.

        Parameters
        ----------
        guide : callable or FitResult
        data : dict
            ``{"x": (N, D)}`` (and ``"c": (N,)`` for the CVAE).
        num_samples : int

        Returns
        -------
        Tensor (N, D)
            Expected reconstruction (pixel probabilities for Bernoulli, means otherwise).
        """
        guide = _as_guide(guide)
        num_samples = _positive_int("num_samples", num_samples)
        clean = self._eval_data(data)
        with poutine.block(), pyro.plate(_PARTICLE_PLATE, num_samples, dim=self.local_plate_dim - 1):
            z = poutine.trace(guide).get_trace(**clean).nodes["z"]["value"]
        onehot = _one_hot(clean.get("c"), self.num_classes, z)
        return self.decoder(z, onehot).mean.mean(0)

    def _generate(self, num: int, c: Tensor | None, mean: bool) -> Tensor:
        num = _positive_int("num", num)
        ref = self._ref
        with torch.no_grad():
            z = self._prior(ref).expand([num]).sample()
            d = self.decoder(z, _one_hot(c, self.num_classes, ref))
            return d.mean if mean else d.sample()

    def example_data(self, seed: int = 0) -> dict[str, Any]:
        """40 examples: noisy copies of random per-class prototypes (binary for ``"bernoulli"``).

        See :meth:`BayesianModel.example_data`.
        """
        g = torch.Generator().manual_seed(seed)
        n = 40
        labels = torch.randint(0, max(self.num_classes, 1), (n,), generator=g)
        # Each class gets its own prototype; examples are noisy copies of it.
        protos = torch.rand(max(self.num_classes, 1), self.in_features, generator=g)
        p = (0.8 * protos[labels] + 0.2 * torch.rand(n, self.in_features, generator=g))
        x = torch.bernoulli(p, generator=g) if self.likelihood == "bernoulli" else p
        out: dict[str, Any] = {"x": x}
        if self.num_classes:
            out["c"] = labels
        return out


def _as_guide(obj: Any) -> Any:
    """A guide callable from a guide or a ``FitResult`` (its trained guide)."""
    from ..inference.result import FitResult  # the inference package imports the models

    if isinstance(obj, FitResult):
        if obj.engine != "svi":
            raise TypeError("an MCMC result has no guide; pass an SVI FitResult or a trained guide")
        return obj.guide
    if not callable(obj):
        raise TypeError(f"guide must be a trained guide (callable) or an SVI FitResult, got {type(obj).__name__}")
    return obj


def _sum_log_prob(trace: Any, k: int, n: int) -> Tensor:
    """Sum over a trace's sample sites of ``scale * log_prob``, each broadcast to (K, N)."""
    total = None
    for site in trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        lp = site["fn"].log_prob(site["value"])
        if site["mask"] is not None:
            lp = lp * site["mask"]
        lp = lp * site["scale"]
        total = lp if total is None else total + lp
    if total is None:
        raise ValueError("the trace has no sample sites")
    return total.expand(k, n)


@register("vae")
class VAE(_VAEBase):
    """Variational autoencoder: ``z_i ~ Normal(0, I_L)``, ``x_i ~ p(x | decoder(z_i))``.

    The decoder is an MLP ``latent_dim -> *reversed(hidden_sizes) -> in_features`` whose
    weights are trained (as point estimates) together with the guide; the latent codes ``z_i``
    are the Bayesian part. Fit with ``guide="amortized"`` (an encoder network, minibatches,
    held-out evaluation) or ``guide="normal"`` (one Gaussian per training example).

    Parameters
    ----------
    in_features : int
        D, features per example (64 for scikit-learn's 8 x 8 digits).
    latent_dim : int
        L, size of each code.
    hidden_sizes : sequence of int
        Encoder hidden widths; the decoder mirrors them (``()``: linear networks).
    likelihood : {"bernoulli", "continuous_bernoulli", "gaussian"}
        ``"bernoulli"``: logits; x in [0, 1], grey levels act as soft targets (the usual
        cross-entropy VAE; a proper density only on binary data). ``"continuous_bernoulli"``:
        the normalised density on [0, 1] (Loaiza-Ganem & Cunningham, 2019). ``"gaussian"``:
        decoder mean with a learned per-feature standard deviation.
    activation : {"relu", "tanh", "softplus", "elu"}
    min_scale : float
        Floor on the Gaussian standard deviation (features that are constant in the data
        would otherwise drive it to zero and the likelihood to infinity).

    Raises
    ------
    ValueError
        An invalid hyperparameter (the message names it and the allowed values).

    Notes
    -----
    Data fields:

    - ``x``: Tensor (N, D) float (observed).

    Sample sites:

    - ``"z"``: (N, L) latent, in plate ``"data"`` (dim -1), event dim 1.
    - ``"x"``: (N, D) observed, in plate ``"data"``, event dim 1.

    Fitting trains the model's decoder in place: fitting the same instance twice continues
    from the first fit's decoder. SVI only (``supports_mcmc = False``): NUTS would hold the
    decoder at its initial weights. ``FitResult.predict()`` (no data) returns replicates of the
    training examples; for new inputs use :meth:`reconstruct` or :meth:`generate`.

    Examples
    --------
    >>> model = VAE(in_features=16, latent_dim=2, hidden_sizes=(32,))
    >>> model(x=torch.zeros(5, 16)).shape
    torch.Size([5, 16])
    >>> model.generate(3).shape
    torch.Size([3, 16])
    """

    data_spec = _spec(conditional=False)

    def __init__(self, in_features: int = 64, latent_dim: int = 8, hidden_sizes: Sequence[int] = (128,),
                 likelihood: str = "bernoulli", activation: str = "relu", min_scale: float = 1e-3) -> None:
        super().__init__(in_features, latent_dim, hidden_sizes, likelihood, activation, min_scale, 0)

    def forward(self, x: Tensor | None = None) -> Tensor:
        """Run the model on the examples ``x`` (N, D); returns ``x`` (sampled when unobserved)."""
        if x is None:
            raise ValueError(
                "VAE needs the examples x (N, D) (the data plate's size comes from them); "
                "to draw new examples use model.generate(num)"
            )
        return self._model(x, None, x.shape[-2])

    def prediction_inputs(self, train: Mapping[str, Tensor], new: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Not defined: the codes' posterior draws belong to the training examples.

        Raises
        ------
        ValueError
            Always, pointing to ``predict()`` without data, :meth:`reconstruct` and :meth:`generate`.
        """
        raise ValueError(
            "predict(data) is not defined for a VAE: the posterior draws of z belong to the training "
            "examples. predict() without data gives replicates of the training examples; for new "
            "inputs use model.reconstruct(result.guide, {'x': x_new}) (amortized guide) or "
            "model.generate(num)"
        )

    def generate(self, num: int, *, mean: bool = False) -> Tensor:
        """Draw ``num`` new examples from the prior predictive.

        Parameters
        ----------
        num : int
        mean : bool
            Return the decoder means (pixel probabilities) instead of samples.

        Returns
        -------
        Tensor (num, D)
        """
        return self._generate(num, None, mean)


@register("cvae")
class CVAE(_VAEBase):
    """Conditional VAE (Sohn et al., 2015): encoder and decoder both see a one-hot class label.

    ``z_i ~ Normal(0, I_L)``, ``x_i ~ p(x | decoder(z_i, onehot(c_i)))``; the amortised guide
    encodes ``q(z_i | x_i, c_i)``. Given a label, :meth:`generate` draws examples of that class.

    Parameters
    ----------
    in_features : int
    num_classes : int
        C, labels are ``0 <= c < C``.
    latent_dim, hidden_sizes, likelihood, activation, min_scale
        As for :class:`VAE`.

    Raises
    ------
    ValueError
        An invalid hyperparameter.

    Notes
    -----
    Data fields:

    - ``x``: Tensor (N, D) float (observed).
    - ``c``: Tensor (N,) int, the class labels.

    Sample sites:

    - ``"z"``: (N, L) latent, in plate ``"data"`` (dim -1), event dim 1.
    - ``"x"``: (N, D) observed, in plate ``"data"``, event dim 1.

    ``FitResult.predict({"c": labels})`` with N labels (N = training size) decodes each
    training example's codes under the given labels.

    Examples
    --------
    >>> model = CVAE(in_features=16, num_classes=3, latent_dim=2, hidden_sizes=(32,))
    >>> model(c=torch.tensor([0, 2])).shape       # draw one example of class 0 and one of class 2
    torch.Size([2, 16])
    >>> model.generate(4, c=1).shape
    torch.Size([4, 16])
    """

    data_spec = _spec(conditional=True)

    def __init__(self, in_features: int = 64, num_classes: int = 10, latent_dim: int = 8,
                 hidden_sizes: Sequence[int] = (128,), likelihood: str = "bernoulli",
                 activation: str = "relu", min_scale: float = 1e-3) -> None:
        super().__init__(in_features, latent_dim, hidden_sizes, likelihood, activation, min_scale,
                         _positive_int("num_classes", num_classes))

    def forward(self, x: Tensor | None = None, c: Tensor | None = None) -> Tensor:
        """Run the model on examples ``x`` (N, D) with labels ``c`` (N,); without ``x`` it draws them."""
        if c is None:
            raise ValueError("CVAE needs the class labels c (N,) long")
        return self._model(x, c, c.shape[-1])

    def prediction_inputs(self, train: Mapping[str, Tensor], new: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Decode the training examples' codes under new labels ``new["c"]`` (one per training example).

        Raises
        ------
        ValueError
            The number of labels differs from the number of training examples.
        """
        n_train, c = train["c"].shape[0], new.get("c")
        if c is None or c.shape[0] != n_train:
            raise ValueError(
                f"predict(data) for a CVAE takes one label per training example ({n_train}), since the "
                f"posterior draws of z belong to those examples; got {None if c is None else c.shape[0]}. "
                "For new examples use model.reconstruct(result.guide, {'x': x, 'c': c}) or "
                "model.generate(num, c=label)"
            )
        return dict(new)

    def generate(self, num: int, c: int | Sequence[int] | Tensor, *, mean: bool = False) -> Tensor:
        """Draw ``num`` new examples of class ``c`` from the prior predictive.

        Parameters
        ----------
        num : int
        c : int or array-like (num,) of int
            One label for all draws, or one per draw.
        mean : bool
            Return the decoder means instead of samples.

        Returns
        -------
        Tensor (num, D)

        Raises
        ------
        DataValidationError
            A label outside ``[0, num_classes)`` or the wrong number of labels.
        """
        num = _positive_int("num", num)
        labels = torch.as_tensor(c, device=self._ref.device)
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f"c: expected integer class labels, got {labels.dtype}")
        labels = labels.long().expand(num) if labels.dim() == 0 else labels.long()
        if labels.shape != (num,):
            raise DataValidationError(f"c: expected one label or {num} labels, got shape {tuple(labels.shape)}")
        if bool(((labels < 0) | (labels >= self.num_classes)).any()):
            raise DataValidationError(f"c: labels must be in [0, {self.num_classes - 1}], got {labels.tolist()[:10]}")
        return self._generate(num, labels, mean)
