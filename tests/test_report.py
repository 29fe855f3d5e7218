"""The comparison report: one self-contained HTML page, its numbers, and that it renders.

The page's numbers are read back from the metric table's ``data-value`` attributes and compared
with the metric functions called directly on the same posterior draws, and (for the NLL) with
an independent route through the model's own likelihood. The page is rendered in headless
Chromium, which must decode every embedded figure. Chromium is installed from Debian's
``chromium`` package when missing and the tests run as root with apt-get; otherwise the
rendering tests skip (set ``PYRO_MODELS_NO_BROWSER_INSTALL=1`` to never install).
"""

from __future__ import annotations

import base64
import contextlib
import html.parser
import math
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import pyro
import pytest
import torch

import pyro_models
from pyro_models import FitResult, MCMCConfig, SVIConfig
from pyro_models.evaluation import metrics
from pyro_models.evaluation.report import CLASSIFICATION_METRICS, REGRESSION_METRICS, report
from pyro_models.inference import arviz_bridge

NUM_SAMPLES = 200
N_TRAIN, N_TEST = 100, 80
REG_METHODS = ("NUTS", "mean-field VI", "deep ensemble")
CLF_METHODS = ("mean-field VI", "deep ensemble")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ============================================================================ data and fits
def _regression_data(n: int, lo: float, hi: float, seed: int) -> dict[str, torch.Tensor]:
    """1-D heteroscedastic data as in ``bnn_regression.example_data``: sin(2x), noise sd 0.1 + 0.2|x|."""
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(n, 1, generator=g)
    y = torch.sin(2 * x[:, 0]) + (0.1 + 0.2 * x[:, 0].abs()) * torch.randn(n, generator=g)
    return {"x": x, "y": y}


def _quiet_fit(*args, **kwargs) -> FitResult:
    # A tiny NUTS budget warns about divergences / tree depth; those are not under test here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pyro_models.fit(*args, progress=False, **kwargs)


@pytest.fixture(scope="module")
def reg_data() -> tuple[dict, dict]:
    # Test inputs reach past the training range so the distance figure has something to show.
    return _regression_data(N_TRAIN, -2.0, 2.0, seed=0), _regression_data(N_TEST, -2.5, 2.5, seed=1)


@pytest.fixture(scope="module")
def reg_fits(reg_data) -> dict[str, FitResult]:
    train, _ = reg_data
    net = lambda: pyro_models.models.get("bnn_regression")(in_features=1, hidden_sizes=[5], activation="tanh")  # noqa: E731
    svi = SVIConfig(num_steps=300, lr=0.03, num_posterior_samples=NUM_SAMPLES)
    return {
        # One short chain: shallow trees (jit) keep it to seconds; the report must cope with R-hat n/a.
        "NUTS": _quiet_fit(net(), train, MCMCConfig(num_chains=1, num_warmup=100, num_samples=100,
                                                    max_tree_depth=4, jit_compile=True), seed=0),
        "mean-field VI": _quiet_fit(net(), train, svi, guide="normal", seed=0),
        "deep ensemble": _quiet_fit(net(), train, svi, guide=("deep_ensemble", {"members": 4}), seed=0),
    }


@pytest.fixture(scope="module")
def reg_page(reg_fits, reg_data, tmp_path_factory) -> Path:
    train, test = reg_data
    out = tmp_path_factory.mktemp("report-regression")
    return report(reg_fits, test, out, train_data=train, title="BNN regression", num_samples=NUM_SAMPLES)


@pytest.fixture(scope="module")
def clf_data() -> tuple[dict, dict]:
    model = pyro_models.models.get("bnn_classifier")(in_features=2, hidden_sizes=[6], out_features=3)
    return model.example_data(seed=0), model.example_data(seed=1)


