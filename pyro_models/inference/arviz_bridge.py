"""One thin layer over ArviZ 0.x (``InferenceData``) and ArviZ 1.x (``xarray.DataTree``).

Everything statistical (ESS, R-hat, MCSE, the summary table, LOO, plots) is computed by the
installed ArviZ; this module only builds its data object, normalises names, and reads results
back. It imports no torch, so it also works in an environment with ArviZ alone.

ArviZ 0.x and 1.x differ in ways this module hides:

* container: ``arviz.InferenceData`` (0.x) vs ``xarray.DataTree`` (1.x, built by
  ``arviz_base.from_dict``); a group is ``idata[name]`` (a ``Dataset``) vs ``dt[name]`` (a tree
  node, turned into a ``Dataset`` here);
* ``summary``: 0.x gives ``hdi_3%``/``hdi_97%`` columns, 1.x gives ``eti89_lb``/``eti89_ub``
  (or ``hdi..``) and a ``SummaryDataFrame`` that formats numbers for display. Here both give a
  plain ``pandas.DataFrame`` of floats with the same columns, the interval columns replaced by
  equal-tailed quantiles ``q5``/``q50``/``q95``;
* ``from_dict``: 0.x takes one keyword per group, 1.x one nested dict; 0.x applies ``attrs`` to
  every group, 1.x takes them per group (here: the same ``attrs`` on every group and the root);
* plotting: ``arviz.plot_trace`` (0.x) vs ``arviz_plots.plot_trace_dist`` (1.x).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

__all__ = [
    "ARVIZ_MAJOR",
    "to_arviz",
    "summarize",
    "group_names",
    "get_group",
    "num_divergences",
    "ess_bulk_min",
    "rhat_max",
    "bfmi",
    "plot_trace",
    "SUMMARY_DIAGNOSTIC_COLUMNS",
]

ARVIZ_MAJOR: int = int(str(az.__version__).split(".")[0])

if ARVIZ_MAJOR >= 1:  # pragma: no cover - exercised in a Python >= 3.12 environment
    import arviz_base as _azb
    import arviz_stats as _azs

SAMPLE_DIMS = ("chain", "draw")
SUMMARY_DIAGNOSTIC_COLUMNS = ("mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat")

# Groups ArviZ 0.x's ``from_dict`` knows by keyword. Others go through ``dict_to_dataset``.
_V0_FROM_DICT_GROUPS = frozenset(
    {
        "posterior",
        "posterior_predictive",
        "predictions",
        "sample_stats",
        "log_likelihood",
        "prior",
        "prior_predictive",
        "sample_stats_prior",
        "observed_data",
        "constant_data",
        "predictions_constant_data",
    }
)


# --------------------------------------------------------------------------- building
def _clean_groups(groups: Mapping[str, Mapping[str, Any] | None]) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, variables in groups.items():
        if not variables:
            continue
        out[name] = {k: np.asarray(v) for k, v in variables.items() if v is not None}
        if not out[name]:
            del out[name]
    return out


def to_arviz(
    groups: Mapping[str, Mapping[str, Any] | None],
    *,
    coords: Mapping[str, Any] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Any:
    """Build the installed ArviZ's own object: ``InferenceData`` on 0.x, ``DataTree`` on 1.x.

    ``groups`` maps a group name (``posterior``, ``sample_stats``, ``observed_data``,
    ``posterior_predictive``, ``log_likelihood``, ...) to ``{variable: array}``. Arrays in
    sample groups have leading dims ``(chain, draw)``; arrays in ``*_data`` groups have no
    sample dims (ArviZ's convention, the same in both versions). Empty or ``None`` groups and
    ``None`` variables are skipped. ``coords``/``dims`` are ArviZ's usual mappings
    (``dims={"theta": ["school"]}``, ``coords={"school": [...]}``); ``attrs`` is set on every
    group (and on the tree root on 1.x).
    """
    data = _clean_groups(groups)
    coords = dict(coords) if coords else None
    dims = {k: list(v) for k, v in dims.items()} if dims else None
    attrs = dict(attrs) if attrs else None

    if ARVIZ_MAJOR >= 1:
        group_attrs = {g: dict(attrs) for g in data} if attrs else {}
        if attrs and data:
            group_attrs["/"] = dict(attrs)
        return _azb.from_dict(data, coords=coords, dims=dims, attrs=group_attrs or None)

    known = {g: v for g, v in data.items() if g in _V0_FROM_DICT_GROUPS}
    # 0.x: ``attrs`` reaches the ``*_data`` groups and InferenceData itself; sample groups
    # take theirs as ``<group>_attrs``
    group_attrs = {f"{g}_attrs": dict(attrs) for g in known if "data" not in g} if attrs else {}
    idata = az.from_dict(
        **known, coords=coords, dims=dims, attrs=dict(attrs) if attrs else None, **group_attrs
    )
    extra = {}
    for g, v in data.items():
        if g in known:
            continue
        extra[g] = az.dict_to_dataset(
            v,
            attrs=dict(attrs) if attrs else None,
            coords=coords,
            dims=dims,
            default_dims=[] if "data" in g else None,
            skip_event_dims="log_likelihood" in g,
        )
    if extra:
        idata.add_groups(extra)
    return idata


# --------------------------------------------------------------------------- access
# ArviZ 0.x's canonical group order (InferenceData reorders to it; a DataTree keeps insertion
# order), so ``group_names`` lists groups in the same order on both versions.
_GROUP_ORDER = (
    "posterior",
    "posterior_predictive",
    "predictions",
    "log_likelihood",
    "sample_stats",
    "prior",
    "prior_predictive",
    "sample_stats_prior",
    "observed_data",
    "constant_data",
    "predictions_constant_data",
)


def _canonical_order(names: list[str]) -> list[str]:
    def key(item):
        i, name = item
        base = name[len("warmup_"):] if name.startswith("warmup_") else name
        rank = _GROUP_ORDER.index(base) if base in _GROUP_ORDER else len(_GROUP_ORDER)
        return (name.startswith("warmup_"), rank, i)

    return [name for _, name in sorted(enumerate(names), key=key)]

def _is_datatree(data: Any) -> bool:
    return hasattr(xr, "DataTree") and isinstance(data, xr.DataTree)


def group_names(data: Any) -> list[str]:
    """Names of the groups present, in ArviZ 0.x's canonical order on both versions."""
    if _is_datatree(data):
        return _canonical_order([str(name) for name in data.children])
    if ARVIZ_MAJOR < 1 and isinstance(data, az.InferenceData):
        return _canonical_order(list(data.groups()))
    raise TypeError(f"expected arviz.InferenceData or xarray.DataTree, got {type(data).__name__}")


def get_group(data: Any, name: str) -> xr.Dataset:
    """Group ``name`` as an ``xarray.Dataset`` (``KeyError`` listing the groups if absent)."""
    if isinstance(data, xr.Dataset):
        return data
    names = group_names(data)
    if name not in names:
        raise KeyError(f"no group {name!r}; groups present: {names}")
    group = data[name]
    if _is_datatree(data):
        return group.to_dataset()
    return group


def num_divergences(data: Any) -> int:
    """Number of divergent transitions: ``sample_stats.diverging.sum()``, 0 when absent."""
    if "sample_stats" not in group_names(data):
        return 0
    stats = get_group(data, "sample_stats")
    if "diverging" not in stats.data_vars:
        return 0
    return int(np.asarray(stats["diverging"].values, dtype=bool).sum())


# --------------------------------------------------------------------------- diagnostics
def _var_list(var_names: str | Iterable[str] | None) -> list[str] | None:
    if var_names is None:
        return None
    if isinstance(var_names, str):
        return [var_names]
    return list(var_names)


def _posterior(data: Any) -> xr.Dataset:
    return data if isinstance(data, xr.Dataset) else get_group(data, "posterior")


def _dataset_extreme(ds: xr.Dataset, reducer) -> float:
    values = [np.asarray(ds[v].values, dtype=float).ravel() for v in ds.data_vars]
    values = [v for v in values if v.size]
    if not values:
        raise ValueError("no variables to compute a diagnostic for")
    return float(reducer(np.concatenate(values)))


def ess_bulk_min(data: Any, var_names: str | Iterable[str] | None = None) -> float:
    """Smallest bulk ESS (``arviz.ess(method="bulk")``) over every posterior scalar.

    NaN (e.g. a constant parameter) propagates, so it is never hidden.
    """
    ess = az.ess(_posterior(data), var_names=_var_list(var_names), method="bulk")
    return _dataset_extreme(ess, np.min)


def rhat_max(data: Any, var_names: str | Iterable[str] | None = None) -> float:
    """Largest rank-normalised split R-hat (``arviz.rhat``) over every posterior scalar."""
    rhat = az.rhat(_posterior(data), var_names=_var_list(var_names))
    return _dataset_extreme(rhat, np.max)


def bfmi(data: Any) -> np.ndarray:
    """Per-chain E-BFMI from ``sample_stats.energy`` (``arviz.bfmi``)."""
    stats = get_group(data, "sample_stats")
    if "energy" not in stats.data_vars:
        raise KeyError("sample_stats has no 'energy' variable")
    if ARVIZ_MAJOR >= 1:
        out = _azs.bfmi(stats, var_names="energy")
        if isinstance(out, xr.Dataset):
            out = out["energy"]
        return np.asarray(getattr(out, "values", out), dtype=float).ravel()
    return np.asarray(az.bfmi(stats), dtype=float).ravel()


# --------------------------------------------------------------------------- summary
def _quantile_name(q: float) -> str:
    return f"q{100 * float(q):g}"


def summarize(
    data: Any,
    *,
    var_names: str | Iterable[str] | None = None,
    quantiles: Sequence[float] = (0.05, 0.5, 0.95),
    round_to: int | None = None,
) -> pd.DataFrame:
    """``arviz.summary`` of the posterior through the installed ArviZ, version-independent.

    Columns: ``mean, sd, q<p>... (e.g. q5, q50, q95), mcse_mean, mcse_sd, ess_bulk, ess_tail,
    r_hat``; rows labelled as ArviZ does (``theta[0]``, or by coordinate value). Values are
    plain floats; ``round_to`` (an int) rounds every column, ``None`` leaves them raw.
    Quantiles are equal-tailed (linear interpolation) over all chains and draws.
    """
    quantiles = tuple(float(q) for q in quantiles)
    if any(not 0.0 <= q <= 1.0 for q in quantiles):
        raise ValueError(f"quantiles must lie in [0, 1], got {quantiles}")
    qnames = [_quantile_name(q) for q in quantiles]
    if len(set(qnames)) != len(qnames):
        raise ValueError(f"duplicate quantiles: {quantiles}")
    columns = ["mean", "sd", *qnames, *SUMMARY_DIAGNOSTIC_COLUMNS]
    var_names = _var_list(var_names)

    with warnings.catch_warnings():
        # Constant draws (a MAP point, MC dropout's fixed weights) have zero variance: ArviZ's
        # MCSE/ESS divide by it and warn; those cells are NaN, which is the honest answer.
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        warnings.filterwarnings("ignore", "divide by zero encountered", RuntimeWarning)
        if ARVIZ_MAJOR >= 1:
            table = _summarize_v1(data, var_names, quantiles, qnames)
        else:
            stat_funcs = {name: functools.partial(np.quantile, q=q) for name, q in zip(qnames, quantiles)}
            table = az.summary(
                data, var_names=var_names, kind="all", stat_funcs=stat_funcs, extend=True, round_to="none"
            )
    table = pd.DataFrame(table)[columns].astype(float)
    if round_to is not None:
        table = table.round(int(round_to))
    return table


def _summarize_v1(data, var_names, quantiles, qnames):  # pragma: no cover - ArviZ >= 1 only
    stats = _azs.summary(data, var_names=var_names, kind="all", fmt="xarray", round_to="none")
    stats = stats.sel(summary=["mean", "sd", *SUMMARY_DIAGNOSTIC_COLUMNS])
    # the same dataset arviz_stats.summary reduces, so the rows line up
    ds = _azb.extract(
        data, var_names=var_names, group="posterior", sample_dims=list(SAMPLE_DIMS),
        combined=False, keep_dataset=True,
    )
    if quantiles:
        qs = ds.quantile(list(quantiles), dim=list(SAMPLE_DIMS))
        qs = qs.rename({"quantile": "summary"}).assign_coords(summary=qnames)
        stats = xr.concat([stats, qs], dim="summary")
    return _azb.dataset_to_dataframe(stats, sample_dims=["summary"]).T


# --------------------------------------------------------------------------- plots
@contextlib.contextmanager
def _agg_figures():
    """Draw on the non-interactive Agg backend; close every figure opened inside.

    The backend is only switched (and switched back) when no figure is open, since pyplot's
    ``switch_backend`` closes open figures; otherwise the figures are drawn with interactive
    mode off and saved straight to file, so nothing is shown either way.
    """
    import matplotlib
    import matplotlib.pyplot as plt

    old = matplotlib.get_backend()
    switch = old.lower() != "agg" and not plt.get_fignums()
    if switch:
        plt.switch_backend("Agg")
    before = set(plt.get_fignums())
    try:
        with plt.ioff():
            yield
    finally:
        for num in set(plt.get_fignums()) - before:
            plt.close(num)
        if switch:
            plt.switch_backend(old)


def plot_trace(data: Any, var_names: str | Iterable[str] | None = None, path: str | os.PathLike | None = None) -> Path:
    """Save a trace plot (marginal + chain trace per variable) as PNG; return its path.

    Uses ``arviz.plot_trace`` on 0.x and ``arviz_plots.plot_trace_dist`` (matplotlib) on 1.x.
    Without ``path`` a new temporary ``*.png`` file is written.
    """
    var_names = _var_list(var_names)
    if path is None:
        fd, tmp = tempfile.mkstemp(prefix="trace_", suffix=".png")
        os.close(fd)
        path = tmp
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _agg_figures():
        if ARVIZ_MAJOR >= 1:
            import arviz_plots

            pc = arviz_plots.plot_trace_dist(data, var_names=var_names, backend="matplotlib")
            pc.savefig(path)
        else:
            axes = az.plot_trace(data, var_names=var_names, show=False)
            fig = np.asarray(axes).ravel()[0].get_figure()
            fig.savefig(path)
    return path
