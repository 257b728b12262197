"""The package version (one place: pyproject reads it from here)."""

__all__ = ["__version__"]

#: The version of the package.
__version__ = "0.1.0"
