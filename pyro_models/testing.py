"""Contract checks for plug-in authors: run them on your own guide or model.

A third-party guide (or model) joins the registries through an entry point; these functions
check that it honours the contract the rest of the package relies on, with plain
``assert`` statements whose messages say what was expected and what came out, so they read
well under pytest and in a plain script alike.

- :func:`check_guide_factory`: the factory's signature (``factory(model, **options)``, every
  option a keyword argument with a default).
- :func:`check_guide`: fits a few registered models through :func:`pyro_models.fit` and checks
  the losses, draws, predictions, log-likelihood, ArviZ export, save/load, device placement
  and, on the conjugate ``normal_normal`` model, accuracy against the exact posterior.
- :func:`check_model`: the same plumbing for a model plug-in (data contract, example data,
  SVI and a short NUTS run, vectorised prediction).

A plug-in's own test file can be as short as::

    from pyro_models.testing import check_guide

    def test_my_guide():
        check_guide("my_guide")

Examples
--------
>>> from pyro_models.testing import check_guide, check_guide_factory
>>> check_guide_factory(lambda model, *, init_scale=0.1: None)
>>> check_guide("normal", models=("normal_normal",), num_steps=100, accuracy=False)
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.util import site_is_subsample

from . import guides as guide_registry
from . import models as model_registry
from .data import DataSpec
from .errors import DataValidationError, NonFiniteLossError
from .inference import DivergenceWarning, FitResult, MCMCConfig, SVIConfig, fit
from .inference.arviz_bridge import group_names
from .init_strategies import get_init_strategy
from .models.base import BayesianModel

__all__ = ["check_guide", "check_guide_factory", "check_model", "DEFAULT_MODELS", "ACCURACY_MODEL"]

#: Models :func:`check_guide` fits by default: a linear regression (global vector latents) and
#: the non-centred eight schools (a positive scale and local latents in a plate).
DEFAULT_MODELS: tuple[str, ...] = ("linear_regression", "eight_schools")
#: The conjugate model whose exact posterior the accuracy check compares with.
ACCURACY_MODEL = "normal_normal"

_REQUIRED_GROUPS = ("posterior", "posterior_predictive", "log_likelihood")
# Pyro_models' message when draws cannot be evaluated vectorised (see inference/predictive.py).
_FALLBACK_MARK = "could not be evaluated vectorised"


# --------------------------------------------------------------------------------- guides
def check_guide_factory(factory: Callable[..., Any], *, name: str | None = None) -> None:
    """Check a guide factory's signature: ``factory(model, **options)`` with keyword defaults.

    The first parameter receives the model; every other parameter is an option and must have
    a default, so ``factory(model)`` works and ``fit(..., guide=(name, {...}))`` can validate
    option names. ``*args`` is not allowed (options are passed by keyword).

    Parameters
    ----------
    factory : callable
        The guide factory.
    name : str, optional
        Used in messages (default: the factory's ``__qualname__``).

    Raises
    ------
    AssertionError
        The signature breaks the contract; the message names the offending parameter.
    TypeError
        ``factory`` is not callable.

    Examples
    --------
    >>> check_guide_factory(lambda model, *, rank=2: None)
    >>> check_guide_factory(lambda model, rank: None, name="lowrank")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    AssertionError: guide 'lowrank': option 'rank' has no default; every option must be ...
    """
    if not callable(factory):
        raise TypeError(f"a guide factory must be callable, got {type(factory).__name__}")
    label = name or getattr(factory, "__qualname__", None) or type(factory).__name__
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"guide {label!r}: cannot read the factory's signature ({exc})") from exc
    params = list(sig.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    assert params and params[0].kind in positional, (
        f"guide {label!r}: the factory's first parameter must be the model, passed positionally "
        f"(factory(model, **options)); its signature is {sig}"
    )
    for p in params[1:]:
        assert p.kind is not inspect.Parameter.VAR_POSITIONAL, (
            f"guide {label!r}: *{p.name} is not allowed; options are keyword arguments with defaults"
        )
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        assert p.default is not inspect.Parameter.empty, (
            f"guide {label!r}: option {p.name!r} has no default; every option must be a keyword "
            f"argument with a default so that factory(model) works"
        )


def check_guide(
    guide: str | guide_registry.GuideEntry | Callable[..., Any],
    *,
    models: Sequence[str | BayesianModel] = DEFAULT_MODELS,
    options: Mapping[str, Any] | None = None,
    num_steps: int = 200,
    lr: float = 0.05,
    num_samples: int = 64,
    seed: int = 0,
    accuracy: bool = True,
    accuracy_sds: float = 0.5,
    cuda: bool | None = None,
) -> None:
    """Check that a guide honours the contract of the guide registry.

    For each model the guide is built through the registry, trained by a short SVI run in
    :func:`pyro_models.fit` on the model's ``example_data(seed)``, and the result is checked:

    1. the factory signature (:func:`check_guide_factory`);
    2. every loss is finite, and the mean of the last tenth of the losses is below the mean
       of the first tenth;
    3. ``samples()`` holds every latent and deterministic site with shape
       ``(num_samples, *site_shape)``, all finite, drawn vectorised (no loop fallback);
    4. ``predict()`` gives ``(num_samples, *obs_shape)`` per observed site and
       ``log_likelihood()`` gives ``(num_samples, *obs_batch_shape)``, all finite;
    5. ``to_inference_data()`` has the posterior, posterior_predictive and log_likelihood groups;
    6. ``FitResult.save`` then ``FitResult.load`` gives identical draws;
    7. the trained guide's tensors live on the fit's device; with CUDA available (or
       ``cuda=True``) the first model is also fitted on ``"cuda"``;
    8. with ``accuracy=True``, on the conjugate ``normal_normal`` model the guide's posterior
       mean of ``mu`` is within ``accuracy_sds`` exact posterior standard deviations of the
       exact mean, and its standard deviation (unless the guide is a point mass) is within a
       factor of 2 of the exact one.

    Parameters
    ----------
    guide : str, GuideEntry or callable
        A registered guide name (plug-ins included), a :class:`~pyro_models.guides.GuideEntry`,
        or a factory ``factory(model, **options)``. Entries and factories that are not
        registered are registered under a temporary name for the check and removed after it.
    models : sequence of str or BayesianModel
        Registered model names or model instances (each must provide ``example_data``).
        Models that the guide's registry entry declares it cannot serve (its ``check``) are
        skipped, as is the accuracy check; ``ValueError`` if no model is left.
    options : dict, optional
        Guide options passed as ``fit(..., guide=(name, options))``.
    num_steps, lr : int, float
        SVI budget for each plumbing fit (the accuracy fit uses ``max(num_steps, 500)`` steps
        with a decaying learning rate).
    num_samples : int
        Posterior draws kept and checked.
    seed : int
        Seed of every fit and of the example data.
    accuracy : bool
        Run the accuracy check against ``normal_normal``'s exact posterior.
    accuracy_sds : float
        Allowed error of the posterior mean, in exact posterior standard deviations. Measured
        with the built-in guides (500 steps, lr 0.1 decaying to 0.01, seeds 0-2) the error is
        at most 0.2 sd; the Monte Carlo error of the mean of 1000 draws is 0.03 sd.
    cuda : bool, optional
        ``None`` checks CUDA when it is available; ``True`` requires it; ``False`` skips it.

    Raises
    ------
    AssertionError
        The guide breaks the contract; the message names the guide, the model and the check.
    TypeError, ValueError
        Bad arguments to this function, ``cuda=True`` without CUDA, or no model the guide serves.

    Examples
    --------
    >>> from pyro.infer import autoguide
    >>> def diagonal(model, *, init_scale: float = 0.05):
    ...     return autoguide.AutoDiagonalNormal(model, init_scale=init_scale)
    >>> check_guide(diagonal, models=("normal_normal",), num_steps=100, accuracy=False)
    """
    _check_positive_int("num_steps", num_steps)
    _check_positive_int("num_samples", num_samples)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not (isinstance(accuracy_sds, (int, float)) and accuracy_sds > 0):
        raise ValueError(f"accuracy_sds must be a positive number, got {accuracy_sds!r}")
    if isinstance(models, (str, BayesianModel)) or not isinstance(models, Sequence):
        raise TypeError(f"models must be a sequence of registered names or model instances, got {models!r}")
    if cuda is True and not torch.cuda.is_available():
        raise ValueError("cuda=True but CUDA is not available on this machine")
    opts = dict(options or {})
    with _registered(guide) as (name, label):
        entry = guide_registry.entry(name)
        check_guide_factory(entry.factory, name=label)
        allowed = entry.options()
        unknown = sorted(set(opts) - set(allowed))
        if unknown:
            raise TypeError(f"guide {label!r} has no option(s) {unknown}; its options are {allowed}")
        spec = (name, opts)
        # Short plumbing fits: no PSIS k-hat (it would rightly warn about an unconverged guide).
        config = SVIConfig(num_steps=num_steps, lr=lr, num_posterior_samples=num_samples, psis_draws=0)
        served, reasons = [], []
        for m in models:
            model, mlabel = _resolve_model(m)
            reason = _incompatibility(name, model)
            if reason is not None:  # the entry declares it cannot serve this model
                reasons.append(reason)
                continue
            served.append(m)
            ctx = f"guide {label!r} on model {mlabel!r}"
            data = _example_data(model, seed, ctx)
            res = _fit(model, data, config, spec, seed, ctx)
            _check_losses(res, ctx, expect_decrease=True)
            _check_result(res, model, num_samples, ctx)
            _check_device(res, res.device, ctx)
            _check_save_load(res, model, ctx)
        if not served:
            raise ValueError(
                f"guide {label!r} declares that it serves none of the models {list(models)}: "
                f"{'; '.join(reasons)}. Pass models=... that it serves"
            )
        if cuda is not False and torch.cuda.is_available():
            # fit() moves the model to the device: a copy leaves the caller's instance alone.
            model, mlabel = _resolve_model(copy.deepcopy(served[0]))
            ctx = f"guide {label!r} on model {mlabel!r} (cuda)"
            data = _example_data(model, seed, ctx)
            res = _fit(model, data, SVIConfig(num_steps=min(num_steps, 50), lr=lr, num_posterior_samples=num_samples,
                                              psis_draws=0), spec, seed, ctx, device="cuda")
            _check_losses(res, ctx, expect_decrease=False)
            _check_device(res, torch.device("cuda"), ctx)
            _check_result(res, model, num_samples, ctx)
        if accuracy and _incompatibility(name, model_registry.get(ACCURACY_MODEL)()) is None:
            _check_accuracy(spec, label, max(num_steps, 500), seed, float(accuracy_sds))


# --------------------------------------------------------------------------------- models
def check_model(
    model: str | BayesianModel | type,
    *,
    guide: Any = "normal",
    num_steps: int = 100,
    lr: float = 0.05,
    num_samples: int = 32,
    seed: int = 0,
    mcmc: bool = True,
) -> None:
    """Check that a model honours the contract of the model registry.

    1. A registered name or class builds with no arguments; the model is a
       :class:`~pyro_models.models.BayesianModel` with a ``data_spec``, and its hyperparameters
       are JSON-serialisable (so saved results can rebuild it).
    2. ``example_data(seed)`` is a dict, the same for the same seed, and passes the model's
       own data contract.
    3. A short SVI fit with ``guide`` has finite losses; ``samples()``, ``predict()`` (on the
       training data and, if the model has non-observed fields, on those fields alone, as
       for new inputs), ``log_likelihood()`` and ``to_inference_data()`` have the expected
       shapes and groups and are evaluated vectorised over draws (no loop fallback);
       save/load gives identical draws.
    4. With ``mcmc=True`` and ``model.supports_mcmc``, a tiny NUTS run predicts vectorised
       too; a model with ``supports_mcmc = False`` must refuse MCMC with ``ValueError``.

    Parameters
    ----------
    model : str, BayesianModel subclass or instance
    guide : str, (str, dict) or callable
        The guide for the SVI fit (as in :func:`pyro_models.fit`).
    num_steps, lr : int, float
        SVI budget.
    num_samples : int
        Posterior draws kept and checked.
    seed : int
        Seed of the fits and of the example data.
    mcmc : bool
        Also run a tiny NUTS fit (1 chain, 20 warmup, 10 draws).

    Raises
    ------
    AssertionError
        The model breaks the contract; the message says which part.
    TypeError, ValueError
        Bad arguments to this function.

    Examples
    --------
    >>> check_model("normal_normal", num_steps=50, mcmc=False)
    """
    _check_positive_int("num_steps", num_steps)
    _check_positive_int("num_samples", num_samples)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    inst, label = _resolve_model(model)
    ctx = f"model {label!r}"
    spec = getattr(inst, "data_spec", None)
    assert isinstance(spec, DataSpec), (
        f"{ctx}: the class attribute data_spec must be a pyro_models.DataSpec, got {type(spec).__name__}"
    )
    assert inst.jsonable_hparams() is not None, (
        f"{ctx}: constructor arguments must be JSON-serialisable so a saved result can rebuild "
        f"the model; got {inst.hparams!r}"
    )
    data = _example_data(inst, seed, ctx)
    again = inst.example_data(seed)
    assert set(again) == set(data) and all(_same(data[k], again[k]) for k in data), (
        f"{ctx}: example_data(seed={seed}) returned different data on a second call; seed its "
        f"random numbers (e.g. torch.Generator().manual_seed(seed))"
    )
    clean = inst.validate_data(data)
    inputs = {k: v for k, v in clean.items() if k not in spec.observed}
    config = SVIConfig(num_steps=num_steps, lr=lr, num_posterior_samples=num_samples, psis_draws=0)
    res = _fit(inst, data, config, guide, seed, ctx)
    _check_losses(res, ctx, expect_decrease=False)
    _check_result(res, inst, num_samples, ctx)
    if inputs:
        pred = _no_fallback(lambda: res.predict(inputs), f"{ctx}: predict(new inputs)")
        for site, v in pred.items():
            assert v.shape[0] == num_samples and bool(torch.isfinite(v.float()).all()), (
                f"{ctx}: predict(new inputs)[{site!r}] has shape {tuple(v.shape)} or non-finite "
                f"values; expected ({num_samples}, ...) finite draws"
            )
    _check_save_load(res, inst, ctx)
    if not mcmc:
        return
    mconfig = MCMCConfig(num_chains=1, num_warmup=20, num_samples=10, max_tree_depth=5)
    if not inst.supports_mcmc:
        try:
            fit(inst, data, mconfig, seed=seed, progress=False)
        except ValueError:
            return
        raise AssertionError(f"{ctx}: supports_mcmc is False but fit() with MCMCConfig did not refuse it")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)  # 20 warmup steps do not adapt a step size
        mres = _fit(inst, data, mconfig, None, seed, ctx + " (NUTS)")
    _check_result(mres, inst, 10, ctx + " (NUTS)")


# --------------------------------------------------------------------------------- helpers
def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    return type(a) is type(b) and a == b


@contextmanager
def _registered(guide: Any) -> Iterator[tuple[str, str]]:
    """Yield ``(registry name, label)``; unregistered entries/factories get a temporary name."""
    if isinstance(guide, str):
        guide_registry.entry(guide)  # KeyError listing the guides
        yield guide, guide
        return
    if isinstance(guide, guide_registry.GuideEntry):
        if guide.name in guide_registry.REGISTRY and guide_registry.entry(guide.name) is guide:
            yield guide.name, guide.name
            return
        label, base = guide.name, guide
    elif callable(guide):
        label = getattr(guide, "__qualname__", None) or type(guide).__name__
        base = guide_registry.GuideEntry(label, guide)
    else:
        raise TypeError(
            f"guide must be a registered name, a GuideEntry or a factory(model, **options), "
            f"got {type(guide).__name__}"
        )
    tmp = f"_check_guide_{uuid.uuid4().hex[:12]}"
    guide_registry.REGISTRY.register(tmp, dataclasses.replace(base, name=tmp))
    try:
        yield tmp, label
    finally:
        guide_registry.unregister(tmp)


def _incompatibility(name: str, model: BayesianModel) -> str | None:
    """The reason the guide entry gives for not serving ``model`` (its ``check``), if any."""
    reason = getattr(guide_registry, "incompatibility", None)
    return None if reason is None else reason(name, model)


def _resolve_model(model: Any) -> tuple[BayesianModel, str]:
    if isinstance(model, str):
        factory = model_registry.get(model)
        label = model
    elif isinstance(model, type) and issubclass(model, BayesianModel):
        factory, label = model, model.__name__
    elif isinstance(model, BayesianModel):
        return model, type(model).registered_name or type(model).__name__
    else:
        raise TypeError(
            f"a model to check must be a registered name, a BayesianModel subclass or instance, "
            f"got {type(model).__name__}"
        )
    try:
        inst = factory()
    except Exception as exc:
        raise AssertionError(
            f"model {label!r} must be constructible with no arguments (sensible defaults); "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    assert isinstance(inst, BayesianModel), (
        f"model {label!r}: the registered factory built a {type(inst).__name__}, not a BayesianModel"
    )
    return inst, label


def _example_data(model: BayesianModel, seed: int, ctx: str) -> dict[str, Any]:
    try:
        data = model.example_data(seed=seed)
    except NotImplementedError as exc:
        raise AssertionError(f"{ctx}: the model must implement example_data(seed) ({exc})") from exc
    assert isinstance(data, dict), f"{ctx}: example_data() must return a dict, got {type(data).__name__}"
    try:
        model.validate_data(data)
    except DataValidationError as exc:
        raise AssertionError(f"{ctx}: example_data() does not satisfy the model's data_spec: {exc}") from exc
    return data


def _fit(model: Any, data: Mapping[str, Any], config: Any, guide: Any, seed: int, ctx: str,
         device: str | None = None) -> FitResult:
    try:
        if guide is None:
            return fit(model, data, config, seed=seed, progress=False, device=device)
        return fit(model, data, config, guide=guide, seed=seed, progress=False, device=device)
    except NonFiniteLossError as exc:
        raise AssertionError(f"{ctx}: the loss must stay finite, but {exc}") from exc
    except Exception as exc:
        raise AssertionError(f"{ctx}: fit() raised {type(exc).__name__}: {exc}") from exc


def _check_losses(res: FitResult, ctx: str, *, expect_decrease: bool) -> None:
    losses = torch.tensor(res.losses, dtype=torch.float64)
    assert len(losses) == res.config.num_steps, (
        f"{ctx}: expected {res.config.num_steps} losses, got {len(losses)}"
    )
    bad = (~torch.isfinite(losses)).nonzero().flatten()
    assert bad.numel() == 0, f"{ctx}: non-finite loss at step(s) {bad[:5].tolist()}"
    if expect_decrease:
        w = max(1, len(losses) // 10)
        first, last = float(losses[:w].mean()), float(losses[-w:].mean())
        assert last < first, (
            f"{ctx}: the loss did not decrease (mean of the first {w} steps {first:.4g}, of the "
            f"last {w} steps {last:.4g}); are the guide's parameters trainable and used?"
        )


def _model_sites(model: BayesianModel, data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Shapes from one run of the model: latent/deterministic value shapes, observed shapes."""
    clean = model.validate_data(data)
    with torch.no_grad(), poutine.block():
        tr = poutine.trace(InitMessenger(get_init_strategy("uniform"))(model)).get_trace(**clean)
    out: dict[str, dict[str, Any]] = {"latent": {}, "deterministic": {}, "observed": {}, "batch": {}}
    for name, site in tr.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["infer"].get("_deterministic"):
            out["deterministic"][name] = tuple(site["value"].shape)
        elif site["is_observed"]:
            out["observed"][name] = tuple(site["value"].shape)
            out["batch"][name] = tuple(site["fn"].batch_shape)
        else:
            out["latent"][name] = tuple(site["value"].shape)
    return out


def _no_fallback(call: Callable[[], Any], what: str) -> Any:
    """Run ``call``; fail if pyro_models fell back to a loop over draws, re-emit other warnings."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = call()
    for w in rec:
        msg = str(w.message)
        assert not (issubclass(w.category, RuntimeWarning) and _FALLBACK_MARK in msg), (
            f"{what} fell back to a loop over posterior draws: {msg}"
        )
    for w in rec:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


def _check_result(res: FitResult, model: BayesianModel, num_samples: int, ctx: str) -> None:
    sites = _model_sites(model, res.data)  # the validated data, on the fit's device
    draws = _no_fallback(res.samples, f"{ctx}: samples()")
    if res.engine == "mcmc":
        draws = {k: v.reshape((-1,) + v.shape[2:]) for k, v in draws.items()}
    expected = {**sites["latent"], **sites["deterministic"]}
    missing = sorted(set(expected) - set(draws))
    assert not missing, f"{ctx}: samples() lacks site(s) {missing}; it has {sorted(draws)}"
    for site, shape in expected.items():
        v = draws[site]
        assert tuple(v.shape) == (num_samples,) + shape, (
            f"{ctx}: samples()[{site!r}] has shape {tuple(v.shape)}; expected "
            f"{(num_samples,) + shape} (draws, *site shape {shape})"
        )
        assert bool(torch.isfinite(v.float()).all()), f"{ctx}: samples()[{site!r}] has non-finite values"
    pred = _no_fallback(res.predict, f"{ctx}: predict()")
    assert set(pred) == set(sites["observed"]), (
        f"{ctx}: predict() returned sites {sorted(pred)}; expected the observed sites {sorted(sites['observed'])}"
    )
    for site, shape in sites["observed"].items():
        v = pred[site]
        assert tuple(v.shape) == (num_samples,) + shape, (
            f"{ctx}: predict()[{site!r}] has shape {tuple(v.shape)}; expected {(num_samples,) + shape}"
        )
        assert bool(torch.isfinite(v.float()).all()), f"{ctx}: predict()[{site!r}] has non-finite values"
    ll = _no_fallback(res.log_likelihood, f"{ctx}: log_likelihood()")
    assert set(ll) == set(sites["observed"]), (
        f"{ctx}: log_likelihood() returned sites {sorted(ll)}; expected {sorted(sites['observed'])}"
    )
    for site, shape in sites["batch"].items():
        v = ll[site]
        assert tuple(v.shape) == (num_samples,) + shape, (
            f"{ctx}: log_likelihood()[{site!r}] has shape {tuple(v.shape)}; expected "
            f"{(num_samples,) + shape} (draws, *batch shape of the observed site)"
        )
        assert bool(torch.isfinite(v).all()), f"{ctx}: log_likelihood()[{site!r}] has non-finite values"
    idata = _no_fallback(res.to_inference_data, f"{ctx}: to_inference_data()")
    groups = group_names(idata)
    missing = [g for g in _REQUIRED_GROUPS if g not in groups]
    assert not missing, f"{ctx}: to_inference_data() lacks group(s) {missing}; it has {groups}"


def _guide_tensors(res: FitResult) -> dict[str, torch.Tensor]:
    guide = res.guide
    out: dict[str, torch.Tensor] = {}
    if isinstance(guide, torch.nn.Module):
        out.update({f"parameter {k}": v for k, v in guide.named_parameters()})
        out.update({f"buffer {k}": v for k, v in guide.named_buffers()})
    else:
        with torch.no_grad(), poutine.block():
            tr = poutine.trace(guide, param_only=True).get_trace(**res.data)
        store = pyro.get_param_store()
        out.update({f"param {n}": store[n] for n, s in tr.nodes.items() if s["type"] == "param" and n in store})
    return out


def _check_device(res: FitResult, device: torch.device, ctx: str) -> None:
    if res.guide is None:
        return
    for name, t in _guide_tensors(res).items():
        assert t.device.type == device.type, (
            f"{ctx}: the guide's {name} is on {t.device} but the fit ran on {device}; create "
            f"tensors on the data's device (or as buffers/parameters that move with .to(device))"
        )


def _check_save_load(res: FitResult, model: BayesianModel, ctx: str) -> None:
    before = res.samples()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            res.save(tmp)
            registered = type(model).registered_name is not None and model.jsonable_hparams() is not None
            loaded = FitResult.load(tmp) if registered else FitResult.load(tmp, model=model)
            after = loaded.samples()
        except Exception as exc:
            raise AssertionError(f"{ctx}: FitResult save/load failed: {type(exc).__name__}: {exc}") from exc
    for site, v in before.items():
        assert site in after and torch.equal(v, after[site]), (
            f"{ctx}: after FitResult.save/load the draws of {site!r} differ (max abs difference "
            f"{float((v - after[site]).abs().max()) if site in after else 'n/a (site missing)'}); "
            f"keep all guide state in parameters or persistent buffers so it is saved"
        )


def _check_accuracy(spec: tuple[str, dict[str, Any]], label: str, num_steps: int, seed: int, k: float) -> None:
    model = model_registry.get(ACCURACY_MODEL)()
    data = model.example_data(seed=seed)
    ctx = f"guide {label!r} on model {ACCURACY_MODEL!r} (accuracy)"
    num_draws = 1000
    # Accuracy is judged against the exact posterior below, not by PSIS k-hat.
    config = SVIConfig(num_steps=num_steps, lr=0.1, lr_schedule="exponential", lr_final_factor=0.1,
                       num_posterior_samples=num_draws, psis_draws=0)
    res = _fit(model, data, config, spec, seed, ctx)
    exact = model.exact_posterior(**data)["mu"]
    mean, sd = float(exact.mean), float(exact.stddev)
    mu = res.samples()["mu"].double()
    got_mean, got_sd = float(mu.mean()), float(mu.std())
    # The Monte Carlo error of the mean of 1000 draws is 0.03 posterior sd; SVI noise at the
    # end of this schedule moves the built-in guides' means by at most 0.2 sd.
    z = (got_mean - mean) / sd
    assert abs(z) <= k, (
        f"{ctx}: the posterior mean of 'mu' is {got_mean:.4f}, {z:+.2f} exact posterior sds from "
        f"the exact {mean:.4f} (sd {sd:.4f}); allowed {k} sds"
    )
    if got_sd > 0:  # a point-mass guide (delta) has no spread to compare
        ratio = got_sd / sd
        assert 0.5 <= ratio <= 2.0, (
            f"{ctx}: the posterior sd of 'mu' is {got_sd:.4f}, {ratio:.2f} times the exact "
            f"{sd:.4f}; expected within a factor of 2"
        )
