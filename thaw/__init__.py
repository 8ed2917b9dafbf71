"""Thaw core: settings, schema, datasets, CF factors and evaluation shared by every component."""

__version__ = "0.1.0"
