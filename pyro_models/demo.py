"""A runnable tour of pyro-models that writes a self-contained HTML + Markdown report.

Four analyses, each through the public API only (``pyro_models.fit``, ``models.get``,
``MCMCConfig``, ``SVIConfig``, ``FitResult``, ``evaluation.report``):

1. a Bayesian A/B test (``beta_binomial``, NUTS) checked against its closed form;
2. eight schools, non-centred vs centred (``eight_schools_noncentered`` /
   ``eight_schools_centered``, NUTS): summary table, divergences, trace and funnel plots;
3. a linear regression with a 90% credible band of the mean and a 90% posterior predictive
   band (``linear_regression``, NUTS);
4. a Bayesian neural network on one-dimensional heteroscedastic data with a gap, fitted with
   NUTS, mean-field VI and a deep ensemble and compared on held-out data by
   :func:`pyro_models.evaluation.report.report` (its own page, linked from the report).

Run it with::

    python -m pyro_models.demo --out demo-report            # about 2-3 minutes on 2 CPU cores
    python -m pyro_models.demo --out demo-report --quick    # small budget, for smoke tests

The report folder holds ``index.html`` and ``report.md`` (the same content), the PNG
figures they link to, and the self-contained comparison page ``bnn_comparison.html``; nothing
is fetched from the network when a page is opened.

Examples
--------
>>> from pyro_models.demo import build_report
>>> index = build_report("demo-report", quick=True)  # doctest: +SKIP
>>> index.name  # doctest: +SKIP
'index.html'
"""

from __future__ import annotations

import argparse
import html
import math
import multiprocessing
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure

from . import __version__, models
from .evaluation.report import report as comparison_report
from .inference import DivergenceWarning, FitResult, MCMCConfig, SVIConfig, fit
from .inference import arviz_bridge
from .models.hierarchical import EIGHT_SCHOOLS_DATA

__all__ = ["main", "build_report", "AB_DATA", "REGRESSION_TRUTH", "BNN_COMPARISON_PAGE"]

#: Built-in A/B counts: variant A first, then B.
AB_DATA: dict[str, list[int]] = {"trials": [1000, 1000], "successes": [112, 135]}

#: Values used to simulate the regression data (``y = weight * x + bias + Normal(0, sigma)``).
REGRESSION_TRUTH: dict[str, float] = {"bias": -0.4, "weight": 0.7, "sigma": 0.5}
_REGRESSION_N = 60
_REGRESSION_X_RANGE = (-3.0, 3.0)
# The data are part of the demo, not of the run: they stay fixed whatever ``--seed`` says, so
# reports made with different seeds differ only by Monte Carlo noise.
_REGRESSION_DATA_SEED = 20240

#: 1-D data for the network: y = sin(2x) + Normal(0, 0.1 + 0.2|x|); training inputs with a
#: gap, test inputs over a wider range (in-between and beyond the data).
_BNN_TRAIN_N, _BNN_TEST_N = 100, 200
_BNN_TRAIN_RANGE = (0.5, 2.0)  # |x| in this range: two clusters, a gap around 0
_BNN_TEST_RANGE = (-3.0, 3.0)
_BNN_DATA_SEED = 20241
_BNN_HIDDEN = 10
#: File name of the BNN comparison page inside the report folder.
BNN_COMPARISON_PAGE = "bnn_comparison.html"

_NUM_CHAINS = 4
_EXACT_DRAWS = 100_000  # independent exact-posterior draws for the A/B reference column
_T = TypeVar("_T")


# ============================================================================ budgets
@dataclass(frozen=True)
class _Budget:
    """Warmup and kept draws per chain for each analysis, all with 4 chains."""

    ab: tuple[int, int]
    schools: tuple[int, int]
    regression: tuple[int, int]
    # The network: NUTS (chains, warmup, draws, max tree depth); Adam steps of the mean-field
    # guide and of the ensemble (its M members are M vectorised particles: dearer per step);
    # ensemble members.
    bnn_nuts: tuple[int, int, int, int]
    bnn_svi_steps: int
    bnn_ensemble_steps: int
    bnn_members: int
    # Only the quick mode lowers it: the centred model's funnel makes early warmup build
    # deep (up to 2**10-step) trajectories, which dominate a smoke run's time.
    schools_max_tree_depth: int = 10

    def config(self, which: str) -> MCMCConfig:
        warmup, draws = getattr(self, which)
        extra = {"max_tree_depth": self.schools_max_tree_depth} if which == "schools" else {}
        # jit_compile: tracing the potential energy roughly halves NUTS time for these small
        # models (measured: eight schools centred 63 s -> 33 s at 4 x 300 iterations).
        return MCMCConfig(num_chains=_NUM_CHAINS, num_warmup=warmup, num_samples=draws,
                          jit_compile=True, **extra)

    def bnn_mcmc(self) -> MCMCConfig:
        chains, warmup, draws, depth = self.bnn_nuts
        # A capped tree depth: a network's posterior asks for long trajectories, and each
        # leapfrog step is a pass over the data; jit_compile traces that pass once.
        return MCMCConfig(num_chains=chains, num_warmup=warmup, num_samples=draws, max_tree_depth=depth,
                          jit_compile=True)

    def bnn_svi(self, steps: int) -> SVIConfig:
        return SVIConfig(num_steps=steps, lr=0.01, num_posterior_samples=400)


# The network's NUTS budget is the demo's largest single cost after the centred eight schools
# (measured, 2 chains x 300 iterations at depth 5: about 25 s of CPU); depth 5 caps a
# trajectory at 31 leapfrog steps.
_FULL = _Budget(ab=(1000, 1000), schools=(1000, 1000), regression=(1000, 1000),
                bnn_nuts=(2, 150, 150, 5), bnn_svi_steps=3000, bnn_ensemble_steps=2000, bnn_members=5)
