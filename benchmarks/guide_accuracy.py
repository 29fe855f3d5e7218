"""How close is each guide to the true posterior? A table per guide, reported honestly.

For each target posterior with a trusted reference, every applicable guide is trained with
the same SVI budget and compared parameter by parameter:

- ``|mean err| / ref sd``: how far the guide's posterior mean is from the reference mean, in
  reference standard deviations (max and median over parameters);
- ``sd / ref sd``: the guide's posterior sd over the reference sd (min, median, max): below 1
  is under-dispersion, the well-known failing of mean-field VI, shown rather than hidden.

Targets: the four conjugate models (exact closed form), Bayesian linear regression with known
noise (exact Gaussian; the ``mvn`` guide should be exact up to optimisation and Monte Carlo
error), and, when ``../shared/data/posteriordb`` is present, the posteriordb references for
eight schools (non-centred), kidiq and radon (Stan NUTS reference draws).

Run::

    python benchmarks/guide_accuracy.py                  # full table (about 40 min on one idle core)
    python benchmarks/guide_accuracy.py --quick          # few steps, a smoke run
    python benchmarks/guide_accuracy.py --guides normal,mvn --targets normal_normal

Prints a markdown table (paste into benchmarks/RESULTS.md) and writes ``--json`` records.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch

import pyro_models
from pyro_models import SVIConfig, guides

REPO = Path(__file__).resolve().parents[1]
GUIDES = ("normal", "lowrank_mvn", "mvn", "iaf", "spline", "structured", "laplace", "delta", "swag",
          "deep_ensemble")
NUM_DRAWS = 4000


@dataclass
class Target:
    """A posterior with reference moments: ``reference() -> {param: (mean, sd)}``."""

    name: str
    model: Any
    data: dict[str, Any]
    reference: Callable[[], dict[str, tuple[float, float]]]
    extract: Callable[[dict[str, torch.Tensor]], dict[str, np.ndarray]]
    source: str


def _split(name: str, value: torch.Tensor) -> dict[str, np.ndarray]:
    """Flatten a site's draws ``(S, *shape)`` to per-coordinate arrays named ``site[i]``."""
    v = value.detach().double().reshape(value.shape[0], -1).cpu().numpy()
    if v.shape[1] == 1 and value.dim() == 1:
        return {name: v[:, 0]}
    return {f"{name}[{i + 1}]": v[:, i] for i in range(v.shape[1])}


def _exact_moments(model: Any, data: dict[str, Any]) -> Callable[[], dict[str, tuple[float, float]]]:
    def ref() -> dict[str, tuple[float, float]]:
        out = {}
        for site, d in model.exact_posterior(**data).items():
            mean, sd = d.mean.double().reshape(-1), d.variance.double().sqrt().reshape(-1)
            if mean.numel() == 1 and d.event_shape == torch.Size([]):
                out[site] = (float(mean), float(sd))
            else:
                out.update({f"{site}[{i + 1}]": (float(mean[i]), float(sd[i])) for i in range(mean.numel())})
        return out
    return ref


