"""Registries that fill themselves: every module of a package that defines a subclass of the
package's base class with its own ``name`` is registered under that name, so adding an attack
or a defense is adding its file, and no list of names is written anywhere else."""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def discover(package: ModuleType, base: type, skip: tuple[str, ...] = ("base",)) -> dict[str, type]:
    found: dict[str, type] = {}
    for mod in sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name not in skip):
        module = importlib.import_module(f"{package.__name__}.{mod}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == module.__name__ \
                    and "name" in vars(obj):
                if obj.name in found:
                    raise RuntimeError(f"two {base.__name__}s named {obj.name!r}: {found[obj.name]} and {obj}")
                found[obj.name] = obj
    return found