_QUICK = _Budget(ab=(150, 150), schools=(150, 150), regression=(150, 150),
                 bnn_nuts=(1, 60, 60, 4), bnn_svi_steps=300, bnn_ensemble_steps=300, bnn_members=3,
                 schools_max_tree_depth=6)


# ============================================================================ warnings
def _reported_warnings() -> tuple[type[Warning], ...]:
    """Warning classes whose content the report states itself (so they are recorded, not printed)."""
    try:  # PSIS k-hat after SVI, shown in the comparison page's diagnostics table
        from .evaluation.diagnostics import PSISWarning
    except ImportError:  # pragma: no cover - a build without the diagnostics module
        return (DivergenceWarning,)
    return (DivergenceWarning, PSISWarning)


def _fit_recording_divergences(model: Any, data: dict[str, Any], config: MCMCConfig | SVIConfig, *,
                               seed: int, progress: bool, guide: Any = None) -> tuple[FitResult, list[str]]:
    """``fit`` with ``DivergenceWarning`` (and SVI's ``PSISWarning``) recorded instead of printed.

    The demo reports divergence counts itself (for the centred model they are the point of
    the section), and the comparison page shows each SVI fit's PSIS k-hat, so the warning
    text would only clutter the output. Every other warning is re-issued unchanged
    afterwards, so nothing else is hidden.

    Returns
    -------
    (FitResult, list of str)
        The result and the messages of the recorded warnings it raised.
    """
    recorded = _reported_warnings()
    extra = {} if guide is None else {"guide": guide}
    with warnings.catch_warnings(record=True) as caught:
        # "always": record every such warning, even a repeat of an earlier message.
        for category in recorded:
            warnings.simplefilter("always", category)
        result = fit(model, data, config, seed=seed, progress=progress, **extra)
    diverging = []
    for w in caught:
        if issubclass(w.category, recorded):
            diverging.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return result, diverging


# ============================================================================ report
_INLINE_CODE = re.compile(r"`([^`]+)`")


