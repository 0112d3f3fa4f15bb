# The C core is compiled by cffi (vmown/_build.py: vmown._native).  Next to it
# are two plain CPython extensions for the calls that must cost about a plain
# call: vmown._callout_ext (vmown.callout and vmown.threaded) and
# vmown._channel_ext (the per-message calls of Channel).  They link none of
# the core: they reach it through tables of function pointers that
# vmown._native exports, so there is one copy of the core per process
# (native/pyext/*.c say why).  The rest is in pyproject.toml.
from setuptools import Extension, setup

FLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]


def extension(name: str, libraries: list[str] | None = None) -> Extension:
    # Relative paths, as in vmown/_build.py.
    return Extension(f"vmown._{name}", sources=[f"native/pyext/{name}.c"], include_dirs=["native"],
                     extra_compile_args=FLAGS, libraries=libraries or [])


# vmown._callout_ext links libffi (ffi.h: Debian's libffi-dev) for the
# blocking entry of vmown.threaded (native/pyext/callout_ext.c).
setup(cffi_modules=["vmown/_build.py:ffibuilder"],
      ext_modules=[extension("callout_ext", ["ffi"]), extension("channel_ext")])
