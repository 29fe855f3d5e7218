"""Evaluation: uncertainty decomposition (more metrics arrive with the evaluation issue)."""

from .uncertainty import decompose_classification, decompose_regression

__all__ = ["decompose_regression", "decompose_classification"]
