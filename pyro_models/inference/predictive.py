"""Evaluate a model under many posterior draws: predictive draws and pointwise log-likelihood.

Draws are processed in chunks (bounded memory) with one vectorised model run per chunk: the
draws enter as an extra plate left of every model plate, the same mechanism Pyro uses for
vectorised ELBO particles. Each site's draws are reshaped with its own event dims, so vector
sites outside plates (regression weights) broadcast correctly. A model that cannot be
vectorised (its shapes do not broadcast) falls back to a loop over draws with a warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

__all__ = ["predictive_draws", "pointwise_log_likelihood", "guide_draws", "DEFAULT_CHUNK"]

DEFAULT_CHUNK = 1000
_DRAW_PLATE = "_pyro_models_draws"


class _Proto:
    """Shapes from one ordinary run: per-site value shape, event dims, and plate nesting."""

    def __init__(self, trace: Any) -> None:
        self.shapes: dict[str, torch.Size] = {}
        self.event_dims: dict[str, int] = {}
        nesting = 0
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            self.shapes[name] = site["value"].shape
            self.event_dims[name] = site["fn"].event_dim
            for f in site["cond_indep_stack"]:
                if f.vectorized and f.dim is not None:
                    nesting = max(nesting, -f.dim)
        self.max_plate_nesting = nesting

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
    chunk: int = DEFAULT_CHUNK,
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

    Returns
    -------
    dict of str to Tensor (S, *site_shape)
    """
    if not return_sites:
        return {}
    parts = []
    vectorized = True
    with torch.no_grad():
        proto, _ = _prototype(model, {k: v[0] for k, v in samples.items()}, data)
        for part in _chunks(samples, chunk):
            n = _num(part)
            if vectorized:
                try:
                    tr = _vectorized_trace(model, proto, part, data)
                    parts.append({k: proto.per_draw(k, tr.nodes[k]["value"], n) for k in return_sites})
                    continue
                except Exception as exc:  # shapes that do not broadcast under the draw plate
                    vectorized = False
                    _fallback_warning("the model", exc)
            rows = [{k: t.nodes[k]["value"] for k in return_sites} for t in _looped_traces(model, part, data)]
            parts.append({k: torch.stack([r[k] for r in rows]) for k in return_sites})
    return _cat(parts)


def pointwise_log_likelihood(
    model: Callable[..., Any],
    samples: Mapping[str, torch.Tensor],
    data: Mapping[str, Any],
    observed_sites: tuple[str, ...] | list[str],
    *,
    chunk: int = DEFAULT_CHUNK,
) -> dict[str, torch.Tensor]:
    """``log p(y_i | draw_s)`` for every observed site, shape (S, *obs_batch_shape)."""
    if not observed_sites:
        return {}
    parts: list[dict[str, torch.Tensor]] = []
    vectorized = True
    with torch.no_grad():
        proto, proto_tr = _prototype(model, {k: v[0] for k, v in samples.items()}, data)
        batch = {k: proto_tr.nodes[k]["fn"].batch_shape for k in observed_sites}
        for part in _chunks(samples, chunk):
            n = _num(part)
            if vectorized:
                try:
                    tr = _vectorized_trace(model, proto, part, data)
                    parts.append({
                        k: proto.per_draw(k, tr.nodes[k]["fn"].log_prob(tr.nodes[k]["value"]), n, batch[k])
                        for k in observed_sites
                    })
                    continue
                except Exception as exc:
                    vectorized = False
                    _fallback_warning("the log-likelihood", exc)
            rows = [{k: t.nodes[k]["fn"].log_prob(t.nodes[k]["value"]) for k in observed_sites}
                    for t in _looped_traces(model, part, data)]
            parts.append({k: torch.stack([r[k] for r in rows]) for k in observed_sites})
    return _cat(parts)


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

    Latent values come from the guide; deterministic sites from the model run on them.
    """
    if hasattr(guide, "posterior_draws"):
        # Guides that draw their own posterior (ensemble members, SWAG's Gaussian).
        with torch.no_grad():
            own = guide.posterior_draws(num_samples)
        latent = [k for k in return_sites if k in own]
        derived = [k for k in return_sites if k not in own]
        out = {k: own[k] for k in latent}
        if derived:
            out.update(predictive_draws(model, out, data, derived, chunk=chunk))
        return {k: out[k] for k in return_sites}
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
        out.update(predictive_draws(model, {k: out[k] for k in latent}, data, derived, chunk=chunk))
    return {k: out[k] for k in return_sites}
