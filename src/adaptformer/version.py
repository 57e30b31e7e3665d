"""The package version, in its own module so that any layer can name it without importing the package root."""

__version__ = "0.3.0"
