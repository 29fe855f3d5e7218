"""Evaluate a model under many posterior draws: predictive draws and pointwise log-likelihood.

Draws are processed in chunks (bounded memory) with one vectorised model run per chunk: the
draws enter as an extra plate left of every model plate, the same mechanism Pyro uses for
vectorised ELBO particles. Each site's draws are reshaped with its own event dims, so vector
sites outside plates (regression weights) broadcast correctly. A model that cannot be
vectorised (its shapes do not broadcast) falls back to a loop over draws with a warning.

How many draws go into one chunk: by default (``chunk=None``) as many as keep the chunk's
site values (every sample site of the model, per draw, as one ordinary run shows them) under
:data:`CHUNK_ELEMENTS` numbers, between 1 and :data:`DEFAULT_CHUNK` draws. The working memory
of a model run (a network's hidden activations, say) grows with the same count, so this bounds
it too; it also keeps the working set small enough for the CPU caches, which makes a network
with a few thousand inputs several times faster than one run over 500 draws. A model whose
working memory does not grow with the chunk declares a larger budget
(``BayesianModel.prediction_chunk_elements``; the Bayesian nets do when they loop over draws
on CPU). Pass ``chunk`` to choose it yourself. Results do not depend on the chunking except
for the random draws of sampled sites, which keep their distribution.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.subsample_messenger import SubsampleMessenger
from pyro.poutine.util import site_is_subsample

__all__ = ["predictive_draws", "pointwise_log_likelihood", "guide_draws", "auto_chunk", "DEFAULT_CHUNK", "FullPlates",
           "CHUNK_ELEMENTS"]

#: Most draws per vectorised model run (and the chunk of :func:`guide_draws`' latent draws).
DEFAULT_CHUNK = 1000
#: Default budget of site values per chunk: 2**18 numbers (1 MiB in float32).
CHUNK_ELEMENTS = 2**18
_DRAW_PLATE = "_pyro_models_draws"


_full_plates_depth = 0
_pyro_subsample = SubsampleMessenger._subsample


def _subsample_in_full(name: str, size: int | None = None, subsample_size: int | None = None,
                       subsample: torch.Tensor | None = None, use_cuda: bool | None = None,
                       device: str | None = None) -> Any:
    if _full_plates_depth > 0 and subsample is None:
        subsample_size = None  # Pyro then takes every index, and the plate's scale is 1
    return _pyro_subsample(name, size, subsample_size, subsample, use_cuda, device)


class FullPlates(poutine.messenger.Messenger):
    """Run every ``pyro.plate(..., subsample_size=m)`` over its full size.

    Training may subsample (a minibatch per step, the likelihood scaled up); predictions,
    pointwise log-likelihoods and observed values must cover every data point, and the same
    ones on every call, not a fresh random subset each time. A plate given explicit
    ``subsample`` indices keeps them.

    Pyro checks the plate's ``subsample_size`` argument against the indices it draws, so no
    message handler can widen a plate; while a ``FullPlates`` is active, the plate's
    subsampling helper is swapped for one that drops ``subsample_size`` (restored on exit).

    Examples
    --------
    >>> import pyro
    >>> def model():
    ...     with pyro.plate("data", 100, subsample_size=10) as idx:
    ...         return idx
    >>> len(model()), len(FullPlates()(model)())
    (10, 100)
    """

    def __enter__(self) -> FullPlates:
        global _full_plates_depth
        if _full_plates_depth == 0:
            SubsampleMessenger._subsample = staticmethod(_subsample_in_full)
        _full_plates_depth += 1
        return super().__enter__()

    def __exit__(self, *exc: Any) -> Any:
        global _full_plates_depth
        try:
            return super().__exit__(*exc)
        finally:
            _full_plates_depth -= 1
            if _full_plates_depth == 0:
                SubsampleMessenger._subsample = staticmethod(_pyro_subsample)


class _Proto:
    """Shapes from one ordinary run: per-site value shape, event dims, and plate nesting."""

    def __init__(self, trace: Any) -> None:
        self.shapes: dict[str, torch.Size] = {}
        self.event_dims: dict[str, int] = {}
        nesting = 0
        elements = 0
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            self.shapes[name] = site["value"].shape
            self.event_dims[name] = site["fn"].event_dim
            elements += site["value"].numel()
            for f in site["cond_indep_stack"]:
                if f.vectorized and f.dim is not None:
                    nesting = max(nesting, -f.dim)
        self.max_plate_nesting = nesting
        #: Numbers in one draw's site values: what a chunk of draws multiplies.
        self.elements_per_draw = max(1, elements)

    def chunk(self, chunk: int | None, budget: int | None = None) -> int:
        return auto_chunk(self.elements_per_draw, budget) if chunk is None else chunk

    def batch_view(self, name: str, draws: torch.Tensor) -> torch.Tensor:
        """(S, *shape) -> (S, 1, ..., 1, *shape) with the draw dim left of all plates."""
        shape = self.shapes[name]
        batch_ndim = len(shape) - self.event_dims[name]
        pad = self.max_plate_nesting - batch_ndim
        return draws.reshape((draws.shape[0],) + (1,) * max(pad, 0) + tuple(shape))

    def per_draw(self, name: str, value: torch.Tensor, n: int, shape: torch.Size | None = None) -> torch.Tensor:
        """A vectorised value back to (S, *shape)."""
        shape = tuple(self.shapes[name] if shape is None else shape)
        if value.numel() == n * math.prod(shape):
            return value.reshape((n,) + shape)
        if value.numel() == math.prod(shape):  # does not depend on the draws
            return value.reshape(shape).expand((n,) + shape)
        raise ValueError(f"site {name!r}: value of shape {tuple(value.shape)} does not match {n} draws x {shape}")


def auto_chunk(elements_per_draw: int, budget: int | None = None) -> int:
    """Draws per chunk so that a chunk holds about ``budget`` site values.

    Parameters
    ----------
    elements_per_draw : int
        Numbers in one draw's site values (all sample sites of one model run).
    budget : int, optional
        Site values per chunk (default :data:`CHUNK_ELEMENTS`).

    Returns
    -------
    int
        Between 1 and :data:`DEFAULT_CHUNK`.

    Examples
    --------
    >>> auto_chunk(3 * 2000)   # e.g. y, loc and scale at 2000 points
    43
    >>> auto_chunk(10), auto_chunk(10**9)
    (1000, 1)
    """
    budget = CHUNK_ELEMENTS if budget is None else budget
    return max(1, min(DEFAULT_CHUNK, budget // max(1, int(elements_per_draw))))


def _check_chunk(chunk: int | None, chunk_elements: int | None = None) -> None:
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be a positive int (draws per vectorised run) or None (automatic), got {chunk!r}")
    if chunk_elements is not None and (isinstance(chunk_elements, bool) or not isinstance(chunk_elements, int)
                                       or chunk_elements < 1):
        raise ValueError(f"chunk_elements must be a positive int (site values per chunk) or None, got {chunk_elements!r}")


class _Collector:
    """Chunk results copied into preallocated (S, ...) outputs: no concatenation at the end.

    When one chunk holds every draw its tensors are kept as they are (made contiguous), not
    copied, unless they share memory with the caller's ``inputs`` (a latent site returned as
    is): the outputs never alias the posterior draws they came from.
    """

    def __init__(self, total: int, inputs: Mapping[str, torch.Tensor]) -> None:
        self.total, self.done = total, 0
        self.out: dict[str, torch.Tensor] = {}
        self._input_storage = {v.untyped_storage().data_ptr() for v in inputs.values()}

    def add(self, part: Mapping[str, torch.Tensor]) -> None:
        n = _num(part)
        whole = self.done == 0 and n == self.total
        for k, v in part.items():
            if whole and v.untyped_storage().data_ptr() not in self._input_storage:
                self.out[k] = v.contiguous()
                continue
            if k not in self.out:
                self.out[k] = v.new_empty((self.total,) + tuple(v.shape[1:]))
            self.out[k][self.done:self.done + n] = v
        self.done += n


def _num(samples: Mapping[str, torch.Tensor]) -> int:
    return next(iter(samples.values())).shape[0]


def _chunks(samples: Mapping[str, torch.Tensor], chunk: int):
    n = _num(samples)
    for start in range(0, n, chunk):
        yield {k: v[start:start + chunk] for k, v in samples.items()}


def _cat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _prototype(model: Callable[..., Any], first: Mapping[str, torch.Tensor], data: Mapping[str, Any]) -> tuple[_Proto, Any]:
    with poutine.block():
        tr = poutine.trace(poutine.condition(model, dict(first))).get_trace(**data)
    return _Proto(tr), tr


def _vectorized_trace(model, proto: _Proto, samples, data):
    n = _num(samples)
    cond = {k: proto.batch_view(k, v) for k, v in samples.items()}
    with poutine.block(), pyro.plate(_DRAW_PLATE, n, dim=-(proto.max_plate_nesting + 1)):
        return poutine.trace(poutine.condition(model, cond)).get_trace(**data)


def _looped_traces(model, samples, data):
    for i in range(_num(samples)):
        with poutine.block():
            yield poutine.trace(poutine.condition(model, {k: v[i] for k, v in samples.items()})).get_trace(**data)


def _fallback_warning(what: str, exc: Exception) -> None:
    warnings.warn(
        f"{what} could not be evaluated vectorised over posterior draws ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0]}); falling back to a slower loop over draws. Declare batch "
        f"dimensions with pyro.plate and write the model so extra leading dims broadcast.",
        RuntimeWarning,
        stacklevel=3,
    )


def predictive_draws(
    model: Callable[..., Any],
    samples: Mapping[str, torch.Tensor],
    data: Mapping[str, Any],
    return_sites: tuple[str, ...] | list[str],
    *,
    chunk: int | None = None,
    chunk_elements: int | None = None,
) -> dict[str, torch.Tensor]:
    """Values of ``return_sites`` with the latent sites fixed to each draw in ``samples``.

    Parameters
    ----------
    model : callable
    samples : dict of str to Tensor (S, *site_shape)
        Posterior draws of latent sites, a flat draw dimension first.
    data : dict
        Model keyword arguments; observed keys set to ``None`` give predictive draws.
    return_sites : sequence of str
    chunk : int, optional
        Draws per vectorised model run; ``None`` chooses it from the size of one draw's
        site values (see :func:`auto_chunk`), which bounds memory.
    chunk_elements : int, optional
        The budget of site values per chunk that ``chunk=None`` aims at (default
        :data:`CHUNK_ELEMENTS`; see ``BayesianModel.prediction_chunk_elements``).

    Returns
    -------
    dict of str to Tensor (S, *site_shape)

    Raises
    ------
    ValueError
        ``chunk`` or ``chunk_elements`` is not a positive int.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch
    >>> def model(x, y=None):
    ...     w = pyro.sample("w", dist.Normal(0.0, 1.0))
    ...     with pyro.plate("data", x.shape[0]):
    ...         return pyro.sample("y", dist.Normal(w * x, 0.1), obs=y)
    >>> out = predictive_draws(model, {"w": torch.randn(300)}, {"x": torch.arange(4.0)}, ["y"], chunk=64)
    >>> tuple(out["y"].shape)
    (300, 4)
    """
    _check_chunk(chunk, chunk_elements)
    if not return_sites:
        return {}
    model = FullPlates()(model)
    collect = _Collector(_num(samples), samples)
    vectorized = True
    with torch.no_grad():
        proto, _ = _prototype(model, {k: v[0] for k, v in samples.items()}, data)
        for part in _chunks(samples, proto.chunk(chunk, chunk_elements)):
            n = _num(part)
            if vectorized:
                try:
                    tr = _vectorized_trace(model, proto, part, data)
                    collect.add({k: proto.per_draw(k, tr.nodes[k]["value"], n) for k in return_sites})
                    continue
                except Exception as exc:  # shapes that do not broadcast under the draw plate
                    vectorized = False
                    _fallback_warning("the model", exc)
            rows = [{k: t.nodes[k]["value"] for k in return_sites} for t in _looped_traces(model, part, data)]
            collect.add({k: torch.stack([r[k] for r in rows]) for k in return_sites})
    return collect.out


def _site_log_prob(site: Mapping[str, Any]) -> torch.Tensor:
    """An observed site's pointwise log density, with its ``poutine.mask`` applied.

    Masked-out observations get 0, as in Pyro's own log joint: they add nothing to the
    likelihood, so they add nothing to sums over observations (LOO, WAIC) either. (Pyro's
    ``obs_mask`` wraps the distribution in a mask of its own, which ``log_prob`` applies.)
    """
    lp = site["fn"].log_prob(site["value"])
    mask = site.get("mask")
    if mask is not None and not (isinstance(mask, bool) and mask):
        lp = torch.where(torch.as_tensor(mask, device=lp.device), lp, lp.new_zeros(()))
    return lp


def pointwise_log_likelihood(
    model: Callable[..., Any],
    samples: Mapping[str, torch.Tensor],
    data: Mapping[str, Any],
    observed_sites: tuple[str, ...] | list[str],
    *,
    chunk: int | None = None,
    chunk_elements: int | None = None,
) -> dict[str, torch.Tensor]:
    """``log p(y_i | draw_s)`` for every observed site, shape (S, *obs_batch_shape).

    ``chunk`` and ``chunk_elements`` as in :func:`predictive_draws`; the values do not depend
    on them.
    """
    _check_chunk(chunk, chunk_elements)
    if not observed_sites:
        return {}
    model = FullPlates()(model)
    collect = _Collector(_num(samples), samples)
    vectorized = True
    with torch.no_grad():
        proto, proto_tr = _prototype(model, {k: v[0] for k, v in samples.items()}, data)
        batch = {k: proto_tr.nodes[k]["fn"].batch_shape for k in observed_sites}
        for part in _chunks(samples, proto.chunk(chunk, chunk_elements)):
            n = _num(part)
            if vectorized:
                try:
                    tr = _vectorized_trace(model, proto, part, data)
                    collect.add({k: proto.per_draw(k, _site_log_prob(tr.nodes[k]), n, batch[k])
                                 for k in observed_sites})
                    continue
                except Exception as exc:
                    vectorized = False
                    _fallback_warning("the log-likelihood", exc)
            rows = [{k: _site_log_prob(t.nodes[k]) for k in observed_sites}
                    for t in _looped_traces(model, part, data)]
            collect.add({k: torch.stack([r[k] for r in rows]) for k in observed_sites})
    return collect.out


def guide_draws(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    data: Mapping[str, Any],
    num_samples: int,
    return_sites: tuple[str, ...] | list[str],
    *,
    chunk: int = DEFAULT_CHUNK,
) -> dict[str, torch.Tensor]:
    """Draws from a trained guide of latent (and deterministic) sites, (S, *site_shape).

    Latent values come from the guide, ``chunk`` draws per vectorised guide run (a fixed
    count, so a seed fixes the draws); deterministic sites from the model run on them, in
    automatically sized chunks (:func:`predictive_draws`).
    """
    _check_chunk(chunk)
    if hasattr(guide, "posterior_draws"):
        # Guides that draw their own posterior (ensemble members, SWAG's Gaussian).
        with torch.no_grad():
            own = guide.posterior_draws(num_samples)
        latent = [k for k in return_sites if k in own]
        derived = [k for k in return_sites if k not in own]
        out = {k: own[k] for k in latent}
        if derived:
            out.update(predictive_draws(model, out, data, derived))
        return {k: out[k] for k in return_sites}
    model, guide = FullPlates()(model), FullPlates()(guide)
    parts = []
    vectorized = True
    with torch.no_grad():
        with poutine.block():
            g0 = poutine.trace(guide).get_trace(**data)
        latent = [k for k in return_sites if k in g0.nodes and g0.nodes[k]["type"] == "sample"]
        proto, _ = _prototype(model, {k: g0.nodes[k]["value"] for k in latent}, data)
        derived = [k for k in return_sites if k not in latent]
        done = 0
        while done < num_samples:
            n = min(chunk, num_samples - done)
            if vectorized:
                try:
                    with poutine.block(), pyro.plate(_DRAW_PLATE, n, dim=-(proto.max_plate_nesting + 1)):
                        gtr = poutine.trace(guide).get_trace(**data)
                    out = {k: proto.per_draw(k, gtr.nodes[k]["value"], n) for k in latent}
                    parts.append(out)
                    done += n
                    continue
                except Exception as exc:
                    vectorized = False
                    _fallback_warning("the guide", exc)
            rows = []
            for _ in range(n):
                with poutine.block():
                    gtr = poutine.trace(guide).get_trace(**data)
                rows.append({k: gtr.nodes[k]["value"] for k in latent})
            parts.append({k: torch.stack([r[k] for r in rows]) for k in latent})
            done += n
        out = _cat(parts)
    if derived:
        out.update(predictive_draws(model, {k: out[k] for k in latent}, data, derived))
    return {k: out[k] for k in return_sites}
