"""The plug-in fixture is a package source tree, not tests: pytest must not import it.

``tests/test_plugins.py`` copies it to a temporary folder, builds and installs it there.
"""

collect_ignore = ["src"]
