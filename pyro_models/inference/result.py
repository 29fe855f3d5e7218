"""The one result type every engine returns."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import autoguide
from pyro.poutine.uncondition_messenger import UnconditionMessenger
from safetensors.torch import load_file

from .. import __version__
from ..models.base import BayesianModel, is_jsonable
from ..naming import give_unique_pyro_name
from .adapter import ModelAdapter, resolve_model
from .arviz_bridge import num_divergences, summarize, to_arviz
from .checkpoint import atomic_write_bytes
from .config import MCMCConfig, SVIConfig, config_from_dict, config_to_dict
from .predictive import FullPlates, guide_draws, pointwise_log_likelihood, predictive_draws
from .svi import GuideSpec

__all__ = ["FitResult", "Predictions"]

_FORMAT = 1


class Predictions(dict):
    """Posterior predictive draws per site (a dict), plus the model's summaries.

    ``pred["y"]`` is a ``(S, ...)`` tensor of draws, as for any dict of sites. Models that
    define :meth:`~pyro_models.models.BayesianModel.summarize_predictions` add summaries,
    read as attributes or from :attr:`summary`: a regression net gives ``pred.mean``,
    ``pred.epistemic_var``, ``pred.aleatoric_var``, ``pred.total_var``; a classifier gives
    ``pred.probs``, ``pred.entropy``, ``pred.expected_entropy``, ``pred.mutual_info``.
    """

    def __init__(self, draws: Mapping[str, torch.Tensor], summary: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__(draws)
        self.summary: dict[str, torch.Tensor] = dict(summary or {})

    def __getattr__(self, name: str) -> torch.Tensor:
        summary = self.__dict__.get("summary", {})
        if name in summary:
            return summary[name]
        raise AttributeError(
            f"no prediction summary {name!r}; this model gives {sorted(summary) or 'none'} "
            f"(draws per site are pred[site] for site in {sorted(self)})"
        )


class FitResult:
    """A fitted posterior: draws, predictions, diagnostics, ArviZ export, save/load.

    Built by :func:`pyro_models.fit`; not meant to be constructed by hand. Read-only.

    Attributes
    ----------
    engine : {"svi", "mcmc"}
    config : SVIConfig or MCMCConfig
    model : callable
        The Pyro model that was fitted.
    guide : callable or None
        The trained guide (SVI) or ``None`` (MCMC).
    losses : tuple of float
        SVI loss (negative ELBO) per step; empty for MCMC.
    fit_time : float
        Wall-clock seconds spent in the engine.
    data : dict of str to Tensor
        The validated training data (on the fit's device).
    psis_khat : float or None
        PSIS k-hat of the trained guide (SVI), see :attr:`psis_khat`.

    Examples
    --------
    >>> import pyro_models
    >>> res = pyro_models.fit("normal_normal", {"y": [0.5, 1.5, 1.0]},
    ...                       pyro_models.SVIConfig(num_steps=300, lr=0.05), seed=0, progress=False)
    >>> draws = res.samples(200)
    >>> tuple(draws["mu"].shape)
    (200,)
    """

    def __init__(self, *, _token: object, engine: str, adapter: ModelAdapter, data: dict[str, Any],
                 config: SVIConfig | MCMCConfig, seed: int, device: torch.device, fit_time: float,
                 guide: Any = None, guide_spec: GuideSpec | None = None, losses: list[float] | None = None,
                 draws: dict[str, torch.Tensor] | None = None,
                 sample_stats: dict[str, torch.Tensor] | None = None) -> None:
        if _token is not _PRIVATE:
            raise TypeError("FitResult is created by pyro_models.fit() or FitResult.load()")
        self._engine = engine
        self._adapter = adapter
        self._data = data
        self._config = config
        self._seed = seed
        self._device = device
        self._fit_time = float(fit_time)
        self._guide = guide
        self._guide_spec = guide_spec
        self._losses = tuple(losses or ())
        self._draws = draws  # MCMC: (chain, draw, *shape), latent + deterministic
        self._stats = sample_stats
        self._svi_cache: dict[str, torch.Tensor] | None = None
        # Set once by fit() after SVI training (or by load); None where it does not apply.
        self._psis_khat: float | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def _from_mcmc(cls, *, adapter, data, config, draws, sample_stats, seed, device, fit_time) -> FitResult:
        res = cls(_token=_PRIVATE, engine="mcmc", adapter=adapter, data=data, config=config, seed=seed,
                  device=device, fit_time=fit_time, draws=draws, sample_stats=sample_stats)
        det = adapter.sites.deterministic
        if det:
            flat = res._flat(draws, latent_only=True)
            extra = predictive_draws(adapter.fn, flat, data, det)
            c, d = next(iter(draws.values())).shape[:2]
            for k, v in extra.items():
                draws[k] = v.cpu().reshape((c, d) + v.shape[1:])
        return res

    @classmethod
    def _from_svi(cls, *, adapter, data, config, guide, guide_spec, losses, seed, device, fit_time) -> FitResult:
        return cls(_token=_PRIVATE, engine="svi", adapter=adapter, data=data, config=config, seed=seed,
                   device=device, fit_time=fit_time, guide=guide, guide_spec=guide_spec, losses=losses)

    # ------------------------------------------------------------------ read-only views
    @property
    def engine(self) -> str:
        return self._engine

    @property
    def config(self) -> SVIConfig | MCMCConfig:
        return self._config

    @property
    def model(self) -> Any:
        return self._adapter.fn

    @property
    def guide(self) -> Any:
        return self._guide

    @property
    def losses(self) -> tuple[float, ...]:
        return self._losses

    @property
    def fit_time(self) -> float:
        return self._fit_time

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def data(self) -> dict[str, Any]:
        return dict(self._data)

    @property
    def latent_sites(self) -> tuple[str, ...]:
        return self._adapter.sites.latent

    @property
    def deterministic_sites(self) -> tuple[str, ...]:
        return self._adapter.sites.deterministic

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return tuple(self._adapter.sites.observed)

    @property
    def psis_khat(self) -> float | None:
        """Pareto k-hat of the guide's importance weights (Yao, Vehtari, Simpson & Gelman 2018).

        After SVI training, ``SVIConfig.psis_draws`` draws ``z ~ q`` give the weights
        ``log p(x, z) - log q(z)`` on the full training data; k-hat is the shape of the
        generalized Pareto distribution fitted to their tail. Below 0.5 the guide covers the
        posterior well; 0.5-0.7 is usable; above 0.7 the guide misses posterior mass and
        ``fit`` warned. ``None`` for MCMC, for guides without a density (``delta``,
        ``deep_ensemble``, ``swag``, ``mc_dropout``) and with ``psis_draws=0``. See
        :func:`pyro_models.evaluation.psis_khat` to recompute it with more draws.
        """
        return self._psis_khat

    @property
    def num_divergences(self) -> int:
        """Divergent transitions after warmup (0 for SVI)."""
        if self._stats is None:
            return 0
        return int(self._stats["diverging"].sum())

    @property
    def sample_stats(self) -> dict[str, torch.Tensor]:
        """Per-draw sampler statistics, (chain, draw) each (empty for SVI)."""
        return dict(self._stats or {})

    def __repr__(self) -> str:
        if self._engine == "mcmc":
            c, d = next(iter(self._draws.values())).shape[:2]
            what = f"{self._config.kernel.upper()} {c} chain(s) x {d} draws, {self.num_divergences} divergences"
        else:
            g = self._guide_spec.name if self._guide_spec and self._guide_spec.name else type(self._guide).__name__
            last = f"{self._losses[-1]:.4g}" if self._losses else "n/a"
            what = f"SVI guide={g}, {len(self._losses)} steps, final loss {last}"
        return f"FitResult(model={self._adapter.name!r}, {what}, {self._fit_time:.1f}s)"

    # ------------------------------------------------------------------ draws
    def _flat(self, draws: Mapping[str, torch.Tensor], latent_only: bool = False) -> dict[str, torch.Tensor]:
        keep = self._adapter.sites.latent if latent_only else tuple(draws)
        return {k: draws[k].reshape((-1,) + draws[k].shape[2:]).to(self._device) for k in keep if k in draws}

    def _svi_draws(self, num_samples: int | None) -> dict[str, torch.Tensor]:
        default = self._config.num_posterior_samples
        n = default if num_samples is None else num_samples
        if n == default and self._svi_cache is not None:
            return self._svi_cache
        sites = self._adapter.sites.latent + self._adapter.sites.deterministic
        # A fixed, local seed: the same result gives the same draws, and global RNG is untouched.
        with torch.random.fork_rng(devices=[self._device] if self._device.type == "cuda" else []):
            torch.manual_seed(self._seed + 104729 * n)
            out = guide_draws(self._adapter.fn, self._guide, self._data, n, sites)
        out = {k: v.detach().cpu() for k, v in out.items()}
        if n == default:
            self._svi_cache = out
        return out

    def samples(self, num_samples: int | None = None) -> dict[str, torch.Tensor]:
        """Posterior draws of every latent and deterministic site (on CPU).

        Parameters
        ----------
        num_samples : int, optional
            SVI: number of guide draws (default ``config.num_posterior_samples``).
            MCMC: total draws to keep, spread evenly over each chain (default: all).

        Returns
        -------
        dict of str to Tensor
            SVI: ``(num_samples, *site_shape)``. MCMC keeps the chain dimension:
            ``(num_chains, draws_per_chain, *site_shape)``.
        """
        if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1):
            raise ValueError(f"num_samples must be a positive int or None, got {num_samples!r}")
        if self._engine == "svi":
            return dict(self._svi_draws(num_samples))
        draws = self._draws
        if num_samples is None:
            return dict(draws)
        c, d = next(iter(draws.values())).shape[:2]
        per_chain = max(1, min(d, num_samples // c))
        if num_samples < c:
            raise ValueError(f"num_samples={num_samples} is fewer than the {c} chains; ask for at least {c}")
        idx = torch.linspace(0, d - 1, per_chain).round().long()
        return {k: v[:, idx] for k, v in draws.items()}

    def _flat_draws(self, num_samples: int | None) -> dict[str, torch.Tensor]:
        draws = self.samples(num_samples)
        if self._engine == "svi":
            keep = self._adapter.sites.latent
            return {k: draws[k].to(self._device) for k in keep}
        return self._flat(draws, latent_only=True)

    # ------------------------------------------------------------------ prediction
    def _prediction_data(self, data: Mapping[str, Any] | None, require_observed: bool) -> dict[str, Any]:
        if data is None:
            return dict(self._data)
        clean = self._adapter.validate(data, require_observed=require_observed)
        return {k: (v.to(self._device) if isinstance(v, torch.Tensor) else v) for k, v in clean.items()}

    def predict(self, data: Mapping[str, Any] | None = None, num_samples: int | None = None, *,
                return_sites: list[str] | tuple[str, ...] | None = None, chunk: int | None = None) -> Predictions:
        """Posterior predictive draws at ``data`` (default: replicates of the training data).

        Observed values in ``data`` are not conditioned on: the model samples those sites (a
        plain Pyro model still sees the values passed, e.g. to size a plate). With ``data=None``
        the draws have the shape of the training observations (the ``y_rep`` of posterior
        predictive checks).

        Parameters
        ----------
        data : dict, optional
            Model inputs (e.g. ``{"x": x_new}``).
        num_samples : int, optional
            Posterior draws to use (see :meth:`samples`).
        return_sites : sequence of str, optional
            Sites to return (default: the observed sites).
        chunk : int, optional
            Posterior draws per vectorised model run. The default sizes chunks so that each
            holds about a megabyte of site values, which bounds memory (see
            :func:`pyro_models.inference.predictive.auto_chunk`); pass a number to trade memory
            for speed. Results do not depend on it except through the random draws.

        Returns
        -------
        Predictions
            A dict of ``(S, *site_shape)`` draws per site, S = number of posterior draws used,
            plus the model's summaries (e.g. ``.mean``, ``.epistemic_var``,
            ``.aleatoric_var`` for a regression net) when the model defines them.
        """
        model = self._adapter.fn
        if data is None and not self._conditions_on_training():
            # Replicate the training data: observed values stay in place (they fix shapes and,
            # e.g., multinomial totals) and the likelihood sites are sampled, not conditioned.
            clean = dict(self._data)
        else:
            new = self._data if data is None else self._prediction_data(data, require_observed=False)
            clean = self._adapter.predictive_data(new)
            if isinstance(model, BayesianModel):
                clean = model.prediction_inputs(self._data, clean)
            else:
                # A plain model may size its plates from an observed field (plate(len(y))):
                # observed values the caller passed stay in place for that, and the
                # likelihood sites are sampled all the same (see _uncondition below).
                clean.update({k: new[k] for k in data if k in new and clean[k] is None})
        sites = tuple(return_sites) if return_sites is not None else self.observed_sites
        summarize = isinstance(model, BayesianModel) and type(model).summarize_predictions is not BayesianModel.summarize_predictions
        extra = tuple(getattr(model, "prediction_sites", ()))
        needed = sites + tuple(s for s in extra + self.observed_sites if s not in sites)
        known = (set(self._adapter.sites.observed) | set(self.latent_sites) | set(self.deterministic_sites)
                 | set(extra))
        unknown = [s for s in sites if s not in known]
        if unknown:
            raise KeyError(f"unknown site(s) {unknown}; the model's sites are {sorted(known)}")
        flat = self._flat_draws(num_samples)
        out = predictive_draws(_uncondition(self._adapter.fn, self.observed_sites), flat, clean,
                               needed if summarize else sites, chunk=chunk,
                               chunk_elements=self._chunk_elements(clean))
        out = {k: v.detach().cpu() for k, v in out.items()}
        summary = model.summarize_predictions(out) if summarize else {}
        return Predictions({k: out[k] for k in sites}, summary)

    def _conditions_on_training(self) -> bool:
        """Whether the model's predictions condition on its training data (e.g. a GP)."""
        return bool(getattr(self._adapter.fn, "predicts_through_training_data", False))

    def log_likelihood(self, data: Mapping[str, Any] | None = None,
                       num_samples: int | None = None, *, chunk: int | None = None) -> dict[str, torch.Tensor]:
        """Pointwise log-likelihood ``log p(y_i | draw_s)`` per observed site, ``(S, *batch)``.

        ``chunk``: posterior draws per vectorised model run, as in :meth:`predict`.
        """
        clean = self._prediction_data(data, require_observed=True)
        if data is not None and self._conditions_on_training():
            # e.g. a GP: log p(y_new | y_train, draw), so held-out scores mean what they say.
            clean = self._adapter.fn.prediction_inputs(self._data, clean)
        flat = self._flat_draws(num_samples)
        out = pointwise_log_likelihood(self._adapter.fn, flat, clean, self.observed_sites, chunk=chunk,
                                       chunk_elements=self._chunk_elements(clean))
        return {k: v.detach().cpu() for k, v in out.items()}

    def _chunk_elements(self, data: Mapping[str, Any]) -> int | None:
        """The model's own budget of site values per chunk of draws, if it declares one."""
        model = self._adapter.fn
        return model.prediction_chunk_elements(data) if isinstance(model, BayesianModel) else None

    def _observed_values(self) -> dict[str, np.ndarray]:
        with torch.no_grad(), poutine.block():
            flat = {k: v[:1] for k, v in self._flat_draws(None).items()}
            fn = FullPlates()(self._adapter.fn)  # every observation, not a random subsample
            tr = poutine.trace(poutine.condition(fn, {k: v[0] for k, v in flat.items()})).get_trace(**self._data)
        return {k: tr.nodes[k]["value"].detach().cpu().numpy() for k in self.observed_sites}

    # ------------------------------------------------------------------ ArviZ
    def to_inference_data(self, *, predictive: bool = True, log_likelihood: bool = True) -> Any:
        """The posterior as the installed ArviZ's own object.

        ``arviz.InferenceData`` on ArviZ 0.x, ``xarray.DataTree`` on ArviZ 1.x, with the same
        groups: ``posterior``, ``sample_stats`` (MCMC), ``observed_data``, and (when the model
        has observed sites) ``posterior_predictive`` and ``log_likelihood``. SVI results hold
        guide draws as one chain.
        """
        draws = self.samples()
        if self._engine == "svi":
            draws = {k: v.unsqueeze(0) for k, v in draws.items()}
        c, d = next(iter(draws.values())).shape[:2]
        groups: dict[str, dict[str, np.ndarray]] = {
            "posterior": {k: v.numpy() for k, v in draws.items()},
        }
        if self._stats is not None:
            groups["sample_stats"] = {k: v.numpy() for k, v in self._stats.items()}
        if self.observed_sites:
            groups["observed_data"] = self._observed_values()
            if predictive:
                pp = self.predict()
                groups["posterior_predictive"] = {k: v.reshape((c, d) + v.shape[1:]).numpy() for k, v in pp.items()}
            if log_likelihood:
                ll = self.log_likelihood()
                groups["log_likelihood"] = {k: v.reshape((c, d) + v.shape[1:]).numpy() for k, v in ll.items()}
        attrs = {"inference_library": "pyro-models", "inference_library_version": __version__,
                 "engine": self._engine, "model": self._adapter.name}
        return to_arviz(groups, attrs=attrs)

    def summary(self, var_names: list[str] | None = None) -> Any:
        """Posterior summary table computed by ArviZ.

        Columns: mean, sd, q5, q50, q95, mcse_mean, mcse_sd, ess_bulk, ess_tail, r_hat. The
        number of divergent transitions is in ``table.attrs["divergences"]`` and printed by
        :meth:`print_summary`. SVI results hold independent guide draws as a single chain:
        their ESS is close to the number of draws and R-hat (which needs two chains) is NaN.
        """
        idata = self.to_inference_data(predictive=False, log_likelihood=False)
        if self._engine == "svi":
            # One chain of guide draws: ArviZ logs that R-hat needs two chains; we say so in
            # the docstring and leave R-hat as NaN rather than repeat the notice on every call.
            with _quiet_logger("arviz"):
                table = summarize(idata, var_names=var_names)
        else:
            table = summarize(idata, var_names=var_names)
        table.attrs["divergences"] = num_divergences(idata)
        table.attrs["engine"] = self._engine
        return table

    def print_summary(self, var_names: list[str] | None = None) -> None:
        """Print :meth:`summary` with the divergence count underneath."""
        table = self.summary(var_names)
        print(table.to_string())
        if self._engine == "mcmc":
            print(f"divergences: {table.attrs['divergences']}")

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the result to the folder ``path``: ``metadata.json`` and ``tensors.safetensors``.

        Nothing is pickled: tensors go through safetensors, the rest is JSON. Each file is
        written atomically.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        data_meta = {}
        for k, v in self._data.items():
            if isinstance(v, torch.Tensor):
                tensors[f"data/{k}"] = v.detach().cpu().contiguous()
            else:
                if not is_jsonable(v):
                    raise TypeError(f"cannot save data field {k!r} of type {type(v).__name__}")
                data_meta[k] = v
        if self._draws is not None:
            for k, v in self._draws.items():
                tensors[f"draws/{k}"] = v.contiguous()
            for k, v in self._stats.items():
                tensors[f"stats/{k}"] = v.contiguous()
        if isinstance(self._adapter.fn, torch.nn.Module):
            # Point-estimated network weights (a VAE decoder, a net's deterministic layers).
            for k, v in self._adapter.fn.state_dict().items():
                tensors[f"model/{k}"] = v.detach().cpu().clone().contiguous()  # no shared storage
        guide_meta = None
        if self._engine == "svi":
            guide_meta = self._guide_spec.describe() if self._guide_spec else {}
            guide_meta["final_class"] = type(self._guide).__name__
            if isinstance(self._guide, torch.nn.Module):
                for k, v in self._guide.state_dict().items():
                    tensors[f"guide/{k}"] = v.detach().cpu().clone().contiguous()  # safetensors refuses shared storage
            store = pyro.get_param_store()
            ps = [n for n in _guide_param_names(self._guide, self._adapter.fn, self._data) if n in store]
            for n in ps:
                tensors[f"param_store/{n}"] = store[n].detach().cpu().contiguous()
        meta = {
            "format": _FORMAT, "pyro_models_version": __version__, "engine": self._engine,
            "config": config_to_dict(self._config), "seed": self._seed, "fit_time": self._fit_time,
            "device": str(self._device), "losses": list(self._losses),
            "model": {"name": self._adapter.name, "registered_name": self._adapter.registered_name,
                      "hparams": self._adapter.hparams},
            "guide": guide_meta, "data_values": data_meta,
            # inf (weights with no usable tail) is kept as a string: JSON has no infinity.
            "psis_khat": (None if self._psis_khat is None
                          else self._psis_khat if math.isfinite(self._psis_khat) else str(self._psis_khat)),
        }
        blob = _safetensors_bytes(tensors)
        # The two files are each written atomically; the digest ties them together, so a save
        # interrupted between them (over an older save) is detected on load, not mixed up.
        meta["tensors_sha256"] = hashlib.sha256(blob).hexdigest()
        atomic_write_bytes(path / "tensors.safetensors", lambda f: f.write(blob))
        atomic_write_bytes(path / "metadata.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, model: Any = None, guide: Any = None,
             device: str | torch.device | None = None) -> FitResult:
        """Load a result written by :meth:`save`.

        A registered model is rebuilt from its name and hyper-parameters; a plain callable
        must be passed as ``model``. An SVI result with a registered guide is rebuilt from its
        name; a custom guide must be passed as ``guide`` (a fresh, untrained instance).
        """
        path = Path(path)
        meta_file, tensor_file = path / "metadata.json", path / "tensors.safetensors"
        if not meta_file.exists() or not tensor_file.exists():
            raise FileNotFoundError(f"{path} is not a saved FitResult (needs metadata.json and tensors.safetensors)")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != _FORMAT:
            raise ValueError(f"unsupported FitResult format {meta.get('format')!r} in {path}")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        digest = meta.get("tensors_sha256")
        if digest is not None and hashlib.sha256(tensor_file.read_bytes()).hexdigest() != digest:
            raise ValueError(
                f"{path}: tensors.safetensors does not match metadata.json (an interrupted save?); "
                "save the result again"
            )
        tensors = load_file(str(tensor_file))
        config = config_from_dict(meta["config"])
        if model is None:
            reg = meta["model"]["registered_name"]
            if reg is None or meta["model"]["hparams"] is None:
                raise ValueError(
                    f"{path} holds a fit of the unregistered model {meta['model']['name']!r}: "
                    "pass it as FitResult.load(path, model=...)"
                )
            from ..models import get as get_model

            model = get_model(reg)(**meta["model"]["hparams"])
        adapter = resolve_model(model)
        if isinstance(adapter.fn, torch.nn.Module):
            adapter.fn.to(dev)
            mstate = {k[6:]: v.to(dev) for k, v in tensors.items() if k.startswith("model/")}
            if mstate:
                adapter.fn.load_state_dict(mstate)
        data = {k[5:]: v.to(dev) for k, v in tensors.items() if k.startswith("data/")}
        data.update(meta["data_values"])
        adapter.inspect(data)
        common = dict(adapter=adapter, data=data, config=config, seed=meta["seed"], device=dev,
                      fit_time=meta["fit_time"])
        if meta["engine"] == "mcmc":
            order = adapter.sites.latent + adapter.sites.deterministic
            draws = {k: tensors[f"draws/{k}"] for k in order if f"draws/{k}" in tensors}
            stats = {k[6:]: v for k, v in tensors.items() if k.startswith("stats/")}
            return cls(_token=_PRIVATE, engine="mcmc", draws=draws, sample_stats=stats, **common)
        gmeta = meta["guide"]
        spec = GuideSpec(gmeta["name"], gmeta["options"]) if gmeta["name"] else GuideSpec(None, {}, guide)
        if spec.name is None and guide is None:
            raise ValueError(f"{path} holds an SVI fit with a custom guide ({gmeta['class']}): pass guide=...")
        final_cls = gmeta.get("final_class")
        built = spec.build(adapter.fn) if guide is None else guide
        if spec.entry is not None and spec.entry.post_fit is not None and type(built).__name__ != final_cls:
            # The post-fit guide (e.g. Laplace -> AutoMultivariateNormal) is rebuilt by class.
            built = give_unique_pyro_name(getattr(autoguide, final_cls)(adapter.fn))
        if isinstance(built, torch.nn.Module):
            built.to(dev)
        with torch.no_grad(), poutine.block():
            built(**data)  # create lazily-initialised parameters
        state = {k[6:]: v.to(dev) for k, v in tensors.items() if k.startswith("guide/")}
        if state:
            _load_guide_state(built, state)
        store = pyro.get_param_store()
        for k, v in tensors.items():
            if k.startswith("param_store/"):
                store[k[12:]] = v.to(dev)
        res = cls(_token=_PRIVATE, engine="svi", guide=built, guide_spec=spec, losses=meta["losses"], **common)
        khat = meta.get("psis_khat")  # absent in saves from before the diagnostic existed
        res._psis_khat = None if khat is None else float(khat)
        return res


