"""Conjugate models: each has a closed-form posterior, so each doubles as an exact reference.

Every model here offers ``exact_posterior(**data)`` (one distribution per latent site, with
the same shape and event dimensions as the site) and ``updated(**data)`` (a new model whose
prior is that posterior, for sequential updating). Hyperparameters of an updated model are
plain floats or lists, so it can be saved and rebuilt by its registered name.

Examples
--------
>>> import torch
>>> from pyro_models.models.conjugate import BetaBinomialAB
>>> model = BetaBinomialAB()
>>> data = {"trials": torch.tensor([1000, 1000]), "successes": torch.tensor([100, 125])}
>>> round(model.prob_b_beats_a(**data), 4)
0.9614
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor

from ..data import DataSpec, Field
from ..errors import DataValidationError
from . import register
from .base import BayesianModel

__all__ = [
    "BetaBinomialAB",
    "NormalNormal",
    "GammaPoisson",
    "DirichletMultinomial",
    "prob_best",
]


# ---------------------------------------------------------------------------------------------
# helpers


def _positive(name: str, value: Any, *, allow_list: bool) -> Tensor:
    """Check a positive hyperparameter (a number, or a list of numbers) and return it as a tensor."""
    kinds = "a positive number" + (" or a list of positive numbers" if allow_list else "")
    if isinstance(value, bool) or not (
        isinstance(value, (int, float))
        or (allow_list and isinstance(value, (list, tuple)))
        or isinstance(value, Tensor)
    ):
        raise TypeError(f"{name} must be {kinds}, got {value!r}")
    try:
        t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be {kinds}, got {value!r} ({exc})") from None
    if t.dim() > (1 if allow_list else 0) or (t.dim() == 1 and t.numel() == 0):
        raise ValueError(f"{name} must be {kinds}, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
        raise ValueError(f"{name} must be {kinds} (finite, > 0), got {value!r}")
    return t


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _like(buf: Tensor, ref: Tensor | None) -> Tensor:
    """``buf`` on ``ref``'s device, in ``ref``'s dtype when ``ref`` is floating.

    The data decide device and precision so a model runs on CUDA or in float64 without
    being moved or rebuilt. Buffers are stored in float64 so that hyperparameters of an
    updated model keep full precision; integer data (counts) use the default float dtype.
    """
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.get_default_dtype()
    return buf.to(device=buf.device if ref is None else ref.device, dtype=dtype)


def _f64(buf: Tensor, ref: Tensor) -> Tensor:
    """``buf`` in float64 on ``ref``'s device, for closed-form updates at full precision."""
    return buf.to(device=ref.device, dtype=torch.float64)


def _per_category(name: str, value: Tensor, k: int) -> Tensor:
    """Broadcast a scalar-or-K hyperparameter to ``(K,)``, naming it if its length is wrong."""
    if value.dim() == 1 and value.shape[0] != k:
        raise DataValidationError(
            f"hyperparameter {name} has {value.shape[0]} values but the data have K={k} "
            f"categories; pass a scalar or a list of {k}"
        )
    return value.expand(k)


def _present(**data: Any) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _out_dtype(*tensors: Tensor | None) -> torch.dtype:
    for t in tensors:
        if t is not None and t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def _lbeta(a: Tensor, b: Tensor) -> Tensor:
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)


# ---------------------------------------------------------------------------------------------
# Beta-Binomial A/B(/n) test


def prob_best(p_samples: Tensor) -> Tensor:
    """Probability that each variant has the highest rate, estimated from joint draws.

    Parameters
    ----------
    p_samples : Tensor (..., S, K)
        Joint draws of the K variants' rates; every leading dimension counts as draws.

    Returns
    -------
    Tensor (K,)
        Fraction of draws in which each variant is the largest (sums to 1).

    Examples
    --------
    >>> import torch
    >>> prob_best(torch.tensor([[0.1, 0.2], [0.3, 0.2], [0.0, 0.5], [0.1, 0.9]]))
    tensor([0.2500, 0.7500])
    """
    if p_samples.dim() < 2 or p_samples.shape[-1] < 1:
        raise ValueError(f"p_samples must have shape (..., S, K), got {tuple(p_samples.shape)}")
    k = p_samples.shape[-1]
    flat = p_samples.reshape(-1, k)
    dtype = p_samples.dtype if p_samples.is_floating_point() else torch.get_default_dtype()
    counts = torch.bincount(flat.argmax(-1), minlength=k)
    return counts.to(dtype) / flat.shape[0]


