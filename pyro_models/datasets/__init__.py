"""Small data sets shipped with the package (no network, no ../shared needed)."""
