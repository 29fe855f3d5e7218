"""Engines (SVI, MCMC), their configs, checkpoints and the result type."""

from .config import MCMCConfig, SVIConfig
from .fit import fit
from .mcmc import DivergenceWarning
from .result import FitResult

__all__ = ["fit", "SVIConfig", "MCMCConfig", "FitResult", "DivergenceWarning"]
