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


def test_duplicate_rows_are_found_and_scored_apart(shared_data):
    """Wine-red repeats rows across the standard splits; the record keeps those rows apart."""
    root = shared_data / "uci"
    wine = uci.load_split(root, "wine", 0)
    seen = uci.seen_in_training(wine)
    train_rows = {tuple(r) for r in np.column_stack([wine.x_train, wine.y_train]).tolist()}
    by_hand = [tuple(r) in train_rows for r in np.column_stack([wine.x_test, wine.y_test]).tolist()]
    assert seen.tolist() == by_hand and 0 < seen.sum() < len(seen)
    assert not uci.seen_in_training(uci.load_split(root, "yacht", 0)).any()
    # The unseen-row log-likelihood is the mean over exactly those rows.
    records = [{"dataset": "wine", "method": "m", "split": i, "ll": ll, "rmse": 1.0, "fit_time": 1.0,
                "n_test": 10, "n_seen": 3, "ll_unseen": llu} for i, (ll, llu) in enumerate([(1.0, -1.0), (0.0, -2.0)])]
    s = uci.summarise(records)[("wine", "m")]
    assert s["ll_unseen"] == -1.5 and abs(s["seen_frac"] - 0.3) < 1e-12
    assert "| wine | m | 2 | 30.0% | 0.50 ± 0.50 | -1.50 ± 0.50 |" in uci.markdown_table(records)
