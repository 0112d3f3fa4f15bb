# The C core is compiled by cffi; everything else is in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["vmown/_build.py:ffibuilder"])
