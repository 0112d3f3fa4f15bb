# The C core is compiled by cffi (vmown/_build.py: vmown._native).  Next to it,
# vmown._channel_ext is a plain CPython extension: the per-message calls of
# Channel, which reach the core through a table vmown._native exports and link
# none of it (native/pyext/channel_ext.c says why).  The rest is in pyproject.toml.
from setuptools import Extension, setup

channel_ext = Extension(
    "vmown._channel_ext",
    sources=["native/pyext/channel_ext.c"],  # relative, as in vmown/_build.py
    include_dirs=["native"],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)

setup(cffi_modules=["vmown/_build.py:ffibuilder"], ext_modules=[channel_ext])
