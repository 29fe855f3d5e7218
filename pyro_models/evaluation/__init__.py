"""Evaluation: diagnostics (ArviZ), predictive checks, uncertainty, predictive metrics, OOD detection."""

import importlib
from typing import Any

from .metrics import (
    accuracy,
    accuracy_retention_curve,
    area_under_retention_curve,
    brier,
    central_interval,
    crps_gaussian,
    crps_gaussian_mixture,
    crps_samples,
    ece,
    gaussian_mixture_cdf,
    gaussian_mixture_nll,
    gaussian_mixture_quantile,
    interval_coverage,
    nll,
    pit,
    plot_reliability_diagram,
    regression_calibration_curve,
    reliability_diagram_data,
    rmse,
)
from .ood import auroc, fpr_at_95_tpr, ood_scores
from .uncertainty import decompose_classification, decompose_regression

__all__ = [
    # diagnostics (ArviZ)
    "mcmc_diagnostics",
    "bfmi",
    "loo",
    "compare",
    "LOOResult",
    "psis_khat",
    "psis_log_weights",
    "PSISWarning",
    "ParetoKWarning",
    "KHAT_GOOD",
    "KHAT_BAD",
    # predictive checks
    "prior_predictive",
    "plot_ppc",
    "plot_prior_predictive",
    "decompose_regression",
    "decompose_classification",
    # regression
    "rmse",
    "gaussian_mixture_nll",
    "crps_gaussian",
    "crps_gaussian_mixture",
    "crps_samples",
    "gaussian_mixture_cdf",
    "gaussian_mixture_quantile",
    "central_interval",
    "pit",
    "interval_coverage",
    "regression_calibration_curve",
    # classification
    "accuracy",
    "nll",
    "brier",
    "ece",
    "reliability_diagram_data",
    "plot_reliability_diagram",
    # selective prediction
    "accuracy_retention_curve",
    "area_under_retention_curve",
    # out-of-distribution detection
    "ood_scores",
    "auroc",
    "fpr_at_95_tpr",
]

# Diagnostics and predictive checks work on fitted results, so they need the inference engine,
# the guides and the models; the models in turn import this package (``uncertainty``) while
# ``pyro_models`` is still loading. Those two modules are therefore loaded on first use.
_LAZY = {
    **dict.fromkeys(
        ("mcmc_diagnostics", "bfmi", "loo", "compare", "LOOResult", "psis_khat", "psis_log_weights",
         "PSISWarning", "ParetoKWarning", "KHAT_GOOD", "KHAT_BAD"),
        ".diagnostics",
    ),
    **dict.fromkeys(("prior_predictive", "plot_ppc", "plot_prior_predictive"), ".predictive_checks"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
