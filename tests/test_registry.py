"""Registries: plain dicts behind register/get/available, with entry-point plug-ins."""

from __future__ import annotations

import warnings
from importlib.metadata import EntryPoint

import pytest

import pyro_models
from pyro_models import guides, models
from pyro_models.registry import PluginWarning, Registry

BUILTIN_MODELS = {
    "beta_binomial", "normal_normal", "gamma_poisson", "dirichlet_multinomial",
    "linear_regression", "logistic_regression", "eight_schools",
}


def test_builtin_names():
    assert BUILTIN_MODELS <= set(models.available())
    assert {"normal", "lowrank_mvn", "mvn", "delta", "laplace"} <= set(guides.available())
    assert models.available() == sorted(models.available())


def test_duplicate_raises_unless_override():
    reg = Registry("thing", group="pyro_models.test.none", how_to_register="reg.register")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered.*override=True"):
        reg.register("a", 2)
    reg.register("a", 3, override=True)
    assert reg.get("a") == 3
    with pytest.raises(KeyError, match="available things: a"):
        reg.get("b")


def test_guide_register_decorator_and_override():
    @guides.register("test_guide_tmp", description="tmp")
    def make(model, *, scale: float = 0.1):
        return guides.get("normal")(model, init_scale=scale)

    try:
        assert "test_guide_tmp" in guides.available()
        assert guides.entry("test_guide_tmp").options() == {"scale": 0.1}
        with pytest.raises(ValueError, match="already registered"):
            guides.register("test_guide_tmp", make)
        guides.register("test_guide_tmp", make, override=True)
    finally:
        guides.unregister("test_guide_tmp")
    assert "test_guide_tmp" not in guides.available()


def test_model_register_duplicate():
    with pytest.raises(ValueError, match="already registered"):
        models.register("beta_binomial", models.get("normal_normal"))


def _fake_entry_points(eps):
    def entry_points(group=None):
        return [ep for ep in eps if ep.group == group]

    return entry_points


def test_entry_point_plugin_and_broken_plugin(monkeypatch):
    good = EntryPoint(name="plugin_normal", value="pyro_models.guides:normal", group="pyro_models.guides")
    broken = EntryPoint(name="broken_plugin", value="no_such_module_xyz:thing", group="pyro_models.guides")
    reg = type(guides.REGISTRY)("guide", group="pyro_models.guides", how_to_register="...")
    monkeypatch.setattr("pyro_models.registry.entry_points", _fake_entry_points([good, broken]))
    with pytest.warns(PluginWarning, match="broken_plugin"):
        names = reg.available()
    assert "plugin_normal" in names and "broken_plugin" not in names
    assert reg.get("plugin_normal").engine == "svi"


def test_import_survives_broken_plugin(monkeypatch):
    broken = EntryPoint(name="broken", value="no_such_module_xyz:thing", group="pyro_models.models")
    reg = Registry("model", group="pyro_models.models", how_to_register="...")
    monkeypatch.setattr("pyro_models.registry.entry_points", _fake_entry_points([broken]))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert reg.available() == []
    assert any("broken" in str(w.message) for w in rec)
    assert pyro_models.fit is not None
