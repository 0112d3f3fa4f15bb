"""The package's public face: every public name exported once, documented."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import vmown


def test_each_public_name_is_exported_exactly_once() -> None:
    """Each private module lists its public names in __all__; the package
    re-exports the union of them, each name once."""
    declared: list[str] = []
    for module_info in pkgutil.iter_modules(vmown.__path__):
        if module_info.name in ("_native", "_build", "__main__"):
            continue
        if not module_info.name.startswith("_"):
            declared.append(module_info.name)  # a public submodule (vmown.socket), exported as itself
            continue
        module = importlib.import_module(f"vmown.{module_info.name}")
        for name in getattr(module, "__all__", ()):
            assert getattr(vmown, name) is getattr(module, name), f"vmown.{name} is not {module.__name__}.{name}"
            declared.append(name)
    assert sorted(declared) == sorted(vmown.__all__)
    assert len(vmown.__all__) == len(set(vmown.__all__))


def test_every_public_name_is_documented() -> None:
    for name in vmown.__all__:
        value = getattr(vmown, name)
        assert inspect.getdoc(value), f"vmown.{name} has no docstring"
        if inspect.isclass(value):
            for attr, member in vars(value).items():
                if not attr.startswith("_") and (callable(member) or isinstance(member, property)):
                    assert inspect.getdoc(member), f"vmown.{name}.{attr} has no docstring"
