"""The package version, in one place: ``pyproject.toml`` reads it, ``topa_plugin.__version__`` re-exports it,
every page names it, and ``CHANGELOG.md`` records what changed in it."""

__version__ = "0.1.0"
