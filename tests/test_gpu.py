"""The same fits on CUDA (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

import pyro_models
from pyro_models import MCMCConfig, SVIConfig

pytestmark = pytest.mark.gpu


def test_svi_on_cuda():
    x = torch.randn(200, 3)
    data = {"x": x, "y": x.sum(-1)}
    res = pyro_models.fit("linear_regression", data, SVIConfig(num_steps=200, batch_size=64),
                          device="cuda", seed=0, progress=False)
    assert res.data["x"].is_cuda
    assert all(p.is_cuda for p in res.guide.parameters())
    assert res.predict({"x": x[:5]}, num_samples=10)["y"].shape == (10, 5)


def test_nuts_on_cuda():
    data = {"y": [28.0, 8, -3, 7, -1, 1, 18, 12], "sigma": [15.0, 10, 16, 11, 9, 11, 10, 18]}
    res = pyro_models.fit("eight_schools", data, MCMCConfig(num_chains=2, num_warmup=100, num_samples=100),
                          device="cuda", seed=0, progress=False)
    assert res.samples()["mu"].shape == (2, 100)
    res.to_inference_data()
