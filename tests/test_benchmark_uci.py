"""The UCI benchmark script: protocol plumbing on one real split (skips without ../shared)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

import pyro_models

_SPEC = importlib.util.spec_from_file_location("uci", Path(__file__).resolve().parents[1] / "benchmarks" / "uci.py")
uci = importlib.util.module_from_spec(_SPEC)
sys.modules["uci"] = uci  # dataclasses look their module up by name
_SPEC.loader.exec_module(uci)


def test_split_files_follow_the_published_protocol(shared_data):
    root = shared_data / "uci"
    split = uci.load_split(root, "yacht", 0)
    assert uci.num_splits(root, "yacht") == 20 and uci.num_splits(root, "protein") == 5
    assert split.x_train.shape == (277, 6) and split.x_test.shape == (31, 6) and split.n_hidden == 50
    assert uci.load_split(root, "protein", 0).n_hidden == 100


def test_test_log_likelihood_is_the_mixture_density_on_the_original_scale(shared_data):
    """evaluate() must equal log mean_s N(y; loc_s * sd + mean, scale_s * sd), computed here by hand."""
    split = uci.load_split(shared_data / "uci", "yacht", 0)
    xm, xs = split.x_train.mean(0), split.x_train.std(0)
    ym, ys = float(split.y_train.mean()), float(split.y_train.std())
    x = torch.tensor((split.x_train - xm) / xs, dtype=torch.float32)
    y = torch.tensor((split.y_train - ym) / ys, dtype=torch.float32)
    xt = torch.tensor((split.x_test - xm) / xs, dtype=torch.float32)
    model = pyro_models.models.get("bnn_regression")(in_features=6, hidden_sizes=[8])
    res = pyro_models.fit(model, {"x": x, "y": y}, pyro_models.SVIConfig(num_steps=200, lr=0.01,
                          num_posterior_samples=50), seed=0, progress=False)
    got = uci.evaluate(res, split, xt, ys, ym)
    pred = res.predict({"x": xt}, return_sites=("loc", "scale"))
    loc = pred["loc"].double().numpy() * ys + ym
    scale = pred["scale"].double().numpy() * ys
    dens = np.exp(-0.5 * ((split.y_test - loc) / scale) ** 2) / (scale * math.sqrt(2 * math.pi))
    assert abs(got["ll"] - np.log(dens.mean(0)).mean()) < 1e-4
    assert abs(got["rmse"] - np.sqrt(((loc.mean(0) - split.y_test) ** 2).mean())) < 1e-4


def test_quick_run_writes_resumable_records(shared_data, tmp_path):
    args = ["--data", str(shared_data / "uci"), "--out", str(tmp_path), "--quick", "--datasets", "yacht",
            "--method", "mfvi", "--splits", "1", "--jobs", "1"]
    assert uci.main(args) == 0
    records = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert len(records) == 1 and records[0]["dataset"] == "yacht" and records[0]["method"] == "mfvi"
    assert math.isfinite(records[0]["ll"]) and records[0]["rmse"] > 0
    table = uci.markdown_table(records)
    assert "| yacht |" in table and "Deep ensembles" in table
