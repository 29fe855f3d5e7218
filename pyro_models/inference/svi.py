"""The SVI engine: a plain PyTorch loop over Pyro's ELBO as an ``nn.Module`` loss.

Following Pyro's ``examples/svi_torch.py``: one batch goes through the loss before the
optimizer exists (guide parameters are created lazily), parameters are module-local (no
global param store), and the optimizer/scheduler are plain ``torch.optim`` objects, so
checkpoints are ordinary state dicts.

What a step costs, and what was taken out of it (see ``benchmarks/speed_svi.py``):

- Pyro's argument validation checks every distribution and hooks every log-density on every
  step. It runs for the first pass through the data (every datum is checked once, and the
  first steps still report invalid parameters as Pyro's own errors), then is switched off for
  the rest of the run, as Pyro's MCMC does. Non-finite losses and gradients are still caught on
  every step by the engine's own guard.
- Minibatches are slices of data permuted once per epoch (a gather per epoch, not per step)
  when the per-datum data are small enough to copy; the batches are the same as indexing.
- Adam and SGD use PyTorch's multi-tensor (``foreach``) kernels: the same arithmetic (bit for
  bit), fewer operator calls per step. A constant learning rate skips the scheduler's step.
- Two common pairs skip Pyro's tracing altogether when the ELBO is ``Trace_ELBO`` with one
  particle: a registered :class:`~pyro_models.models.bnn.BNN` with the mean-field ``"normal"``
  guide (:class:`_FastBNNELBO`) and a registered VAE/CVAE with the ``"amortized"`` guide
  (:class:`_FastVAEELBO`). They compute the same single-sample ELBO, from the same random
  draws, in plain torch ops. Each is checked against Pyro's loss module (value and every
  gradient, from the same random state) before the first step of every fit and used only when
  they agree; otherwise, or for any other model and guide, the engine uses Pyro's ELBO.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from typing import Any

import pyro
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoGuide, AutoNormal
from pyro.optim.clipped_adam import ClippedAdam
from pyro.poutine.messenger import Messenger
from torch.distributions import biject_to, transform_to
from torch.distributions.transforms import ComposeTransform, IndependentTransform

from .. import guides as guide_registry
from ..errors import DataValidationError, NonFiniteLossError
from ..naming import give_unique_pyro_name
from .adapter import ModelAdapter
from .checkpoint import check_resume, load_checkpoint, save_checkpoint
from .config import SVIConfig
from .engine_common import Callbacks, progress_bar, rng_state, set_rng_state

__all__ = ["run_svi", "resolve_guide", "GuideSpec"]

_ELBOS = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO, "tracegraph": TraceGraph_ELBO}


class GuideSpec:
    """What was asked for as a guide: a registered name with options, or a user object."""

    def __init__(self, name: str | None, options: dict[str, Any], obj: Any = None) -> None:
        self.name = name
        self.options = options
        self.obj = obj

    @property
    def entry(self) -> guide_registry.GuideEntry | None:
        return guide_registry.entry(self.name) if self.name is not None else None

    def build(self, model: Callable[..., Any]) -> Any:
        if self.obj is not None:
            return self.obj
        return give_unique_pyro_name(self.entry.factory(model, **self.options))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "options": self.options,
                "class": type(self.obj).__name__ if self.obj is not None else None}


def resolve_guide(guide: Any) -> GuideSpec:
    """``None`` (mean-field ``"normal"``), a registered name, ``(name, options)``, or a guide object."""
    if guide is None:
        guide = "normal"
    if isinstance(guide, str):
        guide_registry.entry(guide)  # KeyError listing the guides
        return GuideSpec(guide, {})
    if isinstance(guide, tuple) and len(guide) == 2 and isinstance(guide[0], str) and isinstance(guide[1], Mapping):
        entry = guide_registry.entry(guide[0])
        opts = dict(guide[1])
        allowed = entry.options()
        unknown = sorted(set(opts) - set(allowed))
        if unknown:
            raise TypeError(f"guide {guide[0]!r} got unknown option(s) {unknown}; its options are {allowed}")
        return GuideSpec(guide[0], opts)
    if callable(guide):
        return GuideSpec(None, {}, guide)
    raise TypeError(
        "guide must be a registered name (see pyro_models.guides.available()), a (name, options) "
        f"tuple, or a Pyro guide callable; got {type(guide).__name__}"
    )


class _PlateScale(Messenger):
    """Scale every sample site inside the named plate by ``N / batch`` (minibatch ELBO)."""

    def __init__(self, plate: str) -> None:
        super().__init__()
        self.plate = plate
        self.scale = 1.0

    def _process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "sample" and any(f.name == self.plate for f in msg["cond_indep_stack"]):
            msg["scale"] = msg["scale"] * self.scale


# Per-datum data up to this many bytes are copied in permuted order once per epoch, so a step
# slices views instead of gathering rows; larger data sets (images on a GPU) gather per step
# rather than hold a second copy.
_PERMUTE_COPY_BYTES = 64 * 2**20


class _Minibatcher:
    """Deterministic epochs of shuffled data: step -> batch, reproducible after a resume.

    Epoch ``e`` visits the data in the order ``randperm(n)`` of a generator seeded with
    ``seed + 7919 * e``; step ``e * per_epoch + j`` takes positions ``[j * b, (j + 1) * b)``.
    """

    def __init__(self, data: dict[str, Any], keys: tuple[str, ...], n: int, batch_size: int, seed: int,
                 device: torch.device) -> None:
        self.data, self.keys = data, keys
        self.n, self.b, self.seed, self.device = n, batch_size, seed, device
        self.per_epoch = math.ceil(n / batch_size)
        nbytes = sum(data[k].numel() * data[k].element_size() for k in keys)
        self.copy = nbytes <= _PERMUTE_COPY_BYTES
        self._epoch, self._perm, self._permuted = -1, None, None

    def _set_epoch(self, epoch: int) -> None:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed + 7919 * epoch)
            self._perm = torch.randperm(self.n, generator=g).to(self.device)
            self._permuted = ({k: self.data[k].index_select(0, self._perm) for k in self.keys}
                              if self.copy else None)
            self._epoch = epoch

    def indices(self, step: int) -> torch.Tensor:
        epoch, j = divmod(step, self.per_epoch)
        self._set_epoch(epoch)
        return self._perm[j * self.b:(j + 1) * self.b]

    def batch(self, step: int) -> tuple[dict[str, Any], int]:
        """The data of ``step`` (per-datum keys sliced, the rest as is) and the batch size."""
        epoch, j = divmod(step, self.per_epoch)
        self._set_epoch(epoch)
        lo, hi = j * self.b, min((j + 1) * self.b, self.n)
        if self._permuted is not None:
            rows = self._permuted
            return {k: (rows[k][lo:hi] if k in rows else v) for k, v in self.data.items()}, hi - lo
        idx = self._perm[lo:hi]
        return {k: (v.index_select(0, idx) if k in self.keys else v) for k, v in self.data.items()}, hi - lo


def _minibatch_setup(adapter: ModelAdapter, data: dict[str, Any], config: SVIConfig):
    """Which plate to scale and which data keys to slice."""
    if config.batch_size is None:
        return None, ()
    plate = config.minibatch_plate or (adapter.spec.plate if adapter.spec is not None else None) or "data"
    if plate not in adapter.sites.plates:
        raise ValueError(
            f"batch_size needs a data plate to scale, but model {adapter.name!r} has no plate named "
            f"{plate!r} (its plates: {sorted(adapter.sites.plates) or 'none'}); set "
            f"SVIConfig(minibatch_plate=...) to the plate over data points"
        )
    n = adapter.sites.plates[plate]
    if adapter.spec is not None and adapter.spec.plate == plate:
        keys = tuple(k for k in adapter.spec.per_datum() if k in data)
    else:
        keys = tuple(k for k, v in data.items() if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == n)
    if not keys:
        raise ValueError(f"batch_size given but no data field has the plate {plate!r} size {n} as its leading dim")
    if config.batch_size >= n:
        return None, ()
    return (plate, n), keys


def _collect_params(loss_module: torch.nn.Module, batch: dict[str, Any],
                    differentiable: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    with poutine.trace(param_only=True) as ptr:
        if differentiable:
            loss = loss_module(**batch)
        else:  # TraceGraph_ELBO has no differentiable loss; one evaluation creates the params
            loss_module.elbo.loss(loss_module.model, loss_module.guide, **batch)
            loss = None
    params: dict[str, torch.Tensor] = {}
    seen = set()
    for name, p in loss_module.named_parameters():
        if p.requires_grad and id(p) not in seen:
            params["m:" + name] = p
            seen.add(id(p))
    store = pyro.get_param_store()
    for name, site in ptr.trace.nodes.items():
        if site["type"] == "param" and name in store:
            u = store._params[name]  # the unconstrained leaf Pyro optimises
            if id(u) not in seen and u.requires_grad:
                params["ps:" + name] = u
                seen.add(id(u))
    return dict(sorted(params.items())), loss


def _lr_lambda(config: SVIConfig) -> Callable[[int], float]:
    total, f = config.num_steps, config.lr_final_factor
    if config.lr_schedule == "exponential":
        return lambda t: f ** (min(t, total) / total)
    if config.lr_schedule == "cosine":
        return lambda t: f + (1 - f) * 0.5 * (1 + math.cos(math.pi * min(t, total) / total))
    return lambda t: 1.0


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_LOG_2 = math.log(2.0)
# Modules without parameters or buffers that the fast BNN path calls as they are.
_ELEMENTWISE = (torch.nn.ReLU, torch.nn.Tanh, torch.nn.GELU, torch.nn.SiLU, torch.nn.ELU, torch.nn.Sigmoid,
                torch.nn.Softplus, torch.nn.LeakyReLU, torch.nn.Identity, torch.nn.Dropout)


def _is_identity(t: Any) -> bool:
    while isinstance(t, IndependentTransform):
        t = t.base_transform
    return isinstance(t, ComposeTransform) and not t.parts


class _FastBNNELBO:
    """``Trace_ELBO`` (one particle) of a registered BNN under the ``"normal"`` guide, in torch ops.

    Pyro's ELBO traces the guide and the model on every step and walks both traces to sum
    log-densities; for a network with a handful of weight tensors that bookkeeping costs
    several times the arithmetic. This computes the same single-sample estimate directly:

    - guide: for each latent site, in the guide's own order, ``eps`` is drawn exactly as
      ``Normal.rsample`` draws it (so a fixed seed gives the same draws as the Pyro path) and
      ``u = loc + eps * softplus(raw)``, ``log q(u) = -eps^2 / 2 - log scale - log sqrt(2 pi)``;
      for a constrained site (the noise) ``value = biject_to(support)(u)`` with the
      log-Jacobian term AutoNormal puts on its ``Delta`` site;
    - model: the prior log-densities of the weights (normal or Laplace) and of the noise, and
      the likelihood of the batch scaled by ``N / batch`` like the ``"data"`` plate.

    The weight sites are handled as one flat vector (one concatenation of the guide's
    parameters, then a handful of whole-vector operations, then views per tensor), so the
    number of operator calls per step does not grow with the number of layers.

    :meth:`build` checks the result against Pyro's loss module (value and gradient of every
    parameter, from the same random state) and returns ``None`` on any mismatch or unsupported
    configuration; the engine then keeps Pyro's ELBO.
    """

    def __init__(self, model: Any, flat: list[tuple], other: list[tuple], order: list[tuple[str, bool, int]],
                 scale_fn: Callable[[], float]) -> None:
        self.model = model
        self.net = model._modules["net"]
        self.likelihood = model.likelihood
        self.scale_fn = scale_fn
        self.sequential = self._plain_sequential(self.net)
        # Weight sites (identity support): (net param name, loc, raw scale, shape).
        self.flat = flat
        self.flat_locs = [t[1] for t in flat]
        self.flat_raws = [t[2] for t in flat]
        self.sizes = [t[1].numel() for t in flat]
        ref = flat[0][1]
        # Per-element prior constants: -0.5 * w^2 / s^2 (normal) and -|w| / b (Laplace).
        prec, inv_b, const = [], [], 0.0
        for (_, loc, _, _), prior in zip(flat, self._priors_of(model, flat)):
            n = loc.numel()
            if prior.family == "normal":
                prec.append(torch.full((n,), prior.scale ** -2.0))
                inv_b.append(torch.zeros(n))
                const -= n * (math.log(prior.scale) + _HALF_LOG_2PI)
            else:
                prec.append(torch.zeros(n))
                inv_b.append(torch.full((n,), 1.0 / prior.scale))
                const -= n * math.log(2 * prior.scale)
        prec_t, inv_b_t = torch.cat(prec), torch.cat(inv_b)
        same = bool((prec_t == prec_t[0]).all()) and not bool(inv_b_t.any())
        # The common case, one normal prior scale for every weight, needs no per-element vector.
        self.prec = float(prec_t[0]) if same else prec_t.to(device=ref.device, dtype=ref.dtype)
        self.inv_b = None if not bool(inv_b_t.any()) else inv_b_t.to(device=ref.device, dtype=ref.dtype)
        self.log_p_const = const
        self.num_flat = sum(self.sizes)
        # Constrained sites (the noise): (site, loc, raw scale, support transform).
        self.other = other
        # Draw order of the guide: (site, is_flat, index).
        self.order = order
        self.to_scale = transform_to(constraints.softplus_positive)

    @staticmethod
    def _priors_of(model: Any, flat: list[tuple]) -> list[Any]:
        by_name = {p.name: p for p in model._priors}
        return [by_name[name] for name, *_ in flat]

    @staticmethod
    def _plain_sequential(net: torch.nn.Module) -> bool:
        """A ``Sequential`` of ``Linear`` layers and parameter-free activations (``make_mlp``)."""
        if type(net) is not torch.nn.Sequential:
            return False
        for child in net:
            if type(child) is torch.nn.Linear:
                continue
            if not isinstance(child, _ELEMENTWISE) or any(True for _ in child.parameters()) \
                    or any(True for _ in child.buffers()):
                return False
        return True

    @classmethod
    def build(cls, adapter: ModelAdapter, guide: Any, config: SVIConfig, loss_module: torch.nn.Module,
              plist: list[torch.Tensor], batch: dict[str, Any], scale_fn: Callable[[], float],
              device: torch.device) -> _FastBNNELBO | None:
        """The fast ELBO when it applies and matches Pyro's on ``batch``; ``None`` otherwise."""
        from ..models.bnn import BNN  # the models import the inference package's helpers

        model = adapter.fn
        if not (isinstance(model, BNN) and type(guide) is AutoNormal and config.elbo == "trace"
                and config.num_particles == 1 and type(model).forward is BNN.forward
                and type(model)._sample_parameters is BNN._sample_parameters
                and type(model)._run_net is BNN._run_net and guide.prototype_trace is not None
                and all(p.family in ("normal", "laplace") for p in model._priors)):
            return None
        site_to_param = {p.site: p.name for p in model._priors}
        sigma = "sigma" if model.likelihood == "gaussian" and model.noise_scale is None else None
        flat, other, order = [], [], []
        try:
            for name, site in guide.prototype_trace.iter_stochastic_nodes():
                if site["cond_indep_stack"]:
                    return None
                loc, loc_c = cls._guide_param(guide.locs, name)
                raw, scale_c = cls._guide_param(guide.scales, name)
                if loc_c is not constraints.real or scale_c is not constraints.softplus_positive:
                    return None
                support = biject_to(site["fn"].support)
                if name in site_to_param and _is_identity(support):
                    order.append((name, True, len(flat)))
                    flat.append((site_to_param[name], loc, raw, tuple(loc.shape)))
                elif name == sigma:
                    order.append((name, False, len(other)))
                    other.append((name, loc, raw, support))
                else:
                    return None
        except (KeyError, AttributeError, NotImplementedError):
            return None
        if not flat or len(order) != len(model.latent_site_names) or {o[0] for o in order} != set(model.latent_site_names):
            return None
        fast = cls(model, flat, other, order, scale_fn)
        return fast if _same_loss(loss_module, fast, plist, batch, device) else None

    @staticmethod
    def _guide_param(root: torch.nn.Module, name: str) -> tuple[torch.Tensor, Any]:
        """AutoNormal's unconstrained leaf for site ``name`` (``deep_setattr`` nests on dots)."""
        *path, leaf = name.split(".")
        mod = root
        for part in path:
            mod = mod._modules[part]
        constraint, _ = mod._pyro_params[leaf]
        return mod._parameters[leaf + "_unconstrained"], constraint

    def _forward_net(self, x: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.sequential:
            return self.model._run_net(x, values)[0]
        h = x
        for i, child in enumerate(self.net):
            if type(child) is torch.nn.Linear:
                w = values.get(f"{i}.weight", child.weight)
                b = values.get(f"{i}.bias", child.bias)
                if w.dtype != h.dtype or (b is not None and b.dtype != h.dtype):
                    return self.model._run_net(x, values)[0]  # deterministic layers need a cast
                h = F.linear(h, w, b)
            else:
                h = child(h)
        return h

    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        """The loss (negative ELBO) of one batch, differentiable in the guide's parameters."""
        x, y = batch["x"], batch["y"]
        # Standard normal draws, site by site in the guide's order (as Normal.rsample makes them).
        eps_flat: list[torch.Tensor] = [None] * len(self.flat)  # type: ignore[list-item]
        eps_other: list[torch.Tensor] = [None] * len(self.other)  # type: ignore[list-item]
        for _, is_flat, i in self.order:
            loc = self.flat[i][1] if is_flat else self.other[i][1]
            e = torch.empty(loc.shape, dtype=loc.dtype, device=loc.device).normal_()
            if is_flat:
                eps_flat[i] = e
            else:
                eps_other[i] = e
        eps = torch.cat([e.reshape(-1) for e in eps_flat])
        scale = self.to_scale(torch.cat([r.reshape(-1) for r in self.flat_raws]))
        u = torch.cat([l.reshape(-1) for l in self.flat_locs]) + eps * scale
        # log q - log p of the weights, up to constants added below.
        sq = u * u
        wsq = sq.sum() * self.prec if isinstance(self.prec, float) else (sq * self.prec).sum()
        neg_log_p = 0.5 * wsq - self.log_p_const
        if self.inv_b is not None:
            neg_log_p = neg_log_p + (u.abs() * self.inv_b).sum()
        with torch.no_grad():
            eps_term = 0.5 * (eps * eps).sum() + self.num_flat * _HALF_LOG_2PI
        log_q = -scale.log().sum() - eps_term
        weights = {name: part.view(shape) for (name, _, _, shape), part in zip(self.flat, u.split(self.sizes))}
        sigma = None
        for (_, loc, raw, support), e in zip(self.other, eps_other):
            sc = self.to_scale(raw)
            v = loc + e * sc
            value = support(v)
            log_q = log_q - 0.5 * e * e - sc.log() - _HALF_LOG_2PI + support.inv.log_abs_det_jacobian(value, v).sum()
            sigma = value
        out = self._forward_net(x, weights)
        lik = self.likelihood
        if lik in ("gaussian", "bernoulli") and out.dim() > 1:
            out = out[..., 0]
        if lik == "gaussian":
            r = y - out
            if sigma is not None:
                s0 = self.model.noise_prior_scale
                neg_log_p = neg_log_p - (_LOG_2 - _HALF_LOG_2PI - math.log(s0) - 0.5 * (sigma / s0) ** 2)
                loglik = -0.5 * (r * r).sum() / (sigma * sigma) - r.numel() * (sigma.log() + _HALF_LOG_2PI)
            else:
                s = self.model.noise_scale
                loglik = -0.5 / (s * s) * (r * r).sum() - r.numel() * (math.log(s) + _HALF_LOG_2PI)
        elif lik == "heteroscedastic":
            from ..models.bnn import _MIN_SCALE

            sd = F.softplus(out[..., 1]) + _MIN_SCALE
            r = (y - out[..., 0]) / sd
            loglik = (-0.5 * r * r - sd.log()).sum() - r.numel() * _HALF_LOG_2PI
        elif lik == "bernoulli":
            loglik = -F.binary_cross_entropy_with_logits(out, y, reduction="sum")
        else:
            loglik = -F.cross_entropy(out, y, reduction="sum")
        return neg_log_p + log_q - self.scale_fn() * loglik


def _same_loss(loss_module: torch.nn.Module, fast: Callable[[dict[str, Any]], torch.Tensor],
               plist: list[torch.Tensor], batch: dict[str, Any], device: torch.device) -> bool:
    """Whether ``fast(batch)`` equals Pyro's ``loss_module(**batch)``: value and every gradient.

    Both run from the same random state (restored afterwards, so training draws are not
    shifted); float rounding differs (sums in another order), so the tolerances are relative.
    Anything the fast loss cannot evaluate counts as a mismatch.
    """
    results = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            state = rng_state(device)
            for fn in (lambda: loss_module(**batch), lambda: fast(batch)):
                set_rng_state(state, device)
                loss = fn()
                grads = torch.autograd.grad(loss, plist, allow_unused=True)
                results.append((loss.detach(), grads))
    except Exception:  # a model or guide the fast path does not understand: keep Pyro's ELBO
        return False
    (l1, g1), (l2, g2) = results
    if l1.shape != l2.shape or not (bool(torch.isfinite(l1)) and bool(torch.isclose(l1, l2, rtol=1e-4, atol=1e-4))):
        return False
    for a, b in zip(g1, g2):
        if (a is None) != (b is None):
            return False
        if a is None:
            continue
        tol = 1e-3 * float(a.abs().max()) + 1e-6
        if a.shape != b.shape or not bool(((a - b).abs() <= tol).all()):
            return False
    return True


class _FastVAEELBO:
    """``Trace_ELBO`` (one particle) of a registered VAE/CVAE under the ``"amortized"`` guide.

    The guide's encoder gives ``q(z_i | x_i) = Normal(loc_i, scale_i)``; ``z = loc + eps * scale``
    with ``eps`` drawn as ``Normal.rsample`` draws it, then ``log q(z)``, the standard normal
    prior ``log p(z)`` and the decoder's ``log p(x | z)``, all inside the data plate and so
    all scaled by ``N / batch``. The networks are the model's and the guide's own modules:
    only Pyro's tracing is skipped. Checked against Pyro's loss in :meth:`build`.
    """

    def __init__(self, model: Any, guide: Any, scale_fn: Callable[[], float]) -> None:
        self.model, self.guide, self.scale_fn = model, guide, scale_fn

    @classmethod
    def build(cls, adapter: ModelAdapter, guide: Any, config: SVIConfig, loss_module: torch.nn.Module,
              plist: list[torch.Tensor], batch: dict[str, Any], scale_fn: Callable[[], float],
              device: torch.device) -> _FastVAEELBO | None:
        from ..guides.amortized import AmortizedGuide
        from ..models.vae import CVAE, VAE, GaussianEncoder, _VAEBase

        model = adapter.fn
        if not (isinstance(model, (VAE, CVAE)) and type(model).forward in (VAE.forward, CVAE.forward)
                and type(model)._model is _VAEBase._model and type(guide) is AmortizedGuide
                and type(guide.encoder) is GaussianEncoder and guide.encoder.site == "z"
                and guide.plate == "data" and guide.dim == -1
                and config.elbo == "trace" and config.num_particles == 1
                and set(adapter.sites.latent) == {"z"}):
            return None
        fast = cls(model, guide, scale_fn)
        return fast if _same_loss(loss_module, fast, plist, batch, device) else None

    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        from ..models.vae import _MIN_ENCODER_SCALE, _one_hot, _with_condition

        x, enc, dec = batch["x"], self.guide.encoder, self.model.decoder
        # GaussianEncoder.forward and Decoder.forward without building distribution objects
        # (their construction costs about as much as the small networks' arithmetic).
        onehot = _one_hot(batch.get("c"), enc.num_classes, x)
        loc, raw = enc.net(_with_condition(x, onehot)).split(enc.latent_dim, dim=-1)
        scale = F.softplus(raw) + _MIN_ENCODER_SCALE
        eps = torch.empty(loc.shape, dtype=loc.dtype, device=loc.device).normal_()
        z = loc + eps * scale
        with torch.no_grad():  # no gradient flows through eps
            half_eps_sq = 0.5 * (eps * eps).sum()
        # log p(z) - log q(z) = sum(-z^2/2 + eps^2/2 + log scale): the 2 pi terms cancel.
        log_ratio = -0.5 * (z * z).sum() + scale.log().sum() + half_eps_sq
        if dec.likelihood == "bernoulli":
            logits = dec.net(_with_condition(z, _one_hot(batch.get("c"), dec.num_classes, z)))
            log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        else:
            log_px = dec(z, _one_hot(batch.get("c"), dec.num_classes, z)).log_prob(x).sum()
        return -self.scale_fn() * (log_px + log_ratio)


def _fast_elbo(adapter: ModelAdapter, guide: Any, config: SVIConfig, loss_module: torch.nn.Module,
               plist: list[torch.Tensor], batch: dict[str, Any], scale_fn: Callable[[], float],
               device: torch.device) -> Callable[[dict[str, Any]], torch.Tensor] | None:
    """A trace-free ELBO for a known (model, guide) pair, verified against Pyro's; else ``None``."""
    for kind in (_FastBNNELBO, _FastVAEELBO):
        fast = kind.build(adapter, guide, config, loss_module, plist, batch, scale_fn, device)
        if fast is not None:
            return fast
    return None


def run_svi(
    adapter: ModelAdapter,
    data: dict[str, Any],
    config: SVIConfig,
    guide_spec: GuideSpec,
    *,
    seed: int,
    device: torch.device,
    progress: bool,
    checkpoint_dir: str | None,
    callbacks: Callbacks,
    fingerprint: str,
):
    from .result import FitResult  # result imports engines' helpers; avoid a cycle

    start_time = time.perf_counter()
    guide = guide_spec.build(adapter.fn)
    overrides = dict(getattr(guide, "svi_overrides", None) or {})
    if overrides:
        # e.g. a deep ensemble trains its members as the vectorised particles of one ELBO (or,
        # through ``svi_fallback_overrides`` below, one after another when the model cannot).
        config = dataclasses.replace(config, **overrides)
    mb, keys = _minibatch_setup(adapter, data, config)
    scaler = _PlateScale(mb[0]) if mb else None
    model_fn = scaler(adapter.fn) if scaler else adapter.fn
    if mb is not None and isinstance(guide, AutoGuide):
        local = [k for k in adapter.sites.latent if mb[0] in adapter.sites.site_plates.get(k, ())]
        if local:
            raise ValueError(
                f"batch_size subsamples plate {mb[0]!r}, which holds the local latent site(s) {local}; "
                f"an autoguide keeps one parameter per data point and cannot be minibatched. Use the "
                f"full batch (batch_size=None) or an amortised guide."
            )
    if isinstance(guide, torch.nn.Module):
        guide.to(device)
    guide_fn = scaler(guide) if scaler else guide

    def make_loss(config: SVIConfig):
        elbo = _ELBOS[config.elbo](num_particles=config.num_particles,
                                   vectorize_particles=config.vectorize_particles,
                                   max_plate_nesting=adapter.sites.max_plate_nesting)
        loss_module = elbo(model_fn, guide_fn)
        # Wrapped (minibatch-scaled) callables hide their modules; register them so parameter
        # names are stable across runs (checkpoints are matched by name).
        for attr, obj in (("model_module", adapter.fn), ("guide_module", guide)):
            if isinstance(obj, torch.nn.Module):
                loss_module.add_module(attr, obj)
        return elbo, loss_module

    elbo, loss_module = make_loss(config)
    batcher = _Minibatcher(data, keys, mb[1], config.batch_size, seed, device) if mb else None

    def batch_at(step: int) -> dict[str, Any]:
        if batcher is None:
            return data
        batch, size = batcher.batch(step)
        scaler.scale = mb[1] / size
        return batch

    # TraceGraph_ELBO only offers loss_and_grads (it builds a surrogate loss and calls backward).
    differentiable = config.elbo != "tracegraph"
    fallback = dict(getattr(guide, "svi_fallback_overrides", None) or {}) if overrides else {}
    try:
        params, first_loss = _collect_params(loss_module, batch_at(0), differentiable)
    except Exception:
        # The model cannot run as the guide's overrides ask (a deep ensemble's model that does
        # not broadcast over a leading member dim): retry once with the guide's fallback. The
        # guide's parameters already exist, so the retry reuses the same initial values; if the
        # fallback fails too, its error (the model's own) is the one raised.
        if not fallback:
            raise
        failed = True
    else:
        failed = False
    if failed:
        config = dataclasses.replace(config, **fallback)
        elbo, loss_module = make_loss(config)
        params, first_loss = _collect_params(loss_module, batch_at(0), differentiable)
    if not params:
        raise ValueError(f"guide {guide_spec.name or type(guide).__name__} has no trainable parameters")
    names, plist = list(params), list(params.values())
    if config.optimizer == "clipped_adam":
        optimizer = ClippedAdam(plist, lr=config.lr, clip_norm=config.clip_norm)
    elif config.optimizer == "sgd":
        # foreach: the multi-tensor kernels (the CUDA default, opt-in on CPU) do the same
        # arithmetic with one operator call per step instead of one per parameter tensor.
        optimizer = torch.optim.SGD(plist, lr=config.lr, momentum=0.9, foreach=True)
    else:
        optimizer = torch.optim.Adam(plist, lr=config.lr, foreach=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    snapshot = [p.detach().clone() for p in plist]
    losses: list[float] = []
    step0 = 0

    def guide_buffers() -> dict[str, torch.Tensor]:
        return dict(guide.named_buffers()) if isinstance(guide, torch.nn.Module) else {}

    def state(step: int) -> dict[str, Any]:
        return {
            "engine": "svi", "fingerprint": fingerprint, "step": step, "seed": seed,
            "losses": torch.tensor(losses, dtype=torch.float64),
            "params": {n: p.detach().cpu().clone() for n, p in zip(names, plist)},
            # Guide state that is not a parameter (SWAG's collected trajectory moments).
            "buffers": {n: b.detach().cpu().clone() for n, b in guide_buffers().items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": rng_state(device),
        }

    if checkpoint_dir is not None:
        ck = load_checkpoint(checkpoint_dir)
        if ck is not None:
            check_resume(ck, "svi", fingerprint, checkpoint_dir)
            if list(ck["params"]) != names:
                raise ValueError(f"checkpoint in {checkpoint_dir} has different parameters; use a fresh directory")
            with torch.no_grad():
                for p, n in zip(plist, names):
                    p.copy_(ck["params"][n].to(device))
            own = guide_buffers()
            with torch.no_grad():
                for n, b in ck.get("buffers", {}).items():
                    if n in own:
                        own[n].copy_(b.to(device))
            optimizer.load_state_dict(ck["optimizer"])
            scheduler.load_state_dict(ck["scheduler"])
            set_rng_state(ck["rng"], device)
            losses = [float(x) for x in ck["losses"]]
            step0 = int(ck["step"])

    fast = None
    if differentiable and step0 < config.num_steps:
        fast = _fast_elbo(adapter, guide, config, loss_module, plist, batch_at(0),
                          (lambda: scaler.scale) if scaler else (lambda: 1.0), device)
    # Pyro's argument validation (when on) covers one full pass through the data, then is
    # switched off for speed; the finite-loss and finite-gradient guard below stays on.
    validate_until = batcher.per_epoch if batcher is not None else 1
    guide_on_step = getattr(guide, "on_step", None)
    bar = progress_bar(progress, config.num_steps, "SVI")
    bar.update(step0)
    show_loss = not bar.disable
    # A constant schedule's scheduler never changes the rate: skip its per-step bookkeeping.
    step_lr = config.lr_schedule != "constant"
    consistent = True
    step = step0
    quiet, validating = ExitStack(), True
    try:
        for step in range(step0, config.num_steps):
            if validating and step >= validate_until:
                quiet.enter_context(pyro.validation_enabled(False))
                validating = False
            batch = batch_at(step)
            optimizer.zero_grad(set_to_none=True)
            try:
                if not differentiable:
                    loss = torch.as_tensor(elbo.loss_and_grads(model_fn, guide_fn, **batch))
                elif step == 0 and first_loss is not None:
                    loss = first_loss
                elif fast is not None:
                    loss = fast(batch)
                else:
                    loss = loss_module(**batch)
            except ValueError as exc:
                # Pyro's distribution validation reports NaN/inf parameters as ValueError.
                if losses and _looks_nonfinite(exc):
                    _restore(plist, snapshot)
                    raise _nonfinite(step, float("nan"), "loss", adapter, guide_spec, config, losses,
                                     guide, data, seed, device, start_time, checkpoint_dir, state,
                                     callbacks) from exc
                raise
            first_loss = None
            value = float(loss.detach())
            if not math.isfinite(value):
                _restore(plist, snapshot)
                raise _nonfinite(step, value, "loss", adapter, guide_spec, config, losses, guide, data,
                                 seed, device, start_time, checkpoint_dir, state, callbacks)
            if differentiable:
                loss.backward()
            gnorm = torch.stack(torch._foreach_norm([p.grad for p in plist if p.grad is not None])).sum()
            if not bool(torch.isfinite(gnorm)):
                _restore(plist, snapshot)
                raise _nonfinite(step, value, "gradient", adapter, guide_spec, config, losses, guide,
                                 data, seed, device, start_time, checkpoint_dir, state, callbacks)
            consistent = False
            torch._foreach_copy_(snapshot, [p.detach() for p in plist])
            optimizer.step()
            if step_lr:
                scheduler.step()
            losses.append(value)
            consistent = True
            if show_loss:
                bar.update(1)
                if bar.n % 50 == 0:
                    bar.set_postfix(loss=f"{value:.4g}")
            if callbacks or guide_on_step is not None:
                info = {"engine": "svi", "step": step + 1, "num_steps": config.num_steps,
                        "loss": value, "lr": scheduler.get_last_lr()[0]}
                if guide_on_step is not None:  # guides that learn from the trajectory (SWAG)
                    guide_on_step(info)
                callbacks.step(info)
            if checkpoint_dir is not None and (step + 1) % config.checkpoint_every == 0:
                callbacks.checkpoint(save_checkpoint(checkpoint_dir, state(step + 1)))
    except (KeyboardInterrupt, SystemExit):
        # Nothing is lost: keep every completed step.
        if checkpoint_dir is not None and consistent:
            save_checkpoint(checkpoint_dir, state(len(losses)))
        raise
    finally:
        quiet.close()
        bar.close()
    if checkpoint_dir is not None:
        callbacks.checkpoint(save_checkpoint(checkpoint_dir, state(config.num_steps)))
    entry = guide_spec.entry
    if entry is not None and entry.post_fit is not None:
        guide = entry.post_fit(guide, adapter.fn, data)
    return FitResult._from_svi(
        adapter=adapter, data=data, config=config, guide=guide, guide_spec=guide_spec,
        losses=losses, seed=seed, device=device, fit_time=time.perf_counter() - start_time,
    )


def _looks_nonfinite(exc: Exception) -> bool:
    return bool(re.search(r"invalid values|\bnan\b|\binf\b", str(exc), flags=re.IGNORECASE))


def _restore(plist: list[torch.Tensor], snapshot: list[torch.Tensor]) -> None:
    with torch.no_grad():
        torch._foreach_copy_([p.data for p in plist], snapshot)


def _nonfinite(step, value, what, adapter, guide_spec, config, losses, guide, data, seed, device,
               start_time, checkpoint_dir, state, callbacks) -> NonFiniteLossError:
    from .result import FitResult

    if checkpoint_dir is not None:
        save_checkpoint(checkpoint_dir, state(len(losses)))
    partial = None
    if losses:
        partial = FitResult._from_svi(
            adapter=adapter, data=data, config=config, guide=guide, guide_spec=guide_spec,
            losses=list(losses), seed=seed, device=device, fit_time=time.perf_counter() - start_time,
        )
    return NonFiniteLossError(
        f"SVI {what} became non-finite ({value}) at step {step + 1}; stopped and restored the "
        f"parameters of step {len(losses)} (last finite loss "
        f"{losses[-1] if losses else 'n/a'}). The partial result is on this exception's "
        f"`.result`. Try a smaller lr (now {config.lr}), optimizer='clipped_adam', a smaller "
        f"guide init_scale, or check the model for invalid parameter values.",
        result=partial,
    )
