"""Named objects of one kind (tasks, discovery methods), each module of a plugin package registering one."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, TypeVar

T = TypeVar("T")


class Plugins(Generic[T]):
    """Objects with a ``name``, by name. Every module of ``package`` is imported on the first lookup (each calls
    ``register``); anything else may register more before or after."""

    def __init__(self, kind: str, package: str):
        self.kind, self.package = kind, package
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, obj: T) -> T:
        """Make ``obj`` available under ``obj.name`` (replacing one of that name)."""
        self._items[obj.name] = obj
        return obj

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> list[str]:
        self._load()
        return list(self._items)

    def get(self, name: str) -> T:
        """The object registered as ``name``; ValueError naming every registered one otherwise."""
        self._load()
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {', '.join(self._items)}")
        return self._items[name]

    def check_name(self, name: str) -> str:
        """``name`` if it is registered (a pydantic validator: ``Annotated[str, AfterValidator(x.check_name)]``)."""
        self.get(name)
        return name
