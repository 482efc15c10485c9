"""Packages whose public names are imported when first used (PEP 562), so that ``import catapult``
or ``import catapult.sweep.store`` does not import torch, the engine and every subpackage before a
command that only reads files (``catapult export``, ``--help``) gets to work.

A package lists its names once, in a mapping ``name -> "module"`` (a subpackage or module) or
``name -> "module:attribute"``, and calls :func:`lazy_exports` at its end; ``__all__`` is the
mapping's keys. ``from package import name``, ``package.name``, ``dir(package)``, ``help(package)``
and pickling by reference (which imports the object's own module) behave as with eager imports;
a submodule not listed (``catapult.sparsity``) is imported when first used as an attribute, as the
eager imports had made it one.

A public name that is also the name of a submodule (``catapult.critical_lr`` is a function and a
module) stays the public object: importing the submodule later (``import catapult.critical_lr``, as
the engine does) sets the package's attribute, which an eager package's own import had overwritten
afterwards; here the package's module type keeps the public object for it.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
from typing import Any, Callable, Mapping

__all__ = ["lazy_exports", "resolve"]


def resolve(target: str) -> Any:
    """The object ``target`` names: ``"package.module"`` (the module) or ``"package.module:name"``
    (an attribute of it), imported now.

    >>> resolve("catapult.writing:PARTIAL_PREFIX") == __import__("catapult.writing").writing.PARTIAL_PREFIX
    True
    >>> resolve("catapult.writing").__name__
    'catapult.writing'
    """
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list]]:
    """Make the names of ``exports`` (``name -> "module"`` or ``"module:attribute"``) attributes of the
    module ``package`` that are imported at their first use; returns its ``(__getattr__, __dir__)``.

    A name that is also a submodule of ``package`` keeps naming the public object after that
    submodule is imported (module docstring).

    >>> import types, sys
    >>> pkg = types.ModuleType("lazy_example")
    >>> sys.modules["lazy_example"] = pkg
    >>> pkg.__getattr__, pkg.__dir__ = lazy_exports("lazy_example", {"prefix": "catapult.writing:PARTIAL_PREFIX"})
    >>> "prefix" in vars(pkg), pkg.prefix == resolve("catapult.writing:PARTIAL_PREFIX"), "prefix" in vars(pkg)
    (False, True, True)
    >>> "prefix" in dir(pkg)
    True
    >>> del sys.modules["lazy_example"]
    """
    module = sys.modules[package]
    exports = dict(exports)
    shadowed = _shadowed(module, exports)
    if shadowed:
        module.__class__ = _module_type(package, {name: exports[name] for name in shadowed})

    def __getattr__(name: str) -> Any:
        target = exports.get(name)
        if target is None and not name.startswith("_") and _is_submodule(module, name):
            target = f"{package}.{name}"  # ``catapult.sparsity`` after ``import catapult``, as when eager
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = resolve(target)
        if name not in shadowed:
            setattr(module, name, value)  # later uses read it without calling here again
        return value

    def __dir__() -> list:
        return sorted(set(vars(module)) | set(exports))

    return __getattr__, __dir__


def _shadowed(module: types.ModuleType, exports: Mapping[str, str]) -> set[str]:
    """Names of ``exports`` that are also submodules of the package ``module`` and name something
    other than that submodule."""
    return {name for name, target in exports.items()
            if target != f"{module.__name__}.{name}" and _is_submodule(module, name)}


def _is_submodule(module: types.ModuleType, name: str) -> bool:
    """Whether the package ``module`` has a module or subpackage ``name`` (its files; no import)."""
    return any(os.path.exists(os.path.join(folder, name + ".py"))
               or os.path.exists(os.path.join(folder, name, "__init__.py"))
               for folder in getattr(module, "__path__", ()))


def _module_type(package: str, shadowed: Mapping[str, str]) -> type:
    """A module type whose attributes ``shadowed`` are the public objects: the import system's
    ``setattr(package, name, submodule)`` is ignored, other assignments (a test's monkeypatch) kept;
    the object, once imported, is kept there too."""
    def attribute(name: str, target: str) -> property:
        def get(self):
            objects = self.__dict__.setdefault("_lazy_objects", {})
            if name not in objects:
                objects[name] = resolve(target)
            return objects[name]

        def set_(self, value):
            if value is sys.modules.get(f"{package}.{name}"):
                return  # the import system naming the submodule: the public name stays the object
            self.__dict__.setdefault("_lazy_objects", {})[name] = value

        def delete(self):
            self.__dict__.get("_lazy_objects", {}).pop(name, None)

        return property(get, set_, delete)

    namespace = {name: attribute(name, target) for name, target in shadowed.items()}
    return type("LazyModule", (types.ModuleType,), namespace)