def _miller(a1: float, b1: float, a2: float, b2: float) -> float:
    """P(B > A) for A ~ Beta(a1, b1), B ~ Beta(a2, b2) with integer ``a2`` (Evan Miller's sum)."""
    i = torch.arange(int(round(a2)), dtype=torch.float64)
    a1_, b1_, b2_ = (torch.tensor(v, dtype=torch.float64) for v in (a1, b1, b2))
    log_terms = (
        _lbeta(a1_ + i, b1_ + b2_) - torch.log(b2_ + i) - _lbeta(1 + i, b2_) - _lbeta(a1_, b1_)
    )
    # logsumexp keeps the sum finite when the individual Beta functions underflow.
    return float(torch.logsumexp(log_terms, 0).exp())


def _is_int(v: float) -> bool:
    return float(v).is_integer() and v >= 1


@register("beta_binomial")
class BetaBinomialAB(BayesianModel):
    """Beta-Binomial A/B(/n) test: independent success rates for K variants.

    ``p[k] ~ Beta(alpha[k], beta[k])`` and ``successes[k] ~ Binomial(trials[k], p[k])``.
    The rates form one vector site ``"p"`` with ``.to_event(1)`` rather than a plate over
    variants: variants are few, are never minibatched, and "which variant is best" is a
    question about the joint vector.

    Parameters
    ----------
    alpha, beta : float or list of float
        Beta prior pseudo-counts of successes and failures, one value for all variants or
        one per variant (length K). Must be > 0.

    Notes
    -----
    Data fields:

    - ``trials``: Tensor (K,) int >= 0.
    - ``successes``: Tensor (K,) int with ``0 <= successes <= trials`` (observed).

    Sample sites:

    - ``"p"``: (K,) latent, ``Beta(alpha, beta).to_event(1)``.
    - ``"successes"``: (K,) observed, ``Binomial(trials, p).to_event(1)``.

    Examples
    --------
    >>> import torch
    >>> model = BetaBinomialAB(alpha=1.0, beta=1.0)
    >>> data = {"trials": torch.tensor([120, 130]), "successes": torch.tensor([12, 20])}
    >>> post = model.exact_posterior(**data)["p"]
    >>> post.mean
    tensor([0.1066, 0.1591])
    >>> model(trials=data["trials"]).shape  # prior predictive
    torch.Size([2])
    >>> model.updated(**data).hparams
    {'alpha': [13.0, 21.0], 'beta': [109.0, 111.0]}
    """

    data_spec = DataSpec(
        (
            Field("trials", ("K",), dtype="int", lower=0, doc="number of trials per variant"),
            Field(
                "successes", ("K",), dtype="int", observed=True, lower=0,
                doc="number of successes per variant (<= trials)",
            ),
        )
    )

    def __init__(self, alpha: float | list[float] = 1.0, beta: float | list[float] = 1.0) -> None:
        super().__init__()
        a = _positive("alpha", alpha, allow_list=True)
        b = _positive("beta", beta, allow_list=True)
        if a.dim() == 1 and b.dim() == 1 and a.shape != b.shape:
            raise ValueError(f"alpha and beta have different lengths ({a.shape[0]} vs {b.shape[0]})")
        self.register_buffer("alpha", a, persistent=False)
        self.register_buffer("beta", b, persistent=False)

    def validate_data(
        self, data: Mapping[str, Any], *, require_observed: bool = True
    ) -> dict[str, Tensor]:
        """Validate against :attr:`data_spec`, and also require ``successes <= trials``."""
        out = super().validate_data(data, require_observed=require_observed)
        if "successes" in out:
            bad = out["successes"] > out["trials"]
            if bool(bad.any()):
                idx = bad.nonzero().flatten().tolist()
                raise DataValidationError(
                    f"successes: must be <= trials, but successes > trials for variant(s) {idx} "
                    f"(successes={out['successes'][bad].tolist()}, "
                    f"trials={out['trials'][bad].tolist()})"
                )
        return out

    def _prior(self, k: int, ref: Tensor) -> tuple[Tensor, Tensor]:
        a = _per_category("alpha", _like(self.alpha, ref), k)
        b = _per_category("beta", _like(self.beta, ref), k)
        return a, b

    def example_data(self, seed: int = 0) -> dict[str, Any]:
        """A small data set for this model (contract tests, docs); see :meth:`BayesianModel.example_data`."""
        g = torch.Generator().manual_seed(seed)
        trials = torch.tensor([50, 50])
        return {"trials": trials, "successes": torch.binomial(trials.float(), torch.tensor([0.3, 0.4]), generator=g).long()}

    def forward(self, trials: Tensor, successes: Tensor | None = None) -> Tensor:
        """Run the model; without ``successes`` it draws them (predictive).

        Parameters
        ----------
        trials : Tensor (K,) int
        successes : Tensor (K,) int, optional

        Returns
        -------
        Tensor (K,)
            ``successes`` (observed, or drawn).
        """
        a, b = self._prior(trials.shape[-1], trials)
        p = pyro.sample("p", dist.Beta(a, b).to_event(1))
        n = trials.to(p.dtype)
        # Float observations: lgamma of integer tensors would run in the default dtype.
        obs = None if successes is None else successes.to(p.dtype)
        return pyro.sample("successes", dist.Binomial(n, p).to_event(1), obs=obs)

    def _posterior_params(self, trials: Any, successes: Any) -> tuple[Tensor, Tensor]:
        d = self.validate_data({"trials": trials, "successes": successes})
        t, s = d["trials"].double(), d["successes"].double()
        a, b = self._prior(t.shape[0], t)
        return a + s, b + t - s

    def exact_posterior(self, trials: Any, successes: Any) -> dict[str, dist.Distribution]:
        """Closed-form posterior ``Beta(alpha + successes, beta + trials - successes)``.

        Parameters
        ----------
        trials, successes : array-like (K,) int

        Returns
        -------
        dict
            ``{"p": Beta(...).to_event(1)}`` with batch shape ``()`` and event shape ``(K,)``.
        """
        a, b = self._posterior_params(trials, successes)
        dtype = torch.get_default_dtype()
        return {"p": dist.Beta(a.to(dtype), b.to(dtype)).to_event(1)}

    def updated(self, trials: Any, successes: Any) -> BetaBinomialAB:
        """A new model whose prior is this model's posterior given the data.

        Returns
        -------
        BetaBinomialAB
            With ``alpha`` and ``beta`` lists of K floats.
        """
        a, b = self._posterior_params(trials, successes)
        return type(self)(alpha=a.tolist(), beta=b.tolist())

    def _posterior_draws(self, trials: Any, successes: Any, num_samples: int, seed: int) -> Tensor:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        post = self.exact_posterior(trials, successes)["p"]
        device = post.base_dist.concentration1.device
        # A private RNG stream: reproducible draws that leave the global seed untouched.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return post.sample((num_samples,))

    def prob_best(
        self, trials: Any, successes: Any, num_samples: int = 100_000, seed: int = 0
    ) -> Tensor:
        """Posterior probability that each variant has the highest rate (Monte Carlo).

        Parameters
        ----------
        trials, successes : array-like (K,) int
        num_samples : int
            Draws from the exact posterior; the standard error of each entry is at most
            ``0.5 / sqrt(num_samples)``.
        seed : int
            Seed of a private RNG stream (the global RNG state is restored afterwards).

        Returns
        -------
        Tensor (K,)
        """
        return prob_best(self._posterior_draws(trials, successes, num_samples, seed))

    def expected_loss(
        self, trials: Any, successes: Any, num_samples: int = 100_000, seed: int = 0
    ) -> Tensor:
        """Expected loss ``E[max_j p_j - p_k]`` of choosing each variant k (Monte Carlo).

        Parameters
        ----------
        trials, successes : array-like (K,) int
        num_samples, seed : int
            As in :meth:`prob_best`.

        Returns
        -------
        Tensor (K,)
            Rate lost, in expectation, by shipping variant k instead of the best one.
        """
        p = self._posterior_draws(trials, successes, num_samples, seed)
        return (p.max(-1, keepdim=True).values - p).mean(0)

    def prob_b_beats_a(self, trials: Any, successes: Any) -> float:
        """``P(p[1] > p[0] | data)`` for two variants, in closed form.

        Uses Evan Miller's finite sum over ``i < alpha_B`` with log-Beta functions, which needs
        the posterior ``alpha_B`` to be an integer. By symmetry (``P(B > A) = 1 - P(A > B)``
        and ``p -> 1 - p`` swapping alpha and beta) any one of the four posterior parameters
        being an integer suffices; the smallest such one is used (fewest terms). With the
        default ``Beta(1, 1)`` prior (or any integer prior) all four are integers.

        Parameters
        ----------
        trials, successes : array-like (2,) int
            Variant A first, then B.

        Returns
        -------
        float

        Raises
        ------
        ValueError
            If K != 2, or if none of the four posterior parameters is an integer (e.g. a
            Jeffreys ``Beta(0.5, 0.5)`` prior): use :meth:`prob_best` (Monte Carlo) instead.
        """
        a, b = self._posterior_params(trials, successes)
        if a.shape[0] != 2:
            raise ValueError(f"prob_b_beats_a needs exactly 2 variants (A, B), got K={a.shape[0]}")
        a1, a2 = float(a[0]), float(a[1])
        b1, b2 = float(b[0]), float(b[1])
        # (number of terms, formula) for each symmetric form whose summation bound is an integer.
        options = []
        if _is_int(a2):
            options.append((a2, lambda: _miller(a1, b1, a2, b2)))
        if _is_int(a1):
            options.append((a1, lambda: 1.0 - _miller(a2, b2, a1, b1)))
        if _is_int(b1):
            options.append((b1, lambda: _miller(b2, a2, b1, a1)))
        if _is_int(b2):
            options.append((b2, lambda: 1.0 - _miller(b1, a1, b2, a2)))
        if not options:
            raise ValueError(
                "prob_b_beats_a: the closed form needs one integer posterior parameter, but "
                f"alpha={[a1, a2]} and beta={[b1, b2]} are all non-integer (non-integer prior "
                "alpha/beta); use prob_best(...) for a Monte Carlo estimate"
            )
        _, fn = min(options, key=lambda o: o[0])
        return min(max(fn(), 0.0), 1.0)


