"""Compare draws with a posteriordb reference: |mean - ref mean| / ref sd and sd / ref sd."""

from __future__ import annotations

import re

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist


def eight_schools_noncentered(J, sigma, y=None):
    """Plain Pyro model written outside the package, as a user would (posteriordb priors).

    Shared by the Pyro-kernel reference test (``test_posteriordb.py``) and its batched twin
    (``test_batched_nuts.py``), so both check the very same model.
    """
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", J):
        theta_trans = pyro.sample("theta_trans", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", mu + tau * theta_trans)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def flatten_draws(draws: dict, names: list[str]) -> dict[str, np.ndarray]:
    """Map posteriordb names ``theta[3]`` (1-based) to arrays (chain, draw) from our draws."""
    out = {}
    for ref_name in names:
        m = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", ref_name)
        base, idx = m.group(1), m.group(2)
        arr = np.asarray(draws[base])
        if idx is not None:
            arr = arr[..., int(idx) - 1]
        out[ref_name] = arr
    return out


def compare(draws: dict[str, np.ndarray], reference: dict) -> list[dict]:
    """Per parameter: ref/ours mean and sd, standardised error, sd ratio, R-hat, bulk ESS."""
    rows = []
    for name, ref in reference["reference"]["params"].items():
        x = draws[name]  # (chain, draw)
        rows.append({
            "name": name,
            "z": abs(x.mean() - ref["mean"]) / ref["sd"],
            "sd_ratio": x.std(ddof=1) / ref["sd"],
            "rhat": float(az.rhat(x)),
            "ess": float(az.ess(x)),
        })
    return rows


def assert_matches(rows: list[dict], *, mean_tol: float = 0.15, sd_band=(0.9, 1.1), rhat_max: float = 1.01):
    bad = [r for r in rows if not (r["z"] < mean_tol and sd_band[0] <= r["sd_ratio"] <= sd_band[1] and r["rhat"] < rhat_max)]
    table = "\n".join(f"{r['name']:>16} z={r['z']:.3f} sd_ratio={r['sd_ratio']:.3f} rhat={r['rhat']:.4f} ess={r['ess']:.0f}" for r in rows)
    assert not bad, f"parameters off the reference:\n{table}"
