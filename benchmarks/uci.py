"""The UCI regression benchmark: any registered model + guide/engine on the standard splits.

Run (all data sets, every preset method, 20 splits; protein 5)::

    .venv/bin/python benchmarks/uci.py --out benchmarks/uci-results

Quick check (2 splits of the small sets, short budgets)::

    .venv/bin/python benchmarks/uci.py --quick --out /tmp/uci-quick

Any registered model with any guide or engine::

    .venv/bin/python benchmarks/uci.py --datasets yacht --method bnn_regression:lowrank_mvn \\
        --method gp_regression:delta --method bnn_regression:nuts

Protocol (Hernández-Lobato & Adams 2015; Gal & Ghahramani 2016; Lakshminarayanan et al. 2017):
the fixed 90/10 train/test splits in ``../shared/data/uci`` (20 per data set, 5 for protein);
one hidden layer of 50 units (100 for protein); inputs and targets standardised with the
training split's statistics; every hyperparameter fixed in advance (nothing is tuned on
a test split); test RMSE of the predictive mean and average test log-likelihood of the
predictive distribution, both on the original target scale; mean and standard error over
splits.

The test log-likelihood is ``log (1/S) sum_s p(y* | draw s)`` computed from the model's own
pointwise log-likelihood (``FitResult.log_likelihood``) or, for models that predict through
their training data (Gaussian processes), from their per-draw Gaussian predictive
(``loc``/``scale`` prediction sites). Results are written per split as JSON, so an
interrupted run resumes where it stopped; ``--table`` prints the Markdown table from them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "uci"

DATASETS = {
    "boston": "bostonHousing",
    "concrete": "concrete",
    "energy": "energy",
    "kin8nm": "kin8nm",
    "naval": "naval-propulsion-plant",
    "power": "power-plant",
    "protein": "protein-tertiary-structure",
    "wine": "wine-quality-red",
    "yacht": "yacht",
}

# Published test log-likelihood and RMSE, mean ± the error the paper reports, per data set:
# PBP (Hernández-Lobato & Adams 2015, Table 3), MC dropout (Gal & Ghahramani 2016, Table 1),
# deep ensembles (Lakshminarayanan et al. 2017, Table 1). Same splits and network size.
PUBLISHED_LL = {
    "boston": {"PBP": (-2.57, 0.09), "MC dropout": (-2.46, 0.25), "Deep ensembles": (-2.41, 0.25)},
    "concrete": {"PBP": (-3.16, 0.02), "MC dropout": (-3.04, 0.09), "Deep ensembles": (-3.06, 0.18)},
    "energy": {"PBP": (-2.04, 0.02), "MC dropout": (-1.99, 0.09), "Deep ensembles": (-1.38, 0.22)},
    "kin8nm": {"PBP": (0.90, 0.01), "MC dropout": (0.95, 0.03), "Deep ensembles": (1.20, 0.02)},
    "naval": {"PBP": (3.73, 0.01), "MC dropout": (3.80, 0.05), "Deep ensembles": (5.63, 0.05)},
    "power": {"PBP": (-2.84, 0.01), "MC dropout": (-2.80, 0.05), "Deep ensembles": (-2.79, 0.04)},
    "protein": {"PBP": (-2.97, 0.00), "MC dropout": (-2.89, 0.01), "Deep ensembles": (-2.83, 0.02)},
    "wine": {"PBP": (-0.97, 0.01), "MC dropout": (-0.93, 0.06), "Deep ensembles": (-0.94, 0.12)},
    "yacht": {"PBP": (-1.63, 0.02), "MC dropout": (-1.55, 0.12), "Deep ensembles": (-1.18, 0.21)},
}
PUBLISHED_RMSE = {
    "boston": {"PBP": (3.01, 0.18), "MC dropout": (2.97, 0.85), "Deep ensembles": (3.28, 1.00)},
    "concrete": {"PBP": (5.67, 0.09), "MC dropout": (5.23, 0.53), "Deep ensembles": (6.03, 0.58)},
    "energy": {"PBP": (1.80, 0.05), "MC dropout": (1.66, 0.19), "Deep ensembles": (2.09, 0.29)},
    "kin8nm": {"PBP": (0.10, 0.00), "MC dropout": (0.10, 0.00), "Deep ensembles": (0.09, 0.00)},
    "naval": {"PBP": (0.01, 0.00), "MC dropout": (0.01, 0.00), "Deep ensembles": (0.00, 0.00)},
    "power": {"PBP": (4.12, 0.03), "MC dropout": (4.02, 0.18), "Deep ensembles": (4.11, 0.17)},
    "protein": {"PBP": (4.73, 0.01), "MC dropout": (4.36, 0.04), "Deep ensembles": (4.71, 0.06)},
    "wine": {"PBP": (0.64, 0.01), "MC dropout": (0.62, 0.04), "Deep ensembles": (0.64, 0.04)},
    "yacht": {"PBP": (1.02, 0.05), "MC dropout": (1.11, 0.38), "Deep ensembles": (1.58, 0.48)},
}


# ---------------------------------------------------------------------------------------- data
@dataclass
class Split:
    dataset: str
    index: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_hidden: int


def num_splits(root: Path, dataset: str) -> int:
    return int((root / DATASETS[dataset] / "n_splits.txt").read_text().split()[0])


def load_split(root: Path, dataset: str, index: int) -> Split:
    """One of the standard train/test splits (0-based row indices in the published files)."""
    d = root / DATASETS[dataset]
    if not d.is_dir():
        raise FileNotFoundError(f"{d} not found: pass --data pointing at the UCI folder of ../shared/data")
    data = np.loadtxt(d / "data.txt")
    feats = np.loadtxt(d / "index_features.txt", dtype=int).reshape(-1)
    target = int(np.loadtxt(d / "index_target.txt", dtype=int))
    tr = np.loadtxt(d / f"index_train_{index}.txt", dtype=int)
    te = np.loadtxt(d / f"index_test_{index}.txt", dtype=int)
    n_hidden = int((d / "n_hidden.txt").read_text().split()[0])
    x, y = data[:, feats], data[:, target]
    return Split(dataset, index, x[tr], y[tr], x[te], y[te], n_hidden)


# ---------------------------------------------------------------------------------------- methods
@dataclass
class Method:
    """A registered model fitted with a guide (SVI) or NUTS; ``name`` labels the table row."""

    name: str
    model: str
    guide: str | None  # None: NUTS
    guide_options: dict[str, Any] = field(default_factory=dict)
    max_train: int | None = None  # skip data sets larger than this (NUTS, exact GP)
    model_options: dict[str, Any] = field(default_factory=dict)  # e.g. heteroscedastic=True

    def label(self) -> str:
        return self.name


def parse_method(spec: str) -> Method:
    """``model:guide`` or ``model:nuts`` (a registered model and a registered guide)."""
    if spec in PRESETS:
        return PRESETS[spec]
    if ":" not in spec:
        raise SystemExit(f"--method must be a preset {sorted(PRESETS)} or model:guide / model:nuts, got {spec!r}")
    model, guide = spec.split(":", 1)
    return Method(spec, model, None if guide == "nuts" else guide)


PRESETS = {
    "mfvi": Method("mfvi", "bnn_regression", "normal"),
    "lowrank": Method("lowrank", "bnn_regression", "lowrank_mvn", {"rank": 10}),
    "nuts": Method("nuts", "bnn_regression", None, max_train=1500),
    "gp": Method("gp", "gp_regression", "delta", max_train=1500),
    # Lakshminarayanan et al.'s recipe without adversarial training: 5 MAP nets started from
    # the net's default initialisation, each predicting a mean and a noise scale
    # (heteroscedastic), mixed at prediction.
    "ensemble": Method("ensemble", "bnn_regression", "deep_ensemble", {"members": 5, "init_loc": "net"},
                       model_options={"heteroscedastic": True}),
}
DEFAULT_METHODS = ("mfvi", "lowrank", "nuts", "gp", "ensemble")


def model_hparams(method: Method, split: Split) -> dict[str, Any]:
    d = split.x_train.shape[1]
    if method.model.startswith("bnn"):
        return {"in_features": d, "hidden_sizes": [split.n_hidden], "out_features": 1, **method.model_options}
    if "gp" in method.model:
        return {"kernel": "matern52", "ard": True}
    return {}


def config_for(method: Method, n_train: int, quick: bool):
    """Fixed budgets chosen before looking at any test split (same for every data set)."""
    from pyro_models import MCMCConfig, SVIConfig

    if method.guide is None:
        w, s = (100, 100) if quick else (500, 500)
        return MCMCConfig(num_chains=1, num_warmup=w, num_samples=s, max_tree_depth=8, jit_compile=True)
    if method.model.startswith("gp"):
        return SVIConfig(num_steps=100 if quick else 1000, lr=0.05, num_posterior_samples=1)
    batch = None if n_train <= 2000 else 256
    steps = 500 if quick else (4000 if batch is None else 8000)
    return SVIConfig(num_steps=steps, lr=0.01, batch_size=batch, lr_schedule="cosine", lr_final_factor=0.05,
                     num_posterior_samples=200)


def _logmeanexp(a, dim: int = 0):
    import torch

    return torch.logsumexp(a, dim) - math.log(a.shape[dim])


def evaluate(res, split: Split, x_test, y_std: float, y_mean: float) -> dict[str, float]:
    """Test RMSE and log-likelihood on the original target scale, for any registered model.

    ``log_likelihood`` gives ``log p(y*_i | draw s)`` on the standardised scale (for an exact
    GP it conditions on the training data); the predictive density is its mean over draws,
    and the change of scale adds ``-log(y_std)``. The point prediction is the model's
    predictive mean summary when it has one, else the mean of predictive draws.
    """
    import torch

    z = torch.as_tensor((split.y_test - y_mean) / y_std, dtype=torch.float32)
    pred = res.predict({"x": x_test})
    mean = pred.summary["mean"] if "mean" in pred.summary else pred["y"].mean(0)
    ll_std = _logmeanexp(res.log_likelihood({"x": x_test, "y": z})["y"].double())
    y_true = torch.as_tensor(split.y_test)
    rmse = float(((mean.double() * y_std + y_mean - y_true) ** 2).mean().sqrt())
    ll_point = ll_std - math.log(y_std)
    seen = torch.as_tensor(seen_in_training(split))
    out = {"rmse": rmse, "ll": float(ll_point.mean()), "n_test": len(seen), "n_seen": int(seen.sum())}
    if not seen.all():
        out["ll_unseen"] = float(ll_point[~seen].mean())
    return out


def seen_in_training(split: Split) -> np.ndarray:
    """Which test rows repeat a training row exactly (inputs and target).

    Some UCI files hold duplicate rows (wine-red: 240 of its 1599 rows repeat another), and
    the standard splits put copies on both sides (27% of wine's test rows on average). A
    model that interpolates its training data scores those rows near-perfectly, so the
    table also reports the log-likelihood on the unseen rows only.
    """
    train = {tuple(r) for r in np.column_stack([split.x_train, split.y_train]).tolist()}
    return np.array([tuple(r) in train for r in np.column_stack([split.x_test, split.y_test]).tolist()])


def run_one(method: Method, root: str, dataset: str, index: int, quick: bool, seed: int) -> dict[str, Any]:
    import warnings

    import torch

    import pyro_models

    torch.set_num_threads(1)
    split = load_split(Path(root), dataset, index)
    xm, xs = split.x_train.mean(0), split.x_train.std(0)
    xs[xs == 0] = 1.0
    ym, ys = float(split.y_train.mean()), float(split.y_train.std())
    x_train = torch.tensor((split.x_train - xm) / xs, dtype=torch.float32)
    y_train = torch.tensor((split.y_train - ym) / ys, dtype=torch.float32)
    x_test = torch.tensor((split.x_test - xm) / xs, dtype=torch.float32)
    model = pyro_models.models.get(method.model)(**model_hparams(method, split))
    config = config_for(method, len(y_train), quick)
    kwargs = {} if method.guide is None else {"guide": (method.guide, method.guide_options)}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # divergence counts are recorded below instead
        res = pyro_models.fit(model, {"x": x_train, "y": y_train}, config, seed=seed + index, progress=False, **kwargs)
    fit_time = time.perf_counter() - t0
    out = evaluate(res, split, x_test, ys, ym)
    out.update(dataset=dataset, split=index, method=method.name, fit_time=fit_time, n_train=len(y_train),
               divergences=res.num_divergences if res.engine == "mcmc" else None, quick=quick)
    return out


# ---------------------------------------------------------------------------------------- table
def summarise(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        ll = np.array([r["ll"] for r in rs])
        rmse = np.array([r["rmse"] for r in rs])
        se = lambda a: float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")  # noqa: E731
        out[key] = {"ll": float(ll.mean()), "ll_se": se(ll), "rmse": float(rmse.mean()), "rmse_se": se(rmse),
                    "n": len(rs), "time": float(np.mean([r["fit_time"] for r in rs]))}
        if all("ll_unseen" in r for r in rs):
            unseen = np.array([r["ll_unseen"] for r in rs])
            out[key].update(ll_unseen=float(unseen.mean()), ll_unseen_se=se(unseen),
                            seen_frac=float(np.mean([r["n_seen"] / r["n_test"] for r in rs])))
    return out


def markdown_table(records: list[dict[str, Any]]) -> str:
    summ = summarise(records)
    datasets = [d for d in DATASETS if any(k[0] == d for k in summ)]
    methods = list(dict.fromkeys(r["method"] for r in records))
    pub = ["PBP", "MC dropout", "Deep ensembles"]
    lines = ["Test log-likelihood (higher is better), mean ± s.e. over splits (n = splits run):", "",
             "| data set | " + " | ".join(methods + pub) + " | best ours − best published |",
             "|---" * (len(methods) + len(pub) + 2) + "|"]
    wins = 0
    for d in datasets:
        cells, ours = [], []
        for m in methods:
            s = summ.get((d, m))
            if s is None:
                cells.append("—")
                continue
            cells.append(f"{s['ll']:.2f} ± {s['ll_se']:.2f} (n={s['n']})")
            ours.append(s["ll"])
        best_pub = max(PUBLISHED_LL[d][p][0] for p in pub)
        cells += [f"{PUBLISHED_LL[d][p][0]:.2f} ± {PUBLISHED_LL[d][p][1]:.2f}" for p in pub]
        diff = max(ours) - best_pub if ours else float("nan")
        wins += diff >= 0
        lines.append(f"| {d} | " + " | ".join(cells) + f" | {diff:+.2f} |")
    lines += ["", f"Best package method ≥ best published on {wins} of {len(datasets)} data sets.", "",
              "Test RMSE (lower is better), mean ± s.e.:", "",
              "| data set | " + " | ".join(methods + pub) + " |", "|---" * (len(methods) + len(pub) + 1) + "|"]
    for d in datasets:
        cells = []
        for m in methods:
            s = summ.get((d, m))
            cells.append("—" if s is None else f"{s['rmse']:.2f} ± {s['rmse_se']:.2f}")
        cells += [f"{PUBLISHED_RMSE[d][p][0]:.2f} ± {PUBLISHED_RMSE[d][p][1]:.2f}" for p in pub]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    dup = [(d, m) for d in datasets for m in methods if "ll_unseen" in summ.get((d, m), {})
           and summ[(d, m)]["seen_frac"] > 0]
    if dup:
        lines += ["", "Test rows that repeat a training row exactly (duplicates in the UCI file): test "
                  "log-likelihood on all rows and on the unseen rows only:", "",
                  "| data set | method | splits | rows seen in training | ll, all rows | ll, unseen rows |",
                  "|---|---|---|---|---|---|"]
        for d, m in dup:
            s = summ[(d, m)]
            lines.append(f"| {d} | {m} | {s['n']} | {100 * s['seen_frac']:.1f}% | {s['ll']:.2f} ± {s['ll_se']:.2f} "
                         f"| {s['ll_unseen']:.2f} ± {s['ll_unseen_se']:.2f} |")
    lines += ["", "Mean fit time per split (s):", "", "| data set | " + " | ".join(methods) + " |",
              "|---" * (len(methods) + 1) + "|"]
    for d in datasets:
        cells = [("—" if (d, m) not in summ else f"{summ[(d, m)]['time']:.1f}") for m in methods]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("PYRO_MODELS_UCI", str(DEFAULT_DATA)), help="UCI folder")
    p.add_argument("--out", default="uci-results", help="folder for per-split JSON results (resumable)")
    p.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--method", action="append", help=f"preset {sorted(PRESETS)} or model:guide / model:nuts")
    p.add_argument("--splits", type=int, default=None, help="first K splits per data set (default: all)")
    p.add_argument("--quick", action="store_true", help="2 splits of the small sets, short budgets (CI-sized)")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)), help="parallel processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", action="store_true", help="only print the table from --out")
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.table:
        print(markdown_table(load_records(out)))
        return 0
    root = Path(args.data)
    if not root.is_dir():
        print(f"UCI data not found at {root}; pass --data (the uci folder of ../shared/data)", file=sys.stderr)
        return 2
    methods = [parse_method(m) for m in (args.method or DEFAULT_METHODS)]
    datasets = args.datasets
    splits = args.splits
    if args.quick:
        datasets = [d for d in datasets if d in ("boston", "concrete", "energy", "wine", "yacht")] or datasets
        splits = splits or 2
    jobs = []
    for d in datasets:
        n = num_splits(root, d) if splits is None else min(splits, num_splits(root, d))
        n_train = len(np.loadtxt(root / DATASETS[d] / "index_train_0.txt"))
        for m in methods:
            if m.max_train is not None and n_train > m.max_train:
                continue
            for i in range(n):
                path = out / f"{d}__{m.name.replace(':', '-')}__{i:02d}{'__quick' if args.quick else ''}.json"
                if not path.exists():
                    jobs.append((m, d, i, path))
    print(f"{len(jobs)} fits to run ({len(methods)} methods, {len(datasets)} data sets), {args.jobs} processes",
          file=sys.stderr)
    def record(m: Method, d: str, i: int, path: Path, get) -> None:
        try:
            rec = get()
        except Exception as exc:  # one failed fit should not lose the others
            print(f"FAILED {d} split {i} {m.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, path)  # atomic: a killed run never leaves a half-written record
        print(f"{d:>8} {m.name:>10} split {i:2d}: ll {rec['ll']:7.3f} rmse {rec['rmse']:7.3f} "
              f"({rec['fit_time']:.1f}s)", file=sys.stderr, flush=True)

    if args.jobs == 1:
        for m, d, i, path in jobs:
            record(m, d, i, path, lambda: run_one(m, str(root), d, i, args.quick, args.seed))
    else:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {pool.submit(run_one, m, str(root), d, i, args.quick, args.seed): (m, d, i, path)
                       for m, d, i, path in jobs}
            for fut in as_completed(futures):
                m, d, i, path = futures[fut]
                record(m, d, i, path, fut.result)
    print(markdown_table(load_records(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
