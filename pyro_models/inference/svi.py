"""The SVI engine: a plain PyTorch loop over Pyro's ELBO as an ``nn.Module`` loss.

Following Pyro's ``examples/svi_torch.py``: one batch goes through the loss before the
optimizer exists (guide parameters are created lazily), parameters are module-local (no
global param store), and the optimizer/scheduler are plain ``torch.optim`` objects, so
checkpoints are ordinary state dicts.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoGuide
from pyro.infer import Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.optim.clipped_adam import ClippedAdam
from pyro.poutine.messenger import Messenger

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


class _Minibatcher:
    """Deterministic epochs of shuffled indices: step -> batch, reproducible after a resume."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device) -> None:
        self.n, self.b, self.seed, self.device = n, batch_size, seed, device
        self.per_epoch = math.ceil(n / batch_size)
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> torch.Tensor:
        epoch, j = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed + 7919 * epoch)
            self._perm = torch.randperm(self.n, generator=g).to(self.device)
            self._epoch = epoch
        return self._perm[j * self.b:(j + 1) * self.b]


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
        # e.g. a deep ensemble trains its members as the vectorised particles of one ELBO.
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
    elbo = _ELBOS[config.elbo](num_particles=config.num_particles,
                               vectorize_particles=config.vectorize_particles,
                               max_plate_nesting=adapter.sites.max_plate_nesting)
    loss_module = elbo(model_fn, guide_fn)
    # Wrapped (minibatch-scaled) callables hide their modules; register them so parameter
    # names are stable across runs (checkpoints are matched by name).
    for attr, obj in (("model_module", adapter.fn), ("guide_module", guide)):
        if isinstance(obj, torch.nn.Module):
            loss_module.add_module(attr, obj)
    batcher = _Minibatcher(mb[1], config.batch_size, seed, device) if mb else None

    def batch_at(step: int) -> dict[str, Any]:
        if batcher is None:
            return data
        idx = batcher.indices(step)
        scaler.scale = mb[1] / idx.numel()
        return {k: (v.index_select(0, idx) if k in keys else v) for k, v in data.items()}

    # TraceGraph_ELBO only offers loss_and_grads (it builds a surrogate loss and calls backward).
    differentiable = config.elbo != "tracegraph"
    params, first_loss = _collect_params(loss_module, batch_at(0), differentiable)
    if not params:
        raise ValueError(f"guide {guide_spec.name or type(guide).__name__} has no trainable parameters")
    names, plist = list(params), list(params.values())
    if config.optimizer == "clipped_adam":
        optimizer = ClippedAdam(plist, lr=config.lr, clip_norm=config.clip_norm)
    elif config.optimizer == "sgd":
        optimizer = torch.optim.SGD(plist, lr=config.lr, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(plist, lr=config.lr)
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

    guide_on_step = getattr(guide, "on_step", None)
    bar = progress_bar(progress, config.num_steps, "SVI")
    bar.update(step0)
    consistent = True
    step = step0
    try:
        for step in range(step0, config.num_steps):
            batch = batch_at(step)
            optimizer.zero_grad(set_to_none=True)
            try:
                if not differentiable:
                    loss = torch.as_tensor(elbo.loss_and_grads(model_fn, guide_fn, **batch))
                elif step == 0 and first_loss is not None:
                    loss = first_loss
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
            scheduler.step()
            losses.append(value)
            consistent = True
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