@dataclass
class _Report:
    """An ordered list of blocks rendered to Markdown and to standalone HTML.

    Each section writes its own ``_Report``; the parts are joined in reading order at the end,
    whatever order they were computed in.
    """

    blocks: list[tuple[Any, ...]] = field(default_factory=list)

    def extend(self, other: _Report) -> None:
        self.blocks.extend(other.blocks)

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: Sequence[str]) -> None:
        self.blocks.append(("ul", list(items)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.blocks.append(("table", list(header), [list(r) for r in rows]))

    def figure(self, filename: str, alt: str, caption: str) -> None:
        self.blocks.append(("img", filename, alt, caption))

    def link(self, href: str, text: str, after: str = "") -> None:
        """A paragraph made of a link to a file in the report folder, then ``after``."""
        self.blocks.append(("a", href, text, after))

    # ---------------------------------------------------------------- Markdown
    def to_markdown(self, title: str) -> str:
        out = [f"# {title}", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "h2":
                out += [f"## {block[1]}", ""]
            elif kind == "p":
                out += [block[1], ""]
            elif kind == "ul":
                out += [f"- {item}" for item in block[1]] + [""]
            elif kind == "table":
                header, rows = block[1], block[2]
                cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
                out.append("| " + " | ".join(cell(h) for h in header) + " |")
                out.append("|" + "|".join("---" for _ in header) + "|")
                out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
                out.append("")
            elif kind == "img":
                out += [f"![{block[2]}]({block[1]})", "", f"*{block[3]}*", ""]
            elif kind == "a":
                out += [f"[{block[2]}]({block[1]}){block[3]}", ""]
        return "\n".join(out).rstrip() + "\n"

    # ---------------------------------------------------------------- HTML
    @staticmethod
    def _inline(text: str) -> str:
        return _INLINE_CODE.sub(r"<code>\1</code>", html.escape(text, quote=False))

    def to_html(self, title: str) -> str:
        body = [f"<h1>{self._inline(title)}</h1>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "h2":
                body.append(f"<h2>{self._inline(block[1])}</h2>")
            elif kind == "p":
                body.append(f"<p>{self._inline(block[1])}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{self._inline(i)}</li>" for i in block[1]) + "</ul>")
            elif kind == "table":
                header, rows = block[1], block[2]
                head = "".join(f"<th>{self._inline(h)}</th>" for h in header)
                trs = "".join(
                    "<tr>" + "".join(f"<td>{self._inline(str(c))}</td>" for c in row) + "</tr>"
                    for row in rows
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            elif kind == "img":
                src, cap = html.escape(block[1]), self._inline(block[3])
                body.append(f'<figure><img src="{src}" alt="{html.escape(block[2])}">'
                            f"<figcaption>{cap}</figcaption></figure>")
            elif kind == "a":
                body.append(f'<p><a href="{html.escape(block[1])}">{self._inline(block[2])}</a>'
                            f"{self._inline(block[3])}</p>")
        return _HTML_PAGE.format(title=html.escape(title), body="\n".join(body))


_HTML_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
  body {{ font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; line-height: 1.5;
         max-width: 62rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
  h1 {{ border-bottom: 2px solid #ddd; padding-bottom: .3rem; }}
  h2 {{ margin-top: 2.5rem; border-bottom: 1px solid #eee; padding-bottom: .2rem; }}
  table {{ border-collapse: collapse; margin: 1rem 0; font-size: .92rem; }}
  th, td {{ border: 1px solid #ccc; padding: .25rem .6rem; text-align: right; }}
  th {{ background: #f4f4f4; }}
  td:first-child, th:first-child {{ text-align: left; }}
  tbody tr:nth-child(even) {{ background: #fafafa; }}
  code {{ background: #f2f2f2; padding: 0 .2rem; border-radius: 3px; font-size: .9em; }}
  figure {{ margin: 1.5rem 0; }}
  figure img {{ max-width: 100%; height: auto; border: 1px solid #eee; }}
  figcaption {{ color: #555; font-size: .9rem; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""


# ============================================================================ formatting
def _pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}%"


def _pp(x: float, digits: int = 2, sign: bool = True) -> str:
    """A difference of two rates in percentage points (signed unless ``sign=False``)."""
    return f"{100 * x:{'+' if sign else ''}.{digits}f} pp"


def _num(x: float, digits: int = 3) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}"


def _rel(x: float) -> str:
    """A relative change in percent."""
    return f"{100 * x:+.1f}%"


def _interval(lo: float, hi: float, fmt: Callable[[float], str]) -> str:
    return f"[{fmt(lo)}, {fmt(hi)}]"


def _median_interval(q: Sequence[float], fmt: Callable[[float], str]) -> str:
    """``median [lo, hi]`` from the quantiles ``(lo, median, hi)``."""
    return f"{fmt(q[1])} {_interval(q[0], q[2], fmt)}"


def _quantiles(x: torch.Tensor, qs: Sequence[float]) -> list[float]:
    return torch.quantile(x.double().reshape(-1), torch.tensor(list(qs), dtype=torch.float64)).tolist()


def _summary_rows(table: Any, names: Sequence[str] | None = None) -> list[list[str]]:
    """Rows of a ``FitResult.summary()`` table: name, mean, sd, q5, q95, ess_bulk, r_hat."""
    rows = []
    for name, r in table.iterrows():
        if names is not None and name not in names:
            continue
        rows.append([f"`{name}`", _num(r["mean"], 2), _num(r["sd"], 2), _num(r["q5"], 2),
                     _num(r["q95"], 2), _num(r["ess_bulk"], 0), _num(r["r_hat"], 3)])
    return rows


_SUMMARY_HEADER = ["parameter", "mean", "sd", "q5", "q95", "ess_bulk", "r_hat"]


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=110)


# ============================================================================ 1. A/B test
def _ab_section(report: _Report, out_dir: Path, budget: _Budget, seed: int, progress: bool) -> None:
    """Fit the A/B test, compare it with the exact posterior, write ``ab_test.png``.

    Parameters
    ----------
    report : _Report
        Where the section's blocks go.
    out_dir : Path
        Report folder (for the figure).
    budget : _Budget
    seed : int
        Seed of the fit and of the exact-posterior reference draws.
    progress : bool
        Show the sampler's progress bars.
    """
    model = models.get("beta_binomial")()  # Beta(1, 1) priors on both conversion rates
    config = budget.config("ab")
    res, _ = _fit_recording_divergences(model, AB_DATA, config, seed=seed, progress=progress)

    p = res.samples()["p"]  # (chain, draw, 2)
    p_a, p_b = p[..., 0], p[..., 1]
    lift = p_b - p_a
    rel_lift = lift / p_a
    b_wins = (p_b > p_a).double()
    prob_draws = float(b_wins.mean())
    # Monte Carlo standard error of the indicator's mean, from its effective sample size
    # (NUTS draws are correlated, so n draws are worth fewer than n independent ones).
    ess = arviz_bridge.ess_bulk_min(arviz_bridge.to_arviz({"posterior": {"b_beats_a": b_wins.numpy()}}))
    mcse = math.sqrt(prob_draws * (1 - prob_draws) / ess) if 0 < prob_draws < 1 else 0.0
    prob_exact = model.prob_b_beats_a(**AB_DATA)
    z = abs(prob_draws - prob_exact) / mcse if mcse > 0 else float("nan")

    best = p.max(-1, keepdim=True).values
    loss_draws = (best - p).reshape(-1, 2).mean(0).tolist()
    loss_exact = model.expected_loss(**AB_DATA, seed=seed).tolist()
    post = model.exact_posterior(**AB_DATA)["p"]  # Beta(...).to_event(1), event shape (2,)
    post_exact = post.base_dist  # batch shape (2,): one Beta per variant
    lift_q = _quantiles(lift, (0.025, 0.5, 0.975))
    rel_q = _quantiles(rel_lift, (0.025, 0.5, 0.975))
    # Reference quantiles from many independent draws of the exact posterior, on a private RNG
    # stream so the global seed (and thus the rest of the demo) is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        exact = post.sample((_EXACT_DRAWS,))  # (S, 2)
    exact_lift = exact[:, 1] - exact[:, 0]
    lift_q_exact = _quantiles(exact_lift, (0.025, 0.5, 0.975))
    rel_q_exact = _quantiles(exact_lift / exact[:, 0], (0.025, 0.5, 0.975))
    n_draws = lift.numel()

    report.heading("1. Bayesian A/B test (`beta_binomial`, NUTS)")
    trials, succ = AB_DATA["trials"], AB_DATA["successes"]
    report.paragraph(
        f"Variant A converted {succ[0]} of {trials[0]} visitors, variant B {succ[1]} of {trials[1]}. "
        "Each conversion rate gets a uniform Beta(1, 1) prior and a binomial likelihood; "
        f"NUTS draws {_NUM_CHAINS} chains x {config.num_samples} draws "
        f"(after {config.num_warmup} warmup steps) from the joint posterior of (p_A, p_B). "
        "Every quantity below is a plain function of those draws; the exact posterior "
        "Beta(1 + conversions, 1 + failures) gives the reference column."
    )
    report.table(
        ["quantity", f"from {n_draws} NUTS draws", "exact posterior"],
        [
            ["P(B > A)", f"{prob_draws:.4f} (MC s.e. {mcse:.4f})",
             f"{prob_exact:.4f} (closed form, `prob_b_beats_a`)"],
            ["p_A: mean [95% CrI]",
             f"{_pct(float(p_a.mean()))} {_interval(*_quantiles(p_a, (0.025, 0.975)), _pct)}",
             _pct(float(post_exact.mean[0]))],
            ["p_B: mean [95% CrI]",
             f"{_pct(float(p_b.mean()))} {_interval(*_quantiles(p_b, (0.025, 0.975)), _pct)}",
             _pct(float(post_exact.mean[1]))],
            ["lift p_B - p_A: median [95% CrI]", _median_interval(lift_q, _pp),
             f"{_median_interval(lift_q_exact, _pp)} ({_EXACT_DRAWS:,} exact draws)"],
            ["relative lift (p_B - p_A) / p_A: median [95% CrI]", _median_interval(rel_q, _rel),
             f"{_median_interval(rel_q_exact, _rel)} ({_EXACT_DRAWS:,} exact draws)"],
            *(
                [f"expected loss of shipping {v}", _pp(loss_draws[k], 3, False),
                 f"{_pp(loss_exact[k], 3, False)} (`expected_loss`)"]
                for k, v in enumerate("AB")
            ),
        ],
    )
    report.paragraph(
        f"P(B > A) from the NUTS draws: {prob_draws:.4f} (Monte Carlo standard error {mcse:.4f}, "
        f"effective sample size {ess:.0f}); closed form: {prob_exact:.4f}; "
        f"the two differ by {z:.1f} standard errors."
    )
    choice = "B" if loss_draws[1] < loss_draws[0] else "A"
    report.paragraph(
        "Expected loss is the conversion rate given up, on average over the posterior, by "
        f"shipping a variant instead of the better one: shipping {choice} risks "
        f"{_pp(min(loss_draws), 3, False)} while the other risks {_pp(max(loss_draws), 3, False)}. "
        "A common rule ships once the smaller expected loss falls below a threshold of caring "
        "(say 0.05 pp). "
        f"Sampler diagnostics: {res.num_divergences} divergent transitions, {res.fit_time:.1f} s."
    )

    # ---- figure: marginal posteriors (with the exact Beta densities) and the lift
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_p, ax_lift = fig.subplots(1, 2)
    grid = torch.linspace(float(p.min()) * 0.9, float(p.max()) * 1.1, 400, dtype=torch.float64)
    dens = post_exact.log_prob(grid.unsqueeze(-1).to(post_exact.mean.dtype)).exp().double()  # (400, 2)
    for k, (name, color) in enumerate((("A", "tab:blue"), ("B", "tab:orange"))):
        ax_p.hist(100 * p[..., k].reshape(-1).numpy(), bins=50, density=True, alpha=0.45,
                  color=color, label=f"p_{name}: NUTS draws")
        # Density of p in percent: divide by 100 so the curve matches the histogram's scale.
        ax_p.plot(100 * grid.numpy(), dens[:, k].numpy() / 100, color=color, lw=1.8,
                  label=f"p_{name}: exact Beta posterior")
    ax_p.set_xlabel("conversion rate (%)")
    ax_p.set_ylabel("posterior density")
    ax_p.set_title("Posterior conversion rates")
    ax_p.legend(fontsize=8, frameon=False)
    lift_pp = 100 * lift.reshape(-1).numpy()
    ax_lift.hist(lift_pp, bins=60, color="tab:green", alpha=0.6, density=True)
    ax_lift.axvline(0, color="black", lw=1)
    for q in (lift_q[0], lift_q[2]):
        ax_lift.axvline(100 * q, color="tab:green", ls="--", lw=1.2)
    ax_lift.set_xlabel("lift p_B - p_A (percentage points)")
    ax_lift.set_ylabel("posterior density")
    ax_lift.set_title(f"Lift: P(B > A) = {prob_draws:.3f}, dashed = 95% CrI")
    _save(fig, out_dir / "ab_test.png")
    report.figure("ab_test.png", "A/B test posteriors",
                  "Left: posterior of each conversion rate (histogram of NUTS draws, line = exact "
                  "Beta posterior). Right: posterior of the lift p_B - p_A.")


# ============================================================================ 2. eight schools
@dataclass(frozen=True)
class _SchoolsFit:
    """What the report needs from one eight-schools fit (small and picklable)."""

    divergences: int
    per_chain: list[int]
    num_draws: int
    tau_ess: float
    tau_rhat: float
    fit_time: float
    log_tau: np.ndarray  # (chain * draw,)
    theta0: np.ndarray  # (chain * draw,)
    diverging: np.ndarray  # (chain * draw,) bool
    warnings: list[str]  # the recorded DivergenceWarning messages, first clause only


def _schools_fit(name: str, budget: _Budget, seed: int, progress: bool) -> tuple[FitResult, _SchoolsFit]:
    """Fit the registered eight-schools model ``name`` with the schools budget.

    Returns
    -------
    (FitResult, _SchoolsFit)
        The full result, and the few numbers and draws the report uses from it.
    """
    res, div_warnings = _fit_recording_divergences(
        models.get(name)(), EIGHT_SCHOOLS_DATA, budget.config("schools"), seed=seed, progress=progress
    )
    s = res.samples()
    table = res.summary(var_names=["tau"])
    div = res.sample_stats["diverging"]
    info = _SchoolsFit(
        divergences=res.num_divergences,
        per_chain=div.sum(1).tolist(),
        num_draws=div.numel(),
        tau_ess=float(table.loc["tau", "ess_bulk"]),
        tau_rhat=float(table.loc["tau", "r_hat"]),
        fit_time=res.fit_time,
        log_tau=s["tau"].reshape(-1).log().numpy(),
        theta0=s["theta"][..., 0].reshape(-1).numpy(),
        diverging=div.reshape(-1).numpy(),
        warnings=[m.split(":")[0] for m in div_warnings],
    )
    return res, info


def _centred_worker(budget: _Budget, seed: int) -> _SchoolsFit:
    """Fit the centred eight schools in a worker process (module level, so it pickles)."""
    # Two processes share the machine's cores; one thread each avoids oversubscription.
    torch.set_num_threads(1)
    return _schools_fit("eight_schools_centered", budget, seed, progress=False)[1]


def _start_centred(budget: _Budget, seed: int) -> tuple[ProcessPoolExecutor | None, Future | None]:
    """Start the centred fit in the background when a second core is free.

    The engine runs chains one after another, and the centred model is by far the slowest
    fit of the demo (its funnel forces tiny steps), so overlapping it with everything else
    roughly halves the wall time on two cores. ``spawn`` rather than ``fork``: forking a
    process that has already used torch's thread pools can deadlock.
    """
    if (os.cpu_count() or 1) < 2:
        return None, None
    try:
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return pool, pool.submit(_centred_worker, budget, seed)
    except (OSError, NotImplementedError):  # no process support (some sandboxes): run inline
        return None, None


def _centred_result(future: Future | None, budget: _Budget, seed: int, progress: bool) -> _SchoolsFit:
    """The background fit's outcome, or the fit run here when no worker could be started."""
    if future is not None:
        return future.result()
    return _schools_fit("eight_schools_centered", budget, seed, progress)[1]


def _schools_section(report: _Report, out_dir: Path, budget: _Budget, res_nc: FitResult,
                     nc: _SchoolsFit, c: _SchoolsFit) -> None:
    """Write the eight-schools section and its two figures from both fits.

    Parameters
    ----------
    report : _Report
    out_dir : Path
    budget : _Budget
    res_nc : FitResult
        The non-centred fit (summary table and trace plot).
    nc, c : _SchoolsFit
        Non-centred and centred fits, for the divergence comparison and the funnel plot.
    """
    config = budget.config("schools")
    table = res_nc.summary(var_names=["mu", "tau", "theta"])
    report.heading("2. Eight schools: non-centred vs centred (NUTS)")
    report.paragraph(
        "Rubin's eight schools: estimated SAT-coaching effects `y` with known standard errors "
        "`sigma`, partially pooled by `theta[j] ~ Normal(mu, tau)` with `mu ~ Normal(0, 5)` and "
        "`tau ~ HalfCauchy(5)`. The registered model `eight_schools_noncentered` samples "
        "`theta_trans[j] ~ Normal(0, 1)` and records `theta = mu + tau * theta_trans`. "
        f"NUTS: {_NUM_CHAINS} chains x {config.num_samples} draws after {config.num_warmup} "
        f"warmup steps (max tree depth {config.max_tree_depth}); "
        f"non-centred fit took {nc.fit_time:.1f} s."
    )
    y, sigma = EIGHT_SCHOOLS_DATA["y"], EIGHT_SCHOOLS_DATA["sigma"]
    rows = _summary_rows(table)
    for row in rows:  # annotate theta rows with each school's data
        m = re.fullmatch(r"`theta\[(\d+)\]`", row[0])
        if m:
            j = int(m.group(1))
            row[0] = f"`theta[{j}]` (y = {y[j]:g}, sigma = {sigma[j]:g})"
    report.paragraph("Posterior summary of the non-centred fit (`FitResult.summary()`, computed by ArviZ):")
    report.table(_SUMMARY_HEADER, rows)

    report.paragraph(
        f"Divergent transitions after warmup: non-centred {nc.divergences} of {nc.num_draws}, "
        f"centred {c.divergences} of {c.num_draws} (same data, priors, seed and budget)."
    )
    report.table(
        ["parameterisation", "divergences", "per chain", "tau: ess_bulk", "tau: r_hat", "fit time"],
        [
            ["non-centred", str(nc.divergences), ", ".join(map(str, nc.per_chain)),
             _num(nc.tau_ess, 0), _num(nc.tau_rhat, 3), f"{nc.fit_time:.1f} s"],
            ["centred", str(c.divergences), ", ".join(map(str, c.per_chain)),
             _num(c.tau_ess, 0), _num(c.tau_rhat, 3), f"{c.fit_time:.1f} s"],
        ],
    )
    report.paragraph(
        "Why: in the centred form the sampler moves `theta` directly, and as `tau` shrinks "
        "the `theta`s are squeezed into a narrow neck (Neal's funnel) whose curvature no single "
        "step size can follow, so trajectories diverge there and that region is under-explored; "
        "the non-centred form samples the independent standard normals `theta_trans` instead, "
        "which removes the funnel from the space NUTS explores."
    )
    recorded = "; ".join(
        f"{label}: " + ("; ".join(f"\"{w}\"" for w in info.warnings) if info.warnings else "none")
        for label, info in (("non-centred", nc), ("centred", c))
    )
    report.paragraph(
        "The engine's `DivergenceWarning`s were recorded with `warnings.catch_warnings(record=True)` "
        f"instead of printed ({recorded}); the counts above come from `FitResult.num_divergences`."
    )

    idata = res_nc.to_inference_data(predictive=False, log_likelihood=False)
    # ArviZ lays the trace grid out without a layout engine, so titles overlap the tick labels
    # of the row above; matplotlib's constrained layout (an rc setting, so it reaches the figure
    # ArviZ creates, on ArviZ 0.x and 1.x alike) spaces them.
    with matplotlib.rc_context({"figure.constrained_layout.use": True}):
        arviz_bridge.plot_trace(idata, var_names=["mu", "tau", "theta"],
                                path=out_dir / "eight_schools_trace.png")
    report.figure("eight_schools_trace.png", "Eight schools trace plot",
                  "Trace plot of the non-centred fit (ArviZ): marginal densities per chain (left) "
                  "and the chains' draws in order (right) for mu, tau and the eight theta; grey ticks "
                  "mark divergent draws.")

    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, (label, info) in zip(axes, (("non-centred", nc), ("centred", c))):
        ok = ~info.diverging
        ax.scatter(info.theta0[ok], info.log_tau[ok], s=4, alpha=0.35, color="tab:blue",
                   label="draw", rasterized=True)
        ax.scatter(info.theta0[info.diverging], info.log_tau[info.diverging], s=14,
                   color="tab:red", label=f"divergent ({info.divergences})")
        ax.set_title(f"{label}: {info.divergences} divergence{'' if info.divergences == 1 else 's'}")
        ax.set_xlabel("theta[0]")
        ax.legend(loc="lower right", fontsize=8, markerscale=1.5)
    axes[0].set_ylabel("log tau")
    _save(fig, out_dir / "eight_schools_funnel.png")
    report.figure("eight_schools_funnel.png", "Eight schools funnel: centred vs non-centred",
                  "Posterior draws of (theta[0], log tau); red = draws whose trajectory diverged. "
                  "The centred sampler diverges in the funnel's neck (small tau).")


# ============================================================================ 3. regression
def _regression_data() -> dict[str, torch.Tensor]:
    """N = 60 points, x ~ Uniform(-3, 3), y = 0.7 x - 0.4 + Normal(0, 0.5)."""
    g = torch.Generator().manual_seed(_REGRESSION_DATA_SEED)
    lo, hi = _REGRESSION_X_RANGE
    x = lo + (hi - lo) * torch.rand(_REGRESSION_N, 1, generator=g)
    noise = REGRESSION_TRUTH["sigma"] * torch.randn(_REGRESSION_N, generator=g)
    y = REGRESSION_TRUTH["weight"] * x[:, 0] + REGRESSION_TRUTH["bias"] + noise
    return {"x": x, "y": y}


def _regression_section(report: _Report, out_dir: Path, budget: _Budget, seed: int,
                        progress: bool) -> None:
    """Fit the linear regression, tabulate its posterior, write ``regression_bands.png``."""
    data = _regression_data()
    model = models.get("linear_regression")()  # weight ~ N(0, 1), bias ~ N(0, 10), sigma ~ HalfNormal(1)
    config = budget.config("regression")
    res, _ = _fit_recording_divergences(model, data, config, seed=seed, progress=progress)

    lo, hi = _REGRESSION_X_RANGE
    grid = torch.linspace(lo - 0.5, hi + 0.5, 121).unsqueeze(-1)  # (G, 1), G = 121
    s = res.samples()
    bias = s["bias"].reshape(-1, 1)  # (S, 1)
    weight = s["weight"].reshape(-1, 1)  # (S, 1), D = 1
    mean_fn = bias + weight * grid[:, 0]  # (S, G): the regression line of each draw
    pred = res.predict({"x": grid})["y"]  # (S, G): new observations, noise included
    q = torch.tensor([0.05, 0.5, 0.95])
    band_mean = torch.quantile(mean_fn, q, dim=0)
    band_pred = torch.quantile(pred, q, dim=0)
    # Calibration check at the training inputs: ~90% of points should fall in their 90% band.
    pred_train = torch.quantile(res.predict()["y"], torch.tensor([0.05, 0.95]), dim=0)
    inside = ((data["y"] >= pred_train[0]) & (data["y"] <= pred_train[1])).double().mean().item()

    table = res.summary(var_names=["bias", "weight", "sigma"])
    report.heading("3. Linear regression with credible bands (`linear_regression`, NUTS)")
    report.paragraph(
        f"Synthetic data: N = {_REGRESSION_N}, x ~ Uniform({lo:g}, {hi:g}), "
        f"y = {REGRESSION_TRUTH['weight']:g} x {'-' if REGRESSION_TRUTH['bias'] < 0 else '+'} "
        f"{abs(REGRESSION_TRUTH['bias']):g} + "
        f"Normal(0, {REGRESSION_TRUTH['sigma']:g}) noise (generated with a fixed torch.Generator seed). "
        "Model: `weight ~ Normal(0, 1)`, `bias ~ Normal(0, 10)`, unknown noise "
        "`sigma ~ HalfNormal(1)`. "
        f"NUTS: {_NUM_CHAINS} chains x {config.num_samples} draws after {config.num_warmup} warmup "
        f"steps, {res.num_divergences} divergences, {res.fit_time:.1f} s."
    )
    rows = []
    for name, r in table.iterrows():
        key = name.split("[")[0]
        rows.append([f"`{name}`", f"{REGRESSION_TRUTH[key]:g}", _num(r["mean"]), _num(r["sd"]),
                     f"[{_num(r['q5'])}, {_num(r['q95'])}]", _num(r["ess_bulk"], 0), _num(r["r_hat"], 3)])
    report.table(["parameter", "value used to simulate", "posterior mean", "posterior sd",
                  "90% CrI", "ess_bulk", "r_hat"], rows)
    report.paragraph(
        f"{100 * inside:.0f}% of the {_REGRESSION_N} observations lie inside their own 90% "
        "posterior predictive interval (about 90% is expected of a calibrated model)."
    )

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    xg = grid[:, 0].numpy()
    ax.fill_between(xg, band_pred[0].numpy(), band_pred[2].numpy(), color="tab:blue", alpha=0.15,
                    lw=0, label="90% posterior predictive band (new y)")
    ax.fill_between(xg, band_mean[0].numpy(), band_mean[2].numpy(), color="tab:blue", alpha=0.4,
                    lw=0, label="90% credible band of the mean")
    ax.plot(xg, mean_fn.mean(0).numpy(), color="tab:blue", lw=2, label="posterior mean line")
    ax.plot(xg, REGRESSION_TRUTH["weight"] * xg + REGRESSION_TRUTH["bias"], color="black", ls="--",
            lw=1, label="line used to simulate")
    ax.scatter(data["x"][:, 0].numpy(), data["y"].numpy(), s=16, color="black", zorder=3, label="data")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_xlim(xg[0], xg[-1])
    ax.set_title("Bayesian linear regression: posterior mean and 90% bands")
    ax.legend(loc="upper left", fontsize=9, frameon=False)
    _save(fig, out_dir / "regression_bands.png")
    report.figure("regression_bands.png", "Regression with credible and predictive bands",
                  "Dark band: where the regression line lies (uncertainty in bias and weight). "
                  "Light band: where a new observation lies (adds the noise sigma).")


# ============================================================================ 4. BNN comparison
def _bnn_draw(n: int, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """y = sin(2x) + Normal(0, 0.1 + 0.2|x|): the noise grows away from the origin."""
    return torch.sin(2 * x) + (0.1 + 0.2 * x.abs()) * torch.randn(n, generator=g)


def _bnn_data() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Training data in two clusters, 0.5 <= |x| <= 2, and test data on [-3, 3] (fixed seed).

    The test inputs cover the gap between the clusters and both sides beyond them, where a
    posterior should be less certain than near the data.
    """
    g = torch.Generator().manual_seed(_BNN_DATA_SEED)
    lo, hi = _BNN_TRAIN_RANGE
    magnitude = lo + (hi - lo) * torch.rand(_BNN_TRAIN_N, generator=g)
    sign = torch.where(torch.rand(_BNN_TRAIN_N, generator=g) < 0.5, -1.0, 1.0)
    x_train = sign * magnitude
    train = {"x": x_train.unsqueeze(-1), "y": _bnn_draw(_BNN_TRAIN_N, x_train, g)}
    a, b = _BNN_TEST_RANGE
    x_test = a + (b - a) * torch.rand(_BNN_TEST_N, generator=g)
    test = {"x": x_test.unsqueeze(-1), "y": _bnn_draw(_BNN_TEST_N, x_test, g)}
    return train, test


def _bnn_net() -> Any:
    return models.get("bnn_regression")(in_features=1, hidden_sizes=[_BNN_HIDDEN], activation="tanh",
                                        heteroscedastic=True)


def _bnn_section(report: _Report, out_dir: Path, budget: _Budget, seed: int, progress: bool) -> None:
    """Fit one network three ways and write the comparison page ``bnn_comparison.html``.

    Parameters
    ----------
    report : _Report
        Where the section's summary and the link to the page go.
    out_dir : Path
        Report folder (the comparison page is written there).
    budget : _Budget
    seed : int
        Seed of all three fits.
    progress : bool
    """
    train, test = _bnn_data()
    mcmc = budget.bnn_mcmc()
    svi, svi_ens = budget.bnn_svi(budget.bnn_svi_steps), budget.bnn_svi(budget.bnn_ensemble_steps)
    members = budget.bnn_members
    nuts, nuts_warnings = _fit_recording_divergences(_bnn_net(), train, mcmc, seed=seed, progress=progress)
    mean_field, _ = _fit_recording_divergences(_bnn_net(), train, svi, seed=seed, progress=progress,
                                               guide="normal")
    ensemble, _ = _fit_recording_divergences(_bnn_net(), train, svi_ens, seed=seed, progress=progress,
                                             guide=("deep_ensemble", {"members": members}))
    ens_name = f"deep ensemble (M = {members})"
    results = {"NUTS": nuts, "mean-field VI": mean_field, ens_name: ensemble}
    net = _bnn_net()
    num_params = sum(p.numel() for p in net.net.parameters())
    comparison_report(
        results, test, out_dir, train_data=train, filename=BNN_COMPARISON_PAGE,
        title="Bayesian neural network: NUTS vs mean-field VI vs a deep ensemble",
        description=(
            f"One-hidden-layer tanh network ({_BNN_HIDDEN} units, {num_params} weights, each with a "
            "Normal(0, 1) prior) with a heteroscedastic Gaussian likelihood (the network outputs "
            f"the mean and the noise scale). Trained on {_BNN_TRAIN_N} points with "
            f"{_BNN_TRAIN_RANGE[0]:g} <= |x| <= {_BNN_TRAIN_RANGE[1]:g} (a gap around 0), scored "
            f"on {_BNN_TEST_N} test points with x uniform on [{_BNN_TEST_RANGE[0]:g}, "
            f"{_BNN_TEST_RANGE[1]:g}]; y = sin(2x) + Normal(0, 0.1 + 0.2|x|). Written by "
            "python -m pyro_models.demo."
        ),
    )

    chains, warmup, draws, depth = budget.bnn_nuts
    report.heading("4. A Bayesian neural network three ways (`bnn_regression`, NUTS / SVI / ensemble)")
    report.paragraph(
        f"A one-hidden-layer tanh network ({_BNN_HIDDEN} units, {num_params} weights with Normal(0, 1) "
        "priors, heteroscedastic Gaussian likelihood) on one-dimensional data "
        f"y = sin(2x) + Normal(0, 0.1 + 0.2|x|): {_BNN_TRAIN_N} training points in two clusters "
        f"({_BNN_TRAIN_RANGE[0]:g} <= |x| <= {_BNN_TRAIN_RANGE[1]:g}), {_BNN_TEST_N} test points on "
        f"[{_BNN_TEST_RANGE[0]:g}, {_BNN_TEST_RANGE[1]:g}], so the test set probes the gap and "
        "beyond the data. The same model is fitted by NUTS, by SVI with a mean-field Gaussian guide "
        f"(`guide=\"normal\"`) and as a deep ensemble of {members} MAP networks "
        f"(`guide=(\"deep_ensemble\", {{\"members\": {members}}})`), then "
        "`pyro_models.evaluation.report.report(...)` scores all three on the test set with the "
        "same metrics."
    )
    report.table(
        ["method", "fitted with", "fit time", "diagnostic"],
        [
            ["NUTS", f"{chains} chain{'s' if chains != 1 else ''} x {draws} draws after {warmup} warmup "
                     f"steps, max tree depth {depth}",
             f"{nuts.fit_time:.1f} s", f"{nuts.num_divergences} divergences"],
            ["mean-field VI", f"{svi.num_steps} Adam steps (lr {svi.lr:g})", f"{mean_field.fit_time:.1f} s",
             f"PSIS k-hat {_num(_khat(mean_field), 2)}"],
            [ens_name, f"{svi_ens.num_steps} Adam steps (lr {svi_ens.lr:g}), members trained as one batch",
             f"{ensemble.fit_time:.1f} s", "point estimates: no k-hat"],
        ],
    )
    report.link(
        BNN_COMPARISON_PAGE, "Open the comparison page",
        " (one self-contained file): RMSE, NLL, CRPS, interval coverage and calibration error per "
        "method, calibration and coverage curves, predictive bands, uncertainty against distance "
        "from the training data, and the NUTS trace and rank plots."
    )
    khat = _khat(mean_field)
    if math.isnan(khat):
        verdict = " (not computed for this fit)"
    elif khat > 0.7:
        verdict = ", above 0.7: the factorised Gaussian misses much of the posterior's mass"
    else:
        verdict = ", at most 0.7: the guide covers the posterior acceptably"
    report.paragraph(
        "What to look for: near the training clusters the methods should agree; in the gap and "
        "beyond |x| = 2 the epistemic part of the predictive spread should grow (the page plots it "
        "against the distance to the nearest training input). A mean-field guide is known to "
        "understate that in-between uncertainty; its PSIS k-hat here is "
        f"{_num(khat, 2)}{verdict}. A network's posterior has many equivalent modes (hidden "
        "units can be permuted, tanh units flipped in sign), so chains that settle in different "
        "modes give a large R-hat on individual weights even when their predictions agree: judge "
        "NUTS here by the predictive metrics and the log-density trace."
    )
    if nuts_warnings:
        report.paragraph(
            f"NUTS with this short budget reported: \"{nuts_warnings[0].split(':')[0]}\"; the page's "
            "R-hat, bulk ESS and rank plots show how far the chains are from mixing."
        )


def _khat(result: FitResult) -> float:
    khat = getattr(result, "psis_khat", None)
    return float("nan") if khat is None else float(khat)


# ============================================================================ driver
def _timed(label: str, fn: Callable[[], _T]) -> _T:
    print(label, flush=True)
    start = time.perf_counter()
    out = fn()
    print(f"      done in {time.perf_counter() - start:.1f} s", flush=True)
    return out


def build_report(out_dir: str | os.PathLike[str], *, quick: bool = False, seed: int = 0) -> Path:
    """Run the four analyses and write the report folder.

    Parameters
    ----------
    out_dir : str or path-like
        Folder to write (created if missing); existing files of the same names are replaced.
    quick : bool
        Small sampling budgets (4 chains x 150 + 150 iterations; for the network one chain
        and 300 SVI steps) for smoke tests; the numbers are then rougher but every section and
        figure is produced.
    seed : int
        Base seed of the samplers (each analysis derives its own). The regression data set
        is fixed and does not depend on it.

    Returns
    -------
    Path
        ``out_dir/index.html``; ``report.md``, the PNG figures and the self-contained
        comparison page ``bnn_comparison.html`` sit next to it.

    Raises
    ------
    ValueError
        If ``seed`` is negative.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    budget = _QUICK if quick else _FULL
    progress = sys.stdout.isatty()
    start = time.perf_counter()

    head, ab, schools, regression, bnn = _Report(), _Report(), _Report(), _Report(), _Report()
    import arviz
    import pyro

    head.paragraph(
        f"Mode: {'quick (smoke-test budget)' if quick else 'full'}; seed {seed}; "
        f"pyro-models {__version__}, Pyro {pyro.__version__}, PyTorch {torch.__version__}, "
        f"ArviZ {arviz.__version__}. Reproduce with "
        f"`python -m pyro_models.demo --out {os.fspath(out_dir)}{' --quick' if quick else ''} --seed {seed}`."
    )
    # The centred eight-schools fit is the slowest; it starts first, in the background, and
    # its section is written last, after the regression, so nothing waits for it needlessly.
    pool, centred = _start_centred(budget, seed + 1)
    where = "in a background process" if centred is not None else "after the regression"
    try:
        _timed("[1/4] A/B test (beta_binomial, NUTS) ...",
               lambda: _ab_section(ab, out, budget, seed, progress))
        res_nc, nc = _timed(f"[2/4] Eight schools, non-centred (NUTS; the centred fit runs {where}) ...",
                            lambda: _schools_fit("eight_schools_noncentered", budget, seed + 1, progress))
        _timed("[3/4] Linear regression with credible bands (NUTS) ...",
               lambda: _regression_section(regression, out, budget, seed + 2, progress))
        _timed("[4/4] Bayesian neural net: NUTS, mean-field VI, deep ensemble ...",
               lambda: _bnn_section(bnn, out, budget, seed + 3, progress))
        step = "collecting the background fit" if centred is not None else "fitting"
        c = _timed(f"      eight schools, centred: {step} ...",
                   lambda: _centred_result(centred, budget, seed + 1, progress))
        _schools_section(schools, out, budget, res_nc, nc, c)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    report = _Report()
    for part in (head, ab, schools, regression, bnn):
        report.extend(part)
    report.paragraph(f"Total run time: {time.perf_counter() - start:.0f} s.")
    title = "pyro-models demo report"
    (out / "report.md").write_text(report.to_markdown(title), encoding="utf-8")
    index = out / "index.html"
    index.write_text(report.to_html(title), encoding="utf-8")
    return index


def main(argv: list[str] | None = None) -> Path:
    """Command-line entry point: ``python -m pyro_models.demo --out DIR [--quick] [--seed N]``.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    Path
        The written ``index.html``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pyro_models.demo",
        description="Run the pyro-models demo (A/B test, eight schools, regression, a Bayesian "
                    "neural network three ways) and write "
                    "an HTML + Markdown report with figures.",
    )
    parser.add_argument("--out", default="demo-report", help="report folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="small sampling budget (smoke test)")
    parser.add_argument("--seed", type=int, default=0, help="base random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    index = build_report(args.out, quick=args.quick, seed=args.seed)
    print(f"Report written to {index.resolve()}")
    return index


if __name__ == "__main__":
    main()
