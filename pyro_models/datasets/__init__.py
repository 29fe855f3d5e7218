"""Small data sets shipped with the package (no network, no ../shared needed)."""

from .radon import RADON_NUM_COUNTIES, RADON_NUM_HOUSES, load_radon  # noqa: E402,F401
