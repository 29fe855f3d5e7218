"""A plug-in module that cannot be imported (a dependency is missing): pyro-models must warn,
name the entry point, skip it, and keep working."""

import pyro_models_example_plugin_missing_dependency  # noqa: F401

make_guide = None