@pytest.fixture(scope="module")
def clf_fits(clf_data) -> dict[str, FitResult]:
    train, _ = clf_data
    net = lambda: pyro_models.models.get("bnn_classifier")(in_features=2, hidden_sizes=[6], out_features=3)  # noqa: E731
    svi = SVIConfig(num_steps=300, lr=0.03, num_posterior_samples=NUM_SAMPLES)
    return {
        "mean-field VI": _quiet_fit(net(), train, svi, guide="normal", seed=0),
        "deep ensemble": _quiet_fit(net(), train, svi, guide=("deep_ensemble", {"members": 4}), seed=0),
    }


@pytest.fixture(scope="module")
def clf_page(clf_fits, clf_data, tmp_path_factory) -> Path:
    train, test = clf_data
    out = tmp_path_factory.mktemp("report-classification")
    return report(clf_fits, test, out, train_data=train, title="BNN classifier", num_samples=NUM_SAMPLES)


# ============================================================================ reading the page
class _Tables(html.parser.HTMLParser):
    """Cells of ``<table id=...>``: {table id: {method: {key: (data-value, text)}}}, plus tags seen."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, dict[str, tuple[str, str]]]] = {}
        self.images: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self._table = self._row = self._key = None
        self._value = ""
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
            self.tables.setdefault(self._table, {})
        elif tag == "tr" and self._table is not None and "data-method" in a:
            self._row = a["data-method"]
            self.tables[self._table][self._row] = {}
        elif tag == "td" and self._row is not None:
            self._key = a.get("data-metric") or a.get("data-diagnostic")
            self._value, self._text = a.get("data-value", ""), []
        elif tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "script":
            self.scripts.append(a)

    def handle_data(self, data):
        if self._key is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._key is not None:
            self.tables[self._table][self._row][self._key] = (self._value, "".join(self._text).strip())
            self._key = None
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None


def _parse(page: Path) -> _Tables:
    p = _Tables()
    p.feed(page.read_text(encoding="utf-8"))
    return p


def _metric_values(page: Path) -> dict[str, dict[str, float]]:
    table = _parse(page).tables["metrics"]
    return {m: {k: float(v) for k, (v, _) in row.items()} for m, row in table.items()}


# ============================================================================ headless Chromium
_BROWSERS = ("chromium", "chromium-browser")


def _find_browser() -> str | None:
    return next((p for p in map(shutil.which, _BROWSERS) if p), None)


@contextlib.contextmanager
def _install_lock():
    """One installer at a time across pytest-xdist workers (apt/dpkg hold their own locks and fail)."""
    import fcntl

    with open(Path(tempfile.gettempdir()) / "pyro_models_chromium_install.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _apt_install() -> str:
    """Install Debian's chromium; returns the error output ("" on success)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:  # stale or missing package lists: refresh once and retry
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, timeout=600)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    return "" if proc.returncode == 0 else (proc.stderr or proc.stdout)[-800:]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a headless-capable Chromium, installed with apt-get (as root) when missing."""
    found = _find_browser()
    if found:
        return found
    if os.environ.get("PYRO_MODELS_NO_BROWSER_INSTALL"):
        pytest.skip("chromium is not installed and PYRO_MODELS_NO_BROWSER_INSTALL is set")
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed (install Debian's 'chromium' package, or run as root "
                    "with apt-get available to let this test install it)")
    with _install_lock():
        found = _find_browser()  # another worker may have installed it meanwhile
        if found:
            return found
        try:
            error = _apt_install()
        except (OSError, subprocess.TimeoutExpired) as e:
            error = repr(e)
        found = _find_browser()
    if not found:
        pytest.skip(f"could not install chromium with apt-get: {error}")
    return found


def _chromium(browser: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}",
           # Let the load event (and the page's image check) run before the DOM is dumped.
           "--virtual-time-budget=10000", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc


def _loaded_images(browser: str, page: Path, tmp: Path) -> tuple[int, int]:
    dom = _chromium(browser, tmp, "--dump-dom", page.as_uri()).stdout
    m = re.search(r'<body[^>]*\sdata-loaded-images="(\d+)/(\d+)"', dom)
    assert m, "the page's load handler did not mark <body> (did the page load?): " + dom[:500]
    return int(m[1]), int(m[2])


# ============================================================================ regression
def test_regression_table_has_the_same_metric_columns_for_every_method(reg_page):
    values = _metric_values(reg_page)
    assert list(values) == list(REG_METHODS)  # in the order given
    for method, row in values.items():
        assert list(row) == list(REGRESSION_METRICS), method
        assert all(math.isfinite(v) for v in row.values()), (method, row)


def test_regression_values_match_the_metric_functions(reg_page, reg_fits, reg_data):
    _, test = reg_data
    y = test["y"].double()
    values = _metric_values(reg_page)
    for name, res in reg_fits.items():
        # The same draws the report used: every NUTS draw (100 < NUM_SAMPLES); SVI draws are
        # seeded by the result and the number asked for, so they repeat exactly.
        n = None if res.engine == "mcmc" else NUM_SAMPLES
        pred = res.predict(test, n, return_sites=["y", "loc", "scale"])
        loc, scale = pred["loc"].double(), pred["scale"].double()
        expected = {
            "rmse": metrics.rmse(pred.mean.double(), y),
            "nll": metrics.gaussian_mixture_nll(loc, scale, y),
            "crps": metrics.crps_gaussian_mixture(loc, scale, y),
        }
        cov = metrics.interval_coverage(y, loc=loc, scale=scale, levels=(0.9, 0.95))
        expected["coverage_90"], expected["coverage_95"] = cov[0.9], cov[0.95]
        nominal, observed = metrics.regression_calibration_curve(y, loc=loc, scale=scale,
                                                                 levels=[k / 20 for k in range(1, 20)])
        expected["calibration_error"] = (observed - nominal).abs().mean()
        for key, value in expected.items():
            # Same draws and functions in float64: only the float repr round trip differs.
            assert values[name][key] == pytest.approx(float(value), rel=1e-9, abs=1e-12), (name, key)
        for key in ("coverage_90", "coverage_95"):  # a fraction of the N_TEST points
            k = values[name][key] * N_TEST
            assert abs(k - round(k)) < 1e-9, (name, key)
        # Independently of the metric code: the model's own pointwise likelihood of each test
        # point under each draw, averaged over draws, gives the mixture's log density. The
        # model computes in float32: agreement to ~1e-5 relative is all float32 allows.
        ll = res.log_likelihood(test, n)["y"].double()
        nll = (math.log(ll.shape[0]) - torch.logsumexp(ll, 0)).mean().item()
        assert values[name]["nll"] == pytest.approx(nll, rel=1e-4), name


def test_regression_diagnostics_table(reg_page, reg_fits):
    table = _parse(reg_page).tables["diagnostics"]
    assert list(table) == list(REG_METHODS)
    nuts = reg_fits["NUTS"]
    idata = nuts.to_inference_data(predictive=False, log_likelihood=False)
    summary = arviz_bridge.summarize(idata, var_names=list(nuts.latent_sites))
    row = table["NUTS"]
    assert int(row["divergences"][0]) == nuts.num_divergences == arviz_bridge.num_divergences(idata)
    assert float(row["ess_bulk_min"][0]) == pytest.approx(float(summary["ess_bulk"].min()), rel=1e-9)
    assert 0 < float(row["ess_bulk_min"][0]) <= 100 * 4  # bulk ESS of 100 draws (may exceed 100)
    assert row["psis_khat"][1] == "n/a"
    for name, res in reg_fits.items():
        assert float(table[name]["fit_time"][0]) == pytest.approx(res.fit_time)
        assert int(table[name]["draws"][0]) == (100 if res.engine == "mcmc" else NUM_SAMPLES)
    for name in ("mean-field VI", "deep ensemble"):
        svi_row = table[name]
        assert svi_row["rhat_max"][1] == svi_row["ess_bulk_min"][1] == svi_row["divergences"][1] == "n/a"
        khat = getattr(reg_fits[name], "psis_khat", None)
        if khat is None:
            assert svi_row["psis_khat"][1] == "n/a"
        else:
            assert float(svi_row["psis_khat"][0]) == pytest.approx(float(khat))


def test_regression_page_is_self_contained(reg_page):
    text = reg_page.read_text(encoding="utf-8")
    parsed = _parse(reg_page)
    assert text.lstrip().startswith("<!DOCTYPE html>")
    # bands, calibration, coverage, distance, then trace and rank of the one MCMC result
    assert re.search(r'data-figures="6"', text)
    for fig_id in ("fig-bands", "fig-calibration", "fig-coverage", "fig-distance", "fig-trace-0", "fig-rank-0"):
        assert f'id="{fig_id}"' in text, fig_id
    assert len(parsed.images) == 6
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png.startswith(PNG_SIGNATURE) and len(png) > 5000
    # Nothing fetched from elsewhere: one inline script, no links, no remote sources.
    assert [s.get("src") for s in parsed.scripts] == [None]
    assert "<link" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)


def test_regression_page_renders_every_image_in_chromium(reg_page, chromium, tmp_path):
    loaded, total = _loaded_images(chromium, reg_page, tmp_path)
    assert (loaded, total) == (6, 6)
    shot = tmp_path / "page.png"
    _chromium(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", reg_page.as_uri())
    assert shot.read_bytes().startswith(PNG_SIGNATURE) and shot.stat().st_size > 20_000


def test_a_model_without_per_draw_gaussians_is_scored_from_its_draws(tmp_path):
    """A GP's predictions give draws of y (and f's moments), not per-draw loc/scale: the report
    scores CRPS and coverage from the draws and the NLL from the model's pointwise likelihood."""
    gp = pyro_models.models.get("gp_regression")()
    train, test = gp.example_data(seed=0), gp.example_data(seed=1)
    res = _quiet_fit(gp, train, SVIConfig(num_steps=100, lr=0.05, num_posterior_samples=50), guide="delta",
                     seed=0)
    pyro.set_rng_seed(7)  # y draws come from the global RNG: replay the report's with the same seed
    page = report({"GP (type-II ML)": res}, test, tmp_path, num_samples=50)
    row = _metric_values(page)["GP (type-II ML)"]
    assert list(row) == list(REGRESSION_METRICS)
    pyro.set_rng_seed(7)
    y_draws = res.predict(test, 50)["y"].double()
    y = test["y"].double()
    assert row["crps"] == pytest.approx(float(metrics.crps_samples(y_draws, y)), rel=1e-9)
    cov = metrics.interval_coverage(y, y_draws=y_draws, levels=(0.9, 0.95))
    assert row["coverage_90"] == pytest.approx(float(cov[0.9]), abs=1e-12)
    assert row["coverage_95"] == pytest.approx(float(cov[0.95]), abs=1e-12)
    # A MAP fit: every draw is the same point, so the predictive of each test point is one
    # Normal(f_loc, f_var + noise), the GP's closed-form predictive. Float32 model: rel 1e-4.
    moments = res.predict(test, 50, return_sites=["f_loc", "f_var", "noise"])
    scale = (moments["f_var"][0].double() + moments["noise"][0].double()).sqrt()
    nll = -torch.distributions.Normal(moments["f_loc"][0].double(), scale).log_prob(y).mean().item()
    assert row["nll"] == pytest.approx(nll, rel=1e-4)
    text = page.read_text(encoding="utf-8")
    assert "50 predictive draws" in text and 'data-figures="3"' in text  # bands, calibration, coverage