_PRIVATE = object()


@contextlib.contextmanager
def _quiet_logger(name: str):
    # ArviZ 0.x builds its logger with ``logging.Logger("arviz")`` (module attribute ``_log``),
    # which is not the one ``logging.getLogger("arviz")`` returns: quiet both.
    loggers = [logging.getLogger(name)]
    own = getattr(sys.modules.get(name), "_log", None)
    if isinstance(own, logging.Logger) and own is not loggers[0]:
        loggers.append(own)
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _UnconditionSites(UnconditionMessenger):
    """Sample the named observed sites instead of conditioning on them.

    Pyro's ``uncondition`` would also resample ``pyro.deterministic`` sites (wrongly, as a
    broadcast Delta); only the likelihood sites are released here.
    """

    def __init__(self, sites: tuple[str, ...]) -> None:
        super().__init__()
        self.sites = frozenset(sites)

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if msg["name"] in self.sites:
            super()._pyro_sample(msg)


def _uncondition(fn: Any, sites: tuple[str, ...]) -> Any:
    return _UnconditionSites(sites)(fn)


def _load_guide_state(guide: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``load_state_dict``, plus plain tensors that a post-fit step set in place of learnable
    parameters (Laplace fixes ``scale_tril``, replacing ``scale_tril_unconstrained``)."""
    own = set(guide.state_dict())
    for key in [k for k in state if k not in own and "." not in k]:
        value = state.pop(key)
        guide._parameters.pop(key + "_unconstrained", None)
        guide.__dict__.get("_pyro_params", {}).pop(key, None)
        setattr(guide, key, value)
    guide.load_state_dict(state)


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def _guide_param_names(guide: Any, model: Any, data: dict[str, Any]) -> list[str]:
    """Names of global param-store params a plain (non-module) guide uses."""
    if isinstance(guide, torch.nn.Module):
        return []
    with torch.no_grad(), poutine.block():
        tr = poutine.trace(guide, param_only=True).get_trace(**data)
    return [n for n, s in tr.nodes.items() if s["type"] == "param"]

