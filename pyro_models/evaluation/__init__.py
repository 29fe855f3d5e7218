"""Evaluation: uncertainty decomposition, predictive metrics and OOD detection."""

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