# ---------------------------------------------------------------------------------------------
# Normal mean with known noise


@register("normal_normal")
class NormalNormal(BayesianModel):
    """Normal observations with known noise and a Normal prior on their mean.

    ``mu ~ Normal(prior_loc, prior_scale)`` and ``y[n] ~ Normal(mu, noise_scale)``.

    Parameters
    ----------
    prior_loc : float
    prior_scale : float
        Prior standard deviation of ``mu`` (> 0).
    noise_scale : float
        Known standard deviation of each observation (> 0).

    Notes
    -----
    Data fields:

    - ``y``: Tensor (N,) float (observed). Without ``y`` the model draws one new
      observation (N = 1), since no other field fixes N.

    Sample sites:

    - ``"mu"``: () latent.
    - ``"y"``: (N,) observed, in plate ``"data"``.

    Examples
    --------
    >>> import torch
    >>> model = NormalNormal(prior_loc=0.0, prior_scale=10.0, noise_scale=1.0)
    >>> post = model.exact_posterior(y=torch.tensor([1.0, 2.0, 3.0]))["mu"]
    >>> round(float(post.mean), 4), round(float(post.stddev), 4)
    (1.9934, 0.5764)
    >>> model().shape  # one predictive draw
    torch.Size([1])
    """

    data_spec = DataSpec(
        (Field("y", ("N",), observed=True, doc="observations"),), plate="data", plate_dim="N"
    )

    def __init__(
        self, prior_loc: float = 0.0, prior_scale: float = 10.0, noise_scale: float = 1.0
    ) -> None:
        super().__init__()
        loc = torch.tensor(_finite("prior_loc", prior_loc), dtype=torch.float64)
        self.register_buffer("prior_loc", loc, persistent=False)
        for name, value in (("prior_scale", prior_scale), ("noise_scale", noise_scale)):
            self.register_buffer(name, _positive(name, value, allow_list=False), persistent=False)

    def _hyper(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.prior_loc, self.prior_scale, self.noise_scale

    def example_data(self, seed: int = 0) -> dict[str, Any]:
        """A small data set for this model (contract tests, docs); see :meth:`BayesianModel.example_data`."""
        g = torch.Generator().manual_seed(seed)
        return {"y": 1.0 + torch.randn(20, generator=g)}

    def forward(self, y: Tensor | None = None) -> Tensor:
        """Run the model; without ``y`` it draws one new observation.

        Parameters
        ----------
        y : Tensor (N,) float, optional

        Returns
        -------
        Tensor (N,)
        """
        loc, scale, noise = (_like(t, y) for t in self._hyper())
        mu = pyro.sample("mu", dist.Normal(loc, scale))
        n = 1 if y is None else y.shape[-1]
        with pyro.plate("data", n, dim=-1):
            return pyro.sample("y", dist.Normal(mu, noise), obs=y)

    def _posterior_params(self, y: Any) -> tuple[Tensor, Tensor, torch.dtype]:
        yv = self.validate_data({"y": y})["y"]
        loc, scale, noise = (_f64(t, yv) for t in self._hyper())
        y64 = yv.double()
        precision = scale**-2 + y64.shape[0] * noise**-2
        mean = (loc * scale**-2 + y64.sum() * noise**-2) / precision
        return mean, precision.rsqrt(), yv.dtype

    def exact_posterior(self, y: Any) -> dict[str, dist.Distribution]:
        """Closed-form posterior of ``mu``.

        Parameters
        ----------
        y : array-like (N,) float

        Returns
        -------
        dict
            ``{"mu": Normal(m, s)}`` with precision ``1/s^2 = 1/prior_scale^2 + N/noise_scale^2``
            and ``m = s^2 (prior_loc/prior_scale^2 + sum(y)/noise_scale^2)``.
        """
        m, s, dtype = self._posterior_params(y)
        return {"mu": dist.Normal(m.to(dtype), s.to(dtype))}

    def updated(self, y: Any) -> NormalNormal:
        """A new model whose prior on ``mu`` is this posterior (same ``noise_scale``)."""
        m, s, _ = self._posterior_params(y)
        return type(self)(
            prior_loc=float(m), prior_scale=float(s), noise_scale=float(self.noise_scale)
        )


# ---------------------------------------------------------------------------------------------
# Poisson rate with exposure


@register("gamma_poisson")
class GammaPoisson(BayesianModel):
    """Poisson counts with a shared rate per unit exposure and a Gamma prior on the rate.

    ``rate ~ Gamma(concentration, rate)`` and ``counts[n] ~ Poisson(rate * exposure[n])``.

    Parameters
    ----------
    concentration : float
        Gamma shape (> 0).
    rate : float
        Gamma rate (inverse scale, > 0); prior mean of the Poisson rate is
        ``concentration / rate``.

    Notes
    -----
    Data fields:

    - ``counts``: Tensor (N,) int >= 0 (observed).
    - ``exposure``: Tensor (N,) float >= 0, optional (default 1 per observation). To
      predict without ``counts``, N comes from ``exposure`` (or is 1 without it).

    Sample sites:

    - ``"rate"``: () latent.
    - ``"counts"``: (N,) observed, in plate ``"data"``.

    Examples
    --------
    >>> import torch
    >>> model = GammaPoisson(concentration=2.0, rate=1.0)
    >>> post = model.exact_posterior(counts=torch.tensor([3, 5, 4]))["rate"]
    >>> float(post.concentration), float(post.rate)
    (14.0, 4.0)
    >>> model(exposure=torch.tensor([1.0, 2.0, 0.5])).shape
    torch.Size([3])
    """

    data_spec = DataSpec(
        (
            Field("counts", ("N",), dtype="int", observed=True, lower=0, doc="event counts"),
            Field(
                "exposure", ("N",), required=False, lower=0,
                doc="exposure (time, population) per count; default 1",
            ),
        ),
        plate="data",
        plate_dim="N",
    )

    def __init__(self, concentration: float = 1.0, rate: float = 1.0) -> None:
        super().__init__()
        for name, value in (("concentration", concentration), ("rate", rate)):
            self.register_buffer(name, _positive(name, value, allow_list=False), persistent=False)

    def example_data(self, seed: int = 0) -> dict[str, Any]:
        """A small data set for this model (contract tests, docs); see :meth:`BayesianModel.example_data`."""
        g = torch.Generator().manual_seed(seed)
        return {"counts": torch.poisson(torch.full((20,), 3.0), generator=g).long()}

    def forward(self, counts: Tensor | None = None, exposure: Tensor | None = None) -> Tensor:
        """Run the model; without ``counts`` it draws them.

        Parameters
        ----------
        counts : Tensor (N,) int, optional
        exposure : Tensor (N,) float, optional

        Returns
        -------
        Tensor (N,)
        """
        ref = exposure if exposure is not None else counts
        a, b = _like(self.concentration, ref), _like(self.rate, ref)
        lam = pyro.sample("rate", dist.Gamma(a, b))
        sized = counts if counts is not None else exposure
        n = 1 if sized is None else sized.shape[-1]
        mean = lam if exposure is None else lam * exposure
        obs = None if counts is None else counts.to(mean.dtype)
        with pyro.plate("data", n, dim=-1):
            return pyro.sample("counts", dist.Poisson(mean), obs=obs)

    def _posterior_params(self, counts: Any, exposure: Any) -> tuple[Tensor, Tensor, torch.dtype]:
        d = self.validate_data(_present(counts=counts, exposure=exposure))
        c, e = d["counts"], d.get("exposure")
        total_exposure = float(c.shape[0]) if e is None else e.double().sum()
        a = _f64(self.concentration, c) + c.double().sum()
        b = _f64(self.rate, c) + total_exposure
        return a, b, _out_dtype(e)

    def exact_posterior(self, counts: Any, exposure: Any = None) -> dict[str, dist.Distribution]:
        """Closed-form posterior ``Gamma(concentration + sum(counts), rate + sum(exposure))``.

        Parameters
        ----------
        counts : array-like (N,) int
        exposure : array-like (N,) float, optional

        Returns
        -------
        dict
            ``{"rate": Gamma(...)}`` (scalar).
        """
        a, b, dtype = self._posterior_params(counts, exposure)
        return {"rate": dist.Gamma(a.to(dtype), b.to(dtype))}

    def updated(self, counts: Any, exposure: Any = None) -> GammaPoisson:
        """A new model whose Gamma prior is this posterior."""
        a, b, _ = self._posterior_params(counts, exposure)
        return type(self)(concentration=float(a), rate=float(b))


# ---------------------------------------------------------------------------------------------
# Dirichlet-Multinomial


class _Multinomial(TorchDistribution):
    """Multinomial whose total count may differ across the batch.

    ``torch.distributions.Multinomial`` takes a single integer total, so rows of a count
    matrix with different totals cannot share one distribution. Log-density is the usual
    multinomial pmf; sampling draws the categories as a chain of conditional binomials
    (``x_k | x_<k ~ Binomial(n - sum x_<k, p_k / sum_{j>=k} p_j)``), which vectorises over
    any total counts.
    """

    arg_constraints = {"total_count": constraints.nonnegative_integer, "probs": constraints.simplex}

    def __init__(self, total_count: Tensor, probs: Tensor, validate_args: bool | None = None) -> None:
        total_count = total_count.to(probs.dtype)
        batch_shape = torch.broadcast_shapes(total_count.shape, probs.shape[:-1])
        self.total_count = total_count.expand(batch_shape)
        self.probs = probs.expand(batch_shape + probs.shape[-1:])
        super().__init__(batch_shape, probs.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape: Sequence[int], _instance: Any = None) -> _Multinomial:
        new = self._get_checked_instance(_Multinomial, _instance)
        batch_shape = torch.Size(batch_shape)
        new.total_count = self.total_count.expand(batch_shape)
        new.probs = self.probs.expand(batch_shape + self.event_shape)
        super(_Multinomial, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self) -> constraints.Constraint:
        return constraints.multinomial(self.total_count)

    @property
    def mean(self) -> Tensor:
        return self.total_count.unsqueeze(-1) * self.probs

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        probs = self.probs.expand(shape)
        remaining = self.total_count.expand(shape[:-1]).clone()
        tail = probs.flip(-1).cumsum(-1).flip(-1)
        # Past the last non-zero category the tail mass is 0: those draws are 0 anyway.
        safe_tail = tail.clamp_min(torch.finfo(probs.dtype).tiny)
        cond = torch.where(tail > 0, probs / safe_tail, 0.0).clamp(0, 1)
        out = []
        with torch.no_grad():
            for k in range(probs.shape[-1] - 1):
                x = torch.binomial(remaining, cond[..., k].contiguous())
                out.append(x)
                remaining = remaining - x
            out.append(remaining)
        return torch.stack(out, -1)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
            if not bool((value.sum(-1) == self.total_count).all()):
                raise ValueError("_Multinomial: each row of counts must sum to its total_count")
        value = value.to(self.probs.dtype)
        return (
            torch.lgamma(value.sum(-1) + 1)
            - torch.lgamma(value + 1).sum(-1)
            + torch.xlogy(value, self.probs).sum(-1)
        )


@register("dirichlet_multinomial")
class DirichletMultinomial(BayesianModel):
    """Multinomial count vectors sharing category probabilities with a Dirichlet prior.

    ``probs ~ Dirichlet(concentration)`` and ``counts[n] ~ Multinomial(total_count[n], probs)``,
    where each row may have its own total.

    Parameters
    ----------
    concentration : float or list of float
        Dirichlet concentration, one value for all K categories or a list of K (> 0). To
        predict without ``counts`` and with a scalar concentration, K is unknown: pass a list.

    Notes
    -----
    Data fields:

    - ``counts``: Tensor (N, K) int >= 0 (observed).
    - ``total_count``: Tensor (N,) int >= 0, optional. Needed only to predict without
      ``counts``; with ``counts`` the row sums are used (``total_count``, if given, must match).
      To get posterior predictive draws of the training rows, include it in the data you fit.

    Sample sites:

    - ``"probs"``: (K,) latent on the simplex.
    - ``"counts"``: (N, K) observed, in plate ``"data"`` (event dim 1).

    Examples
    --------
    >>> import torch
    >>> model = DirichletMultinomial(concentration=[1.0, 1.0, 1.0])
    >>> post = model.exact_posterior(counts=torch.tensor([[2, 0, 1], [5, 3, 2]]))["probs"]
    >>> post.concentration
    tensor([8., 4., 4.])
    >>> model(total_count=torch.tensor([10, 20])).sum(-1)
    tensor([10., 20.])
    """

    data_spec = DataSpec(
        (
            Field(
                "counts", ("N", "K"), dtype="int", observed=True, lower=0,
                doc="counts per category",
            ),
            Field(
                "total_count", ("N",), dtype="int", required=False, lower=0,
                doc="row totals; needed only to predict counts",
            ),
        ),
        plate="data",
        plate_dim="N",
    )

    def __init__(self, concentration: float | list[float] = 1.0) -> None:
        super().__init__()
        self.register_buffer(
            "concentration", _positive("concentration", concentration, allow_list=True), persistent=False
        )

    def validate_data(
        self, data: Mapping[str, Any], *, require_observed: bool = True
    ) -> dict[str, Tensor]:
        """Validate against :attr:`data_spec`; ``total_count``, if given with counts, must match."""
        out = super().validate_data(data, require_observed=require_observed)
        if "counts" in out and "total_count" in out:
            bad = out["counts"].sum(-1) != out["total_count"]
            if bool(bad.any()):
                rows = bad.nonzero().flatten().tolist()
                raise DataValidationError(
                    f"total_count: must equal the row sums of counts; rows {rows} differ"
                )
        return out

    def _num_categories(self, counts: Tensor | None) -> int:
        if counts is not None:
            return counts.shape[-1]
        if self.concentration.dim() == 1:
            return self.concentration.shape[0]
        raise DataValidationError(
            "dirichlet_multinomial: without counts the number of categories K is unknown; "
            "construct the model with concentration as a list of K values"
        )

    def example_data(self, seed: int = 0) -> dict[str, Any]:
        """A small data set for this model (contract tests, docs); see :meth:`BayesianModel.example_data`."""
        g = torch.Generator().manual_seed(seed)
        probs = torch.tensor([0.2, 0.3, 0.5])
        rows = [torch.multinomial(probs, 12, replacement=True, generator=g).bincount(minlength=3) for _ in range(4)]
        return {"counts": torch.stack(rows)}

    def forward(self, counts: Tensor | None = None, total_count: Tensor | None = None) -> Tensor:
        """Run the model; without ``counts`` it draws them given ``total_count``.

        Parameters
        ----------
        counts : Tensor (N, K) int, optional
        total_count : Tensor (N,) int, optional (required when ``counts`` is None)

        Returns
        -------
        Tensor (N, K)
        """
        if counts is None and total_count is None:
            raise DataValidationError(
                "dirichlet_multinomial: pass counts (N, K), or total_count (N,) to predict counts"
            )
        ref = counts if counts is not None else total_count
        k = self._num_categories(counts)
        conc = _per_category("concentration", _like(self.concentration, ref), k)
        probs = pyro.sample("probs", dist.Dirichlet(conc))
        totals = counts.sum(-1) if counts is not None else total_count
        with pyro.plate("data", totals.shape[-1], dim=-1):
            return pyro.sample("counts", _Multinomial(totals, probs), obs=counts)

    def _posterior_params(self, counts: Any, total_count: Any) -> Tensor:
        d = self.validate_data(_present(counts=counts, total_count=total_count))
        c = d["counts"]
        conc = _per_category("concentration", _f64(self.concentration, c), c.shape[-1])
        return conc + c.double().sum(0)

    def exact_posterior(self, counts: Any, total_count: Any = None) -> dict[str, dist.Distribution]:
        """Closed-form posterior ``Dirichlet(concentration + counts.sum(0))``.

        Parameters
        ----------
        counts : array-like (N, K) int
        total_count : array-like (N,) int, optional (checked against the row sums)

        Returns
        -------
        dict
            ``{"probs": Dirichlet(...)}`` with event shape ``(K,)``.
        """
        conc = self._posterior_params(counts, total_count)
        return {"probs": dist.Dirichlet(conc.to(torch.get_default_dtype()))}

    def updated(self, counts: Any, total_count: Any = None) -> DirichletMultinomial:
        """A new model whose Dirichlet prior is this posterior (``concentration`` a list of K)."""
        return type(self)(concentration=self._posterior_params(counts, total_count).tolist())
