# The C core is compiled by cffi (vmown/_build.py); the two entry points that
# must cost about a plain call, vmown.callout and vmown.threaded, are a small
# CPython extension that reaches the core through a table of function
# pointers (native/pyext/callout_ext.c).  Everything else is in pyproject.toml.
from setuptools import Extension, setup

setup(
    cffi_modules=["vmown/_build.py:ffibuilder"],
    ext_modules=[
        Extension(
            "vmown._callout_ext",
            ["native/pyext/callout_ext.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
        )
    ],
)
