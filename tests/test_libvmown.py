"""libvmown: the C core built by the Makefile, installed, and used through pkg-config.

The library is built and installed to a temporary prefix twice: plain, and
compiled and linked with -fsanitize=thread.  The C stress program
(native/tests/stress.c) is then built with nothing but `pkg-config --cflags
--libs vmown` (the installed header, the installed shared library, found by
rpath) and run; under ThreadSanitizer both the library and the program are
instrumented.  The shared library must export exactly the functions that
vmown.h marks VMOWN_EXTERN.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import tomllib

import pytest

from vmown._build import NATIVE, ROOT, SOURCES
from vmown._native import ffi, lib

from .support import install_libvmown, make, pkg_config, run_c

STRESS = NATIVE / "tests" / "stress.c"

pytestmark = pytest.mark.skipif(
    not (shutil.which("make") and shutil.which("pkg-config")), reason="needs make and pkg-config"
)


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return install_libvmown(tmp_path_factory.mktemp("libvmown"))


@pytest.fixture(scope="module")
def tsan_prefix(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return install_libvmown(tmp_path_factory.mktemp("libvmown_tsan"), "CFLAGS=-O1 -g -fsanitize=thread",
                            "LDFLAGS=-fsanitize=thread")


def build_against(prefix: pathlib.Path, source: pathlib.Path, output: pathlib.Path, *flags: str) -> pathlib.Path:
    """Compile a program with the installed library's pkg-config flags only."""
    command = ["gcc", "-std=c11", "-g", "-Wall", "-Wextra", "-Werror", *flags, str(source), "-o", str(output),
               *pkg_config(prefix, "--cflags", "--libs"), f"-Wl,-rpath,{prefix / 'lib'}", "-pthread"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, " ".join(command) + "\n" + done.stderr
    return output


def linked_libvmown(program: pathlib.Path) -> str:
    done = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=True)
    return next(line.split("=>")[1].split()[0] for line in done.stdout.splitlines() if "libvmown" in line)


def public_functions() -> set[str]:
    return set(re.findall(r"^VMOWN_EXTERN [^(]*?\b(vmown_\w+)\(", (NATIVE / "vmown.h").read_text(), re.M))


def test_the_makefile_builds_the_python_extensions_sources() -> None:
    assert make("print-sources").split() == SOURCES


def test_one_version_for_header_library_package_and_pkg_config(prefix: pathlib.Path) -> None:
    header = (NATIVE / "vmown.h").read_text()
    major, minor, patch = (int(re.search(rf"#define VMOWN_VERSION_{part} (\d+)", header)[1])
                           for part in ("MAJOR", "MINOR", "PATCH"))
    version = f"{major}.{minor}.{patch}"
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == version
    assert lib.vmown_version() == major << 16 | minor << 8 | patch
    assert pkg_config(prefix, "--modversion") == [version]
    assert (prefix / "lib" / f"libvmown.so.{version}").is_file()
    assert os.readlink(prefix / "lib" / f"libvmown.so.{major}") == f"libvmown.so.{version}"
    assert os.readlink(prefix / "lib" / "libvmown.so") == f"libvmown.so.{major}"
    dynamic = subprocess.run(["readelf", "-d", str(prefix / "lib" / "libvmown.so")], capture_output=True,
                             text=True, check=True).stdout
    assert f"Library soname: [libvmown.so.{major}]" in dynamic


def test_the_shared_library_exports_exactly_the_public_functions(prefix: pathlib.Path) -> None:
    done = subprocess.run(["nm", "-D", "--defined-only", str(prefix / "lib" / "libvmown.so")],
                          capture_output=True, text=True, check=True)
    exported = {line.split()[-1] for line in done.stdout.splitlines() if line.strip()}
    assert not [name for name in exported if not name.startswith("vmown_") or name.startswith("vmown__")]
    assert exported == public_functions()
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(prefix / "lib" / "libvmown.so")],
                               capture_output=True, text=True, check=True).stdout
    assert "Py" not in undefined, "libvmown must not need CPython"


def test_stress_built_with_pkg_config_against_the_installed_library(
        prefix: pathlib.Path, tmp_path: pathlib.Path) -> None:
    stress = build_against(prefix, STRESS, tmp_path / "stress", "-O2")
    assert linked_libvmown(stress) == str(prefix / "lib" / "libvmown.so.0")
    assert "counter=400000" in run_c(stress, 8, 50_000)
    assert "counter=80000" in run_c(stress, 16, 5_000, 20_000)  # race windows widened
    assert "revocations=0 " not in run_c(stress, 8, 20_000, 0, 10_000)  # lazy callouts, 10 kHz heartbeat


def test_stress_under_thread_sanitizer_with_an_instrumented_installed_library(
        tsan_prefix: pathlib.Path, tmp_path: pathlib.Path) -> None:
    stress = build_against(tsan_prefix, STRESS, tmp_path / "stress_tsan", "-O1", "-fsanitize=thread")
    assert linked_libvmown(stress) == str(tsan_prefix / "lib" / "libvmown.so.0")
    assert "counter=160000" in run_c(stress, 8, 20_000)
    run_c(stress, 8, 1_000, 20_000)
    assert "revocations=0 " not in run_c(stress, 8, 5_000, 0, 10_000)


def test_the_static_library_links_alone(prefix: pathlib.Path, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "version.c"
    source.write_text(
        "#include <stdio.h>\n#include <vmown.h>\n"
        "int main(void) {\n"
        "    printf(\"%s\\n\", vmown_version_string());\n"
        "    return vmown_version() == VMOWN_VERSION_HEX ? 0 : 1;\n"
        "}\n"
    )
    program = tmp_path / "version"
    command = ["gcc", "-std=c11", str(source), "-o", str(program),
               *pkg_config(prefix, "--cflags"), str(prefix / "lib" / "libvmown.a"), "-pthread"]
    subprocess.run(command, check=True)
    assert "libvmown" not in subprocess.run(["ldd", str(program)], capture_output=True, text=True).stdout
    done = subprocess.run([str(program)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == ffi.string(lib.vmown_version_string()).decode()


def test_every_public_function_is_in_the_c_api_guide() -> None:
    guide = (ROOT / "docs" / "C-API.md").read_text()
    assert "vmown_callout_begin" in public_functions()
    missing = sorted(name for name in public_functions() if not re.search(rf"\b{name}\b", guide))
    assert missing == [], f"docs/C-API.md does not mention {missing}"
