# The package is described in pyproject.toml (PEP 621); this shim is for tools that still
# call setup.py directly.
from setuptools import setup

setup()