def _all_sites(draws: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k, v in draws.items():
        out.update(_split(k, v))
    return out


def conjugate_targets() -> list[Target]:
    out = []
    for name in ("beta_binomial", "normal_normal", "gamma_poisson", "dirichlet_multinomial"):
        model = pyro_models.models.get(name)()
        data = model.example_data(seed=0)
        out.append(Target(name, model, data, _exact_moments(model, data), _all_sites, "closed form"))
    return out


def linear_target(correlation: float = 0.0) -> Target:
    model = pyro_models.models.get("linear_regression")(noise_scale=0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 4, generator=g)
    if correlation:
        # Equicorrelated features make the posterior of the weights strongly correlated: where
        # a mean-field guide must under-state the marginal sds.
        cov = torch.full((4, 4), correlation) + (1 - correlation) * torch.eye(4)
        x = x @ torch.linalg.cholesky(cov).T
    y = x @ torch.tensor([1.0, -0.5, 0.25, 0.0]) + 0.3 + 0.5 * torch.randn(100, generator=g)
    data = {"x": x, "y": y}

    def ref() -> dict[str, tuple[float, float]]:
        post = model.exact_joint_posterior(x, y)
        mean, sd = post.mean.double(), post.variance.double().sqrt()
        names = ["bias"] + [f"weight[{i + 1}]" for i in range(4)]
        return {n: (float(m), float(s)) for n, m, s in zip(names, mean, sd)}

    def extract(draws: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return {"bias": draws["bias"].double().numpy(), **_split("weight", draws["weight"])}

    label = "linear_regression (known noise" + (f", feature correlation {correlation})" if correlation else ")")
    return Target(label, model, data, ref, extract, "closed form")


def eight_schools_noncentered(J, sigma, y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", J):
        theta_trans = pyro.sample("theta_trans", dist.Normal(0.0, 1.0))
        pyro.deterministic("theta", mu + tau * theta_trans)
        pyro.sample("y", dist.Normal(mu + tau * theta_trans, sigma), obs=y)


def _posteriordb_dir() -> Path | None:
    env = os.environ.get("PYRO_MODELS_SHARED_DATA")
    for d in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if (d / "posteriordb").is_dir():
            return d / "posteriordb"
    return None


def _ref_moments(ref: dict) -> Callable[[], dict[str, tuple[float, float]]]:
    params = ref["reference"]["params"]
    return lambda: {k: (float(v["mean"]), float(v["sd"])) for k, v in params.items()}


def posteriordb_targets() -> list[Target]:
    root = _posteriordb_dir()
    if root is None:
        print("# ../shared/data/posteriordb not found: posteriordb targets skipped", file=sys.stderr)
        return []
    load = lambda stem: json.loads((root / f"{stem}.json").read_text())  # noqa: E731
    out = []
    ref = load("eight_schools-eight_schools_noncentered")
    d = ref["data"]
    out.append(Target(
        "eight schools (non-centred)", eight_schools_noncentered,
        {"J": d["J"], "sigma": torch.tensor(d["sigma"]), "y": torch.tensor(d["y"])}, _ref_moments(ref),
        lambda s: {"mu": s["mu"].double().numpy(), "tau": s["tau"].double().numpy(), **_split("theta", s["theta"])},
        "posteriordb (Stan NUTS)"))
    ref = load("kidiq-kidscore_momiq")
    d = ref["data"]
    model = pyro_models.models.get("linear_regression")(weight_scale=None, bias_scale=None,
                                                         noise_prior="half_cauchy", noise_prior_scale=2.5)
    out.append(Target(
        "kidiq (flat priors)", model,
        {"x": torch.tensor(d["mom_iq"], dtype=torch.float32).unsqueeze(-1), "y": torch.tensor(d["kid_score"]).float()},
        _ref_moments(ref),
        lambda s: {"beta[1]": s["bias"].double().numpy(), "beta[2]": s["weight"][:, 0].double().numpy(),
                   "sigma": s["sigma"].double().numpy()},
        "posteriordb (Stan NUTS)"))
    ref = load("radon_mn-radon_variable_intercept_noncentered")
    from pyro_models.datasets import load_radon

    out.append(Target(
        "radon (varying intercept, non-centred)", pyro_models.models.get("radon")(), load_radon(),
        _ref_moments(ref),
        lambda s: {"mu_alpha": s["mu_alpha"].double().numpy(), "sigma_alpha": s["sigma_alpha"].double().numpy(),
                   "sigma_y": s["sigma_y"].double().numpy(), "beta": s["beta"].double().numpy(),
                   **_split("alpha", s["alpha"])},
        "posteriordb (Stan NUTS)"))
    return out


def config_for(guide: str, quick: bool) -> SVIConfig:
    steps = 200 if quick else 4000
    # One budget for every guide: Adam with a cosine decay, 4 particles (1 for the point
    # estimates, whose gradient has no Monte Carlo noise).
    particles = 1 if guide in ("delta", "laplace", "swag", "deep_ensemble") or quick else 4
    return SVIConfig(num_steps=steps, lr=0.01 if guide in ("iaf", "spline") else 0.02, lr_schedule="cosine",
                     lr_final_factor=0.05, num_particles=particles,
                     vectorize_particles=particles > 1, num_posterior_samples=NUM_DRAWS, psis_draws=0)


def evaluate(target: Target, guide: str, quick: bool, seed: int) -> dict[str, Any]:
    start = time.perf_counter()
    cfg = config_for(guide, quick)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = pyro_models.fit(target.model, target.data, cfg, guide=guide, seed=seed, progress=False)
            ours = target.extract(res.samples())
    except (ValueError, RuntimeError) as exc:
        try:  # the vectorised ELBO needs a vectorisable model: retry with particles in a loop
            if not cfg.vectorize_particles:
                raise
            import dataclasses
            cfg = dataclasses.replace(cfg, vectorize_particles=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = pyro_models.fit(target.model, target.data, cfg, guide=guide, seed=seed, progress=False)
                ours = target.extract(res.samples())
        except (ValueError, RuntimeError) as exc2:
            return {"target": target.name, "guide": guide, "error": str(exc2 if exc2 is not exc else exc)[:200]}
    ref = target.reference()
    z, ratio = [], []
    for name, (m, s) in ref.items():
        x = ours[name]
        z.append(abs(float(np.mean(x)) - m) / s)
        ratio.append(float(np.std(x, ddof=1)) / s)
    return {"target": target.name, "guide": guide, "source": target.source, "num_params": len(ref),
            "max_abs_z": max(z), "median_abs_z": float(np.median(z)), "min_sd_ratio": min(ratio),
            "median_sd_ratio": float(np.median(ratio)), "max_sd_ratio": max(ratio),
            "seconds": time.perf_counter() - start}


def table(records: list[dict[str, Any]]) -> str:
    lines = ["| target | guide | params | max \\|mean err\\|/sd | median \\|mean err\\|/sd | sd/ref sd min | median | max | fit s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['target']} | {r['guide']} | | refused: {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['target']} | {r['guide']} | {r['num_params']} | {r['max_abs_z']:.3f} | {r['median_abs_z']:.3f} "
            f"| {r['min_sd_ratio']:.2f} | {r['median_sd_ratio']:.2f} | {r['max_sd_ratio']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="200 steps: a smoke run, not a measurement")
    p.add_argument("--guides", default=",".join(GUIDES), help="comma-separated guide names")
    p.add_argument("--targets", default="", help="comma-separated substrings of target names (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the records here")
    args = p.parse_args(argv)
    names = [g for g in args.guides.split(",") if g]
    unknown = sorted(set(names) - set(guides.available()))
    if unknown:
        p.error(f"unknown guides {unknown}; available: {guides.available()}")
    targets = conjugate_targets() + [linear_target(), linear_target(0.95)] + posteriordb_targets()
    if args.targets:
        wanted = [t for t in args.targets.split(",") if t]
        targets = [t for t in targets if any(w in t.name for w in wanted)]
        if not targets:
            p.error(f"no target matches {wanted}")
    torch.set_num_threads(1)
    print(f"# guide accuracy: {len(targets)} targets x {len(names)} guides, {NUM_DRAWS} draws each, "
          f"{'quick' if args.quick else 'full'} budget; {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, pyro {pyro.__version__}, {time.strftime('%Y-%m-%d')}")
    records = []
    for t in targets:
        for g in names:
            reason = guides.incompatibility(g, t.model)
            if reason is not None:
                continue
            r = evaluate(t, g, args.quick, args.seed)
            records.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    print(table(records))
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