# ============================================================================ classification
def test_classification_table_and_reliability_diagram(clf_page, clf_fits, clf_data):
    _, test = clf_data
    labels = test["y"].long()
    values = _metric_values(clf_page)
    assert list(values) == list(CLF_METHODS)
    for name, res in clf_fits.items():
        row = values[name]
        assert list(row) == list(CLASSIFICATION_METRICS)
        probs = res.predict(test, NUM_SAMPLES).probs.double()
        probs = probs / probs.sum(-1, keepdim=True)
        assert row["ece"] == pytest.approx(float(metrics.ece(probs, labels, 15)), rel=1e-9, abs=1e-12)
        assert row["ece_adaptive"] == pytest.approx(
            float(metrics.ece(probs, labels, 15, binning="adaptive")), rel=1e-9, abs=1e-12)
        assert row["accuracy"] == pytest.approx(float(metrics.accuracy(probs, labels)), rel=1e-12)
        assert row["brier"] == pytest.approx(float(metrics.brier(probs, labels)), rel=1e-9)
        assert row["nll"] == pytest.approx(float(metrics.nll(probs, labels)), rel=1e-9)
        assert row["selective_auc"] == pytest.approx(
            float(metrics.area_under_retention_curve(probs, labels)), rel=1e-9)
        assert 0 <= row["ece"] <= 1 and 0 <= row["ece_adaptive"] <= 1
    text = clf_page.read_text(encoding="utf-8")
    assert 'data-task="classification"' in text and 'data-figures="3"' in text
    for fig_id in ("fig-reliability", "fig-retention", "fig-distance"):
        assert f'id="{fig_id}"' in text
    assert "fig-trace" not in text  # no MCMC result, no trace plot


