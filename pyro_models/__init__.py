"""pyro-models: Bayesian deep learning on Pyro with one ``fit()`` and honest uncertainty.

>>> import pyro_models
>>> "normal" in pyro_models.guides.available() and "bnn_regression" in pyro_models.models.available()
True
"""

__version__ = "0.1.0"

from . import errors, models  # noqa: E402
from . import guides  # noqa: E402  (installed from the top-level guides/ folder)
from .data import DataSpec, Field  # noqa: E402
from .inference import DivergenceWarning, FitResult, MCMCConfig, SVIConfig, fit  # noqa: E402
from .inference.result import Predictions  # noqa: E402
from .evaluation.diagnostics import PSISWarning  # noqa: E402
from .inference.batched_potential import ModelNotVectorizableError  # noqa: E402
from .inference.mcmc import BatchedFallbackWarning  # noqa: E402
from .models.bnn import bayesian_net  # noqa: E402


def __getattr__(name: str):
    # report() pulls in matplotlib and the whole evaluation stack: loaded on first use.
    if name == "report":
        from .evaluation.report import report

        globals()["report"] = report
        return report
    raise AttributeError(f"module 'pyro_models' has no attribute {name!r}")


__all__ = [
    "fit", "report", "bayesian_net", "SVIConfig", "MCMCConfig", "FitResult", "Predictions", "DivergenceWarning", "PSISWarning",
    "BatchedFallbackWarning", "ModelNotVectorizableError",
    "models", "guides", "errors", "DataSpec", "Field", "__version__",
]
