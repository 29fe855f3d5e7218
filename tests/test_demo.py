"""The demo report (quick budget): files, figures, and numbers checked against exact answers."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import integrate, stats

from pyro_models import demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
Z = 4.0  # Monte Carlo tolerance in standard errors: a false failure has probability < 1e-4


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One quick demo run from the command line, as the README gives it; every test reads it."""
    out = tmp_path_factory.mktemp("demo-report") / "x"
    proc = subprocess.run(
        [sys.executable, "-m", "pyro_models.demo", "--out", str(out), "--quick"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.fixture(scope="module")
def report_dir(cli_run: tuple[Path, subprocess.CompletedProcess]) -> Path:
    return cli_run[0]


@pytest.fixture(scope="module")
def markdown(report_dir: Path) -> str:
    return (report_dir / "report.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def page(report_dir: Path) -> str:
    return (report_dir / "index.html").read_text(encoding="utf-8")


def _exact_prob_b_beats_a() -> float:
    """P(p_B > p_A) under the Beta(1, 1)-prior posteriors, by quadrature (independent of the
    package's closed form): integral of f_B(x) F_A(x) dx."""
    (n_a, n_b), (s_a, s_b) = demo.AB_DATA["trials"], demo.AB_DATA["successes"]
    post_a = stats.beta(1 + s_a, 1 + n_a - s_a)
    post_b = stats.beta(1 + s_b, 1 + n_b - s_b)
    value, err = integrate.quad(lambda x: post_b.pdf(x) * post_a.cdf(x), 0.0, 1.0, points=[0.1, 0.15],
                                epsabs=1e-12, limit=200)
    assert err < 1e-8
    return value


def test_report_files_exist(report_dir: Path, markdown: str, page: str) -> None:
    assert markdown.startswith("# ")
    assert page.lstrip().startswith("<!DOCTYPE html>")
    for section in ("1. Bayesian A/B test", "2. Eight schools", "3. Linear regression",
                    "4. A Bayesian neural network three ways"):
        assert section in markdown
        assert section in page
    # Self-contained: no stylesheet, script or image is fetched from elsewhere.
    assert "<link" not in page and "<script" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)


def test_every_image_is_a_png_in_the_folder(report_dir: Path, page: str, markdown: str) -> None:
    sources = re.findall(r"""<img\s[^>]*src="([^"]+)\"""", page)
    assert len(sources) >= 4  # A/B, trace, funnel, regression
    for src in sources:
        path = (report_dir / src).resolve()
        assert path.parent == report_dir.resolve(), f"{src} is not in the report folder"
        assert path.suffix == ".png" and path.is_file(), src
        data = path.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_SIGNATURE), src
    # The Markdown version links the same figures.
    assert sorted(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)) == sorted(sources)


def test_prob_b_beats_a_matches_exact_value(markdown: str) -> None:
    m = re.search(
        r"P\(B > A\) from the NUTS draws: ([0-9.]+) \(Monte Carlo standard error ([0-9.]+), "
        r"effective sample size ([0-9]+)\); closed form: ([0-9.]+)",
        markdown,
    )
    assert m, "the report should state P(B > A) from the draws and in closed form"
    p_draws, mcse, ess, p_closed = float(m[1]), float(m[2]), float(m[3]), float(m[4])
    exact = _exact_prob_b_beats_a()
    assert p_closed == pytest.approx(exact, abs=1e-4)  # printed with 4 decimals
    # The reported error must be the binomial one for the stated ESS, and the ESS plausible
    # for 4 x 150 NUTS draws, so the tolerance below cannot be inflated silently.
    assert ess >= 100
    assert mcse == pytest.approx(math.sqrt(p_draws * (1 - p_draws) / ess), abs=1e-4)
    assert abs(p_draws - exact) <= Z * mcse + 1e-4


def test_eight_schools_table_lists_mu_and_tau(markdown: str, page: str) -> None:
    header = "| parameter | mean | sd | q5 | q95 | ess_bulk | r_hat |"
    assert header in markdown
    rows = {}
    for line in markdown.splitlines():
        m = re.match(r"\| `(mu|tau)` \| (.+) \|$", line)
        if m:
            rows[m[1]] = [float(v) for v in m[2].split(" | ")]
    assert set(rows) == {"mu", "tau"}
    for name, (mean, sd, q5, q95, ess_bulk, r_hat) in rows.items():
        assert q5 < mean < q95 and sd > 0 and ess_bulk > 0 and r_hat > 0, name
    assert rows["tau"][2] >= 0  # tau is a scale
    assert "<td><code>mu</code></td>" in page and "<td><code>tau</code></td>" in page


def test_divergence_counts_reported(markdown: str) -> None:
    m = re.search(r"Divergent transitions after warmup: non-centred (\d+) of (\d+), centred (\d+) of (\d+)",
                  markdown)
    assert m, "the report should give both parameterisations' divergence counts"
    nc, nc_total, c, c_total = map(int, m.groups())
    assert nc_total == c_total == 4 * 150
    assert 0 <= nc <= nc_total and 0 <= c <= c_total
    assert re.search(rf"\| non-centred \| {nc} \|", markdown)
    assert re.search(rf"\| centred \| {c} \|", markdown)


def test_regression_reports_bias_weight_sigma(markdown: str) -> None:
    for name in ("bias", "weight[0]", "sigma"):
        assert re.search(rf"\| `{re.escape(name)}` \| [-0-9.]+ \| [-0-9.]+ \| [0-9.]+ \|", markdown), name


BNN_METHODS = ("NUTS", "mean-field VI", "deep ensemble (M = 3)")  # the quick budget's ensemble


def test_bnn_comparison_page_is_written_and_linked(report_dir: Path, markdown: str, page: str) -> None:
    comparison = report_dir / demo.BNN_COMPARISON_PAGE
    assert comparison.is_file()
    # Linked from both versions of the report, by a relative link into the same folder.
    assert f'<a href="{demo.BNN_COMPARISON_PAGE}">' in page
    assert f"]({demo.BNN_COMPARISON_PAGE})" in markdown
    text = comparison.read_text(encoding="utf-8")
    assert text.lstrip().startswith("<!DOCTYPE html>")
    # One row per method in the metric and the diagnostics tables.
    for name in BNN_METHODS:
        assert text.count(f'<tr data-method="{name}">') == 2, name
        assert name in markdown  # and the demo's own summary table names it
    # bands, calibration, coverage, distance, then trace and rank of the NUTS fit
    assert 'data-task="regression"' in text and 'data-figures="6"' in text
    sources = re.findall(r"""<img\s[^>]*src="([^"]+)\"""", text)
    assert len(sources) == 6 and all(s.startswith("data:image/png;base64,") for s in sources)
    # Self-contained: nothing fetched from elsewhere.
    assert "<link" not in text and not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    for m in re.finditer(r'<td data-metric="(\w+)" data-value="([^"]*)"', text):
        assert math.isfinite(float(m[2])), m[0]


def test_build_report_rejects_a_negative_seed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed"):
        demo.build_report(tmp_path, quick=True, seed=-1)


def test_module_runs_from_the_command_line(cli_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, proc = cli_run
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("[1/4] A/B test")
    index = out / "index.html"
    assert lines[-1].endswith(str(index.resolve()))
    assert index.is_file() and (out / "report.md").is_file()
    # Divergences are counted in the report, not printed as warnings.
    assert "DivergenceWarning" not in proc.stderr
