"""Third-party plug-ins end to end, and the contract checks of ``pyro_models.testing``.

A real package (``tests/plugin_fixture``: a guide, a model and a deliberately broken guide,
all declared as entry points) is built and pip-installed into a temporary folder, offline,
then used from a fresh interpreter, as a user who ``pip install``-ed it would.

The checkers are tested both ways: the built-in guides and models pass, and each kind of
broken guide or model fails with a message that says what is wrong. A checker that cannot
fail is worthless.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.transforms import AffineTransform, ExpTransform
from pyro.infer import autoguide
from pyro.nn import PyroModule
from torch import nn

from pyro_models import DataSpec, Field, guides
from pyro_models.models import BayesianModel
from pyro_models.testing import check_guide, check_guide_factory, check_model

FIXTURE = Path(__file__).resolve().parent / "plugin_fixture"


# ------------------------------------------------------------------------ the installed plug-in
@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """The fixture package built and installed with pip into a fresh ``--target`` folder.

    The source is copied first so the build's ``build/`` and ``*.egg-info`` never land in the
    checkout. No network: ``--no-deps --no-build-isolation`` uses the setuptools and wheel of
    this environment.
    """
    root = tmp_path_factory.mktemp("plugin")
    src = root / "src"
    shutil.copytree(FIXTURE, src, ignore=shutil.ignore_patterns("conftest.py", "__pycache__", "build", "*.egg-info"))
    target = root / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(src)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, f"pip install of the plug-in fixture failed:\n{proc.stdout}\n{proc.stderr}"
    assert (target / "pyro_models_example_plugin" / "__init__.py").exists()
    return target


def _run(site: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that sees the installed plug-in."""
    path = os.pathsep.join([str(site)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_installed_plugin_registers_trains_and_broken_one_warns(plugin_site, tmp_path):
    code = """
        import json, warnings
        with warnings.catch_warnings(record=True) as at_import:
            warnings.simplefilter("always")
            import pyro_models
        from pyro_models.registry import PluginWarning
        with warnings.catch_warnings(record=True) as at_lookup:
            warnings.simplefilter("always")
            guide_names = pyro_models.guides.available()
            model_names = pyro_models.models.available()
        with warnings.catch_warnings(record=True) as again:
            warnings.simplefilter("always")
            pyro_models.guides.available()  # entry points are loaded once
        data = pyro_models.models.get("linear_regression")().example_data(seed=0)
        res = pyro_models.fit("linear_regression", data,
                              pyro_models.SVIConfig(num_steps=300, lr=0.05, num_posterior_samples=200),
                              guide=("example_diag", {"init_scale": 0.02}), seed=0, progress=False)
        weight = res.samples()["weight"]
        print(json.dumps({
            "import_warnings": [str(w.message) for w in at_import if issubclass(w.category, PluginWarning)],
            "plugin_warnings": [str(w.message) for w in at_lookup if issubclass(w.category, PluginWarning)],
            "repeat_warnings": [str(w.message) for w in again if issubclass(w.category, PluginWarning)],
            "guides": guide_names, "models": model_names,
            "guide_class": type(res.guide).__name__,
            "first_loss": sum(res.losses[:30]) / 30, "last_loss": sum(res.losses[-30:]) / 30,
            "weight_shape": list(weight.shape), "weight_mean": weight.mean(0).tolist(),
        }))
    """
    proc = _run(plugin_site, code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # Importing the package never touches plug-ins, broken or not.
    assert out["import_warnings"] == []
    # The broken plug-in: one clear warning naming the entry point and the cause; it is skipped.
    (msg,) = out["plugin_warnings"]
    assert "example_broken" in msg and "pyro_models.guides" in msg
    assert "pyro_models_example_plugin_missing_dependency" in msg
    assert out["repeat_warnings"] == []
    assert "example_diag" in out["guides"] and "example_broken" not in out["guides"]
    assert {"normal", "mvn"} <= set(out["guides"])
    assert "example_coin" in out["models"]
    # The plug-in guide trains: AutoDiagonalNormal, loss down by far more than SVI noise.
    assert out["guide_class"] == "AutoDiagonalNormal"
    assert out["last_loss"] < out["first_loss"] - 10
    assert out["weight_shape"] == [200, 2]
    # linear_regression's example data are drawn with weight (1.0, -0.5), noise 0.5 and N=30,
    # so the posterior sd of each weight is about 0.5 / sqrt(30) = 0.09: 0.3 is over 3 sds.
    assert abs(out["weight_mean"][0] - 1.0) < 0.3 and abs(out["weight_mean"][1] + 0.5) < 0.3


def test_installed_plugin_passes_the_contract_checks(plugin_site, tmp_path):
    code = """
        import warnings
        from pyro_models.registry import PluginWarning
        warnings.simplefilter("error")  # as the test suite runs (see pyproject.toml)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="(arviz|xarray).*")
        warnings.filterwarnings("ignore", category=FutureWarning, module="arviz.*")
        warnings.simplefilter("ignore", PluginWarning)  # the fixture's broken guide, tested above
        from pyro_models.testing import check_guide, check_model
        check_guide("example_diag")
        check_model("example_coin")
        print("ok")
    """
    proc = _run(plugin_site, code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "ok"


# ------------------------------------------------------------------------ checks that pass
@pytest.mark.parametrize("name", ["normal", "mvn"])
def test_builtin_guides_pass(name):
    check_guide(name)


def test_factory_and_entry_forms_are_registered_only_during_the_check():
    before = guides.available()

    def diagonal(model, *, init_scale: float = 0.05):
        return autoguide.AutoDiagonalNormal(model, init_scale=init_scale)

    check_guide(diagonal, models=("normal_normal",), num_steps=100, options={"init_scale": 0.02})
    entry = guides.GuideEntry("diagonal", diagonal, description="diagonal Gaussian")
    check_guide(entry, models=("normal_normal",), num_steps=100, accuracy=False)
    assert guides.available() == before


def test_builtin_models_pass():
    check_model("eight_schools")
    check_model("beta_binomial", mcmc=False)


# ------------------------------------------------------------------------ checks that fail
class _MuGuide(PyroModule):
    """A hand-written guide for ``normal_normal``'s one latent site ``mu``."""

    def __init__(self, log_scale: float = -1.0, shape: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.full(shape, log_scale))

    def posterior(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.log_scale.exp())

    def forward(self, *args, **kwargs):
        return {"mu": pyro.sample("mu", self.posterior())}


class _NegativeGuide(_MuGuide):
    def posterior(self):  # wrong support: mu < 0 only
        return dist.TransformedDistribution(super().posterior(), [ExpTransform(), AffineTransform(0.0, -1.0)])


class _FixedScaleGuide(_MuGuide):
    def posterior(self):  # the scale is never learnt
        return dist.Normal(self.loc, 1.0)


class _UnsavedStateGuide(_MuGuide):
    def __init__(self) -> None:
        super().__init__()
        self.offset = torch.randn(())  # a plain attribute, not a buffer: not saved

    def posterior(self):
        return dist.Normal(self.loc + self.offset, self.log_scale.exp())


class _FrozenGuide(_MuGuide):
    def forward(self, *args, **kwargs):  # the parameter never reaches the sample: nothing to learn
        return {"mu": pyro.sample("mu", dist.Delta(0.0 * self.loc))}


def test_a_hand_written_guide_passes():
    check_guide(lambda model: _MuGuide(), models=("normal_normal",), num_steps=100)


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda model: _MuGuide(shape=(1,)), r"samples\(\)\['mu'\] has shape \(64, 1\); expected \(64,\)"),
        (lambda model: _NegativeGuide(), r"\(accuracy\): the posterior mean of 'mu' is .* exact posterior sds"),
        (lambda model: _FixedScaleGuide(), r"\(accuracy\): the posterior sd of 'mu' is .* times the exact"),
        (lambda model: _UnsavedStateGuide(), r"after FitResult.save/load the draws of 'mu' differ"),
        (lambda model: _FrozenGuide(), r"the loss did not decrease"),
    ],
    ids=["wrong_shape", "biased_mean", "wrong_sd", "state_not_saved", "loss_flat"],
)
def test_broken_guides_fail_with_a_clear_message(factory, match):
    with pytest.raises(AssertionError, match=match) as info:
        check_guide(factory, models=("normal_normal",), num_steps=100)
    assert "on model 'normal_normal'" in str(info.value)


@pytest.mark.filterwarnings("ignore:Encountered NaN")  # Pyro's own notice of the NaN loss
def test_nan_loss_fails():
    # log_scale initialised at 100 (meant: scale 100): exp overflows, the loss is NaN.
    with pytest.raises(AssertionError, match=r"guide '.*<lambda>' on model 'normal_normal': the loss must stay finite"):
        check_guide(lambda model: _MuGuide(log_scale=100.0), models=("normal_normal",), num_steps=100)
    assert not [n for n in guides.available() if n.startswith("_check_guide_")]


def test_factory_signature_check():
    check_guide_factory(guides.get("lowrank_mvn"), name="lowrank_mvn")
    with pytest.raises(AssertionError, match="option 'rank' has no default"):
        check_guide(lambda model, rank: _MuGuide(), models=("normal_normal",))
    with pytest.raises(AssertionError, match=r"\*extra is not allowed"):
        check_guide_factory(lambda model, *extra: None)
    with pytest.raises(AssertionError, match="first parameter must be the model"):
        check_guide_factory(lambda *, rank=1: None)


def test_bad_arguments_raise_type_and_value_errors():
    with pytest.raises(KeyError, match="unknown guide 'no_such_guide'"):
        check_guide("no_such_guide")
    with pytest.raises(TypeError, match="no option"):
        check_guide("normal", options={"rank": 2})
    with pytest.raises(TypeError, match="models must be a sequence"):
        check_guide("normal", models="linear_regression")
    with pytest.raises(ValueError, match="num_steps must be a positive int"):
        check_guide("normal", num_steps=0)
    with pytest.raises(TypeError, match="GuideEntry or a factory"):
        check_guide(3)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            check_guide("normal", cuda=True)
    with pytest.raises(TypeError, match="registered name, a BayesianModel"):
        check_model(lambda **data: None)


# Broken models for check_model
class _Coin(BayesianModel):
    data_spec = DataSpec((Field("flips", ("N",), observed=True),), plate="data", plate_dim="N")

    def example_data(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return {"flips": (torch.rand(30, generator=g) < 0.3).float()}

    def p(self):
        return pyro.sample("p", dist.Beta(1.0, 1.0))

    def forward(self, flips=None):
        p = self.p()
        with pyro.plate("data", 1 if flips is None else flips.shape[0]):
            return pyro.sample("flips", dist.Bernoulli(p), obs=flips)


class _UnvectorisedCoin(_Coin):
    def forward(self, flips=None):
        p = self.p()
        with pyro.plate("data", 1 if flips is None else flips.shape[0]):
            # p.unsqueeze(-1) adds a dim that does not broadcast under an outer plate of draws
            return pyro.sample("flips", dist.Bernoulli(p.unsqueeze(-1)), obs=flips)


class _BadExampleCoin(_Coin):
    def example_data(self, seed: int = 0):
        return {"flips": torch.zeros(30, 2)}


class _RandomExampleCoin(_Coin):
    def example_data(self, seed: int = 0):
        return {"flips": (torch.rand(30) < 0.3).float()}


class _NeedsArgsCoin(_Coin):
    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a


def test_a_hand_written_model_passes():
    check_model(_Coin(), mcmc=False)


@pytest.mark.parametrize(
    "model, match",
    [
        (_UnvectorisedCoin(), r"predict\(\) fell back to a loop over posterior draws"),
        (_BadExampleCoin(), r"example_data\(\) does not satisfy the model's data_spec: flips"),
        (_RandomExampleCoin(), r"returned different data on a second call"),
        (_NeedsArgsCoin, r"must be constructible with no arguments"),
    ],
    ids=["unvectorised", "bad_example", "unseeded_example", "needs_args"],
)
def test_broken_models_fail_with_a_clear_message(model, match):
    with pytest.raises(AssertionError, match=match):
        check_model(model, num_steps=20, mcmc=False)