def test_classification_page_renders_in_chromium(clf_page, chromium, tmp_path):
    assert _loaded_images(chromium, clf_page, tmp_path) == (3, 3)


# ============================================================================ input checks and escaping
def test_rejects_bad_input(reg_fits, reg_data, tmp_path):
    _, test = reg_data
    mf = reg_fits["mean-field VI"]
    with pytest.raises(ValueError, match="at least one"):
        report({}, test, tmp_path)
    with pytest.raises(TypeError, match="expected a FitResult"):
        report({"a": mf, "b": "not a fit"}, test, tmp_path)
    with pytest.raises(TypeError, match="mapping"):
        report([mf], test, tmp_path)
    with pytest.raises(ValueError, match="no observed target"):
        report({"a": mf}, {"x": test["x"]}, tmp_path)
    with pytest.raises(ValueError, match="target='z'"):
        report({"a": mf}, test, tmp_path, target="z")
    # A binary classifier on the same (x, y) fields as the regression net: valid data for both.
    clf = pyro_models.models.get("bnn_classifier")(in_features=1, hidden_sizes=[2], out_features=1)
    clf_fit = _quiet_fit(clf, {"x": test["x"], "y": (test["y"] > 0).float()},
                         SVIConfig(num_steps=5, num_posterior_samples=10), seed=0)
    with pytest.raises(ValueError, match="mix tasks"):
        report({"reg": mf, "clf": clf_fit}, {"x": test["x"], "y": (test["y"] > 0).float()}, tmp_path,
               num_samples=10)
    with pytest.raises(ValueError, match="num_samples"):
        report({"a": mf}, test, tmp_path, num_samples=0)
    with pytest.raises(ValueError, match="filename"):
        report({"a": mf}, test, tmp_path, filename="../x.html")
    with pytest.raises(ValueError, match="levels"):
        report({"a": mf}, test, tmp_path, levels=(0.5, 1.5))


def test_user_strings_are_escaped(reg_fits, reg_data, tmp_path):
    _, test = reg_data
    name = '<img src=x onerror="alert(1)"> & $\\alpha$'
    page = report({name: reg_fits["mean-field VI"]}, test, tmp_path, title="<b>title</b>",
                  description="a < b & c", num_samples=20, filename="escaped.html")
    text = page.read_text(encoding="utf-8")
    assert "<img src=x" not in text and "<b>title</b>" not in text
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; $\\alpha$" in text
    assert "&lt;b&gt;title&lt;/b&gt;" in text and "a &lt; b &amp; c" in text
    assert list(_metric_values(page)) == [name]  # the parser unescapes attribute values
