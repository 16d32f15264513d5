"""Finding an App class from a reference: shared by the CLI (deploy) and the runner shim.

References:
- `path/to/app.py::MyApp` or `path/to/app.py` (a file; module name = file stem, the file's
  folder is put first on `sys.path` so its local modules import; importing the same file
  again returns the same module, a different module already imported under that name is
  an error);
- `module:MyApp` or `module` (an importable module, e.g. the entrypoint inside a bundle).
Without a class name, the module must define exactly one App subclass.

The module's top-level code runs (user code); exceptions it raises propagate unchanged.
Every other failure raises `InvalidArgumentError` with a message naming what is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from falrt.errors import InvalidArgumentError
from falrt.sdk.app import App

__all__ = ["app_classes", "import_app_file", "load_app_class", "load_app_ref", "parse_app_ref"]


def parse_app_ref(ref: str) -> tuple[str, str | None]:
    """Splits `file.py::Class` or `module:Class` into (source, class name or None)."""
    if "::" in ref:
        source, _, name = ref.partition("::")
    elif ":" in ref and not ref.endswith(".py") and not Path(ref).exists():
        source, _, name = ref.rpartition(":")
    else:
        source, name = ref, ""
    if not source:
        raise InvalidArgumentError(f"app reference {ref!r} names no file or module")
    return source, name or None


def import_app_file(path: Path) -> ModuleType:
    """Imports a .py file as module `path.stem`, with its folder first on sys.path.

    An already imported module of that file is returned as it is. Raises
    `InvalidArgumentError` when the file is missing or another module of that name is
    imported already, and whatever executing the file raises.
    """
    if not path.is_file():
        raise InvalidArgumentError(f"app file {str(path)!r} does not exist")
    path = path.resolve()
    existing = sys.modules.get(path.stem)
    if existing is not None:
        if getattr(existing, "__file__", None) == str(path):
            return existing
        raise InvalidArgumentError(
            f"cannot import {str(path)!r} as module {path.stem!r}: another module of that "
            "name is already imported; rename the app file"
        )
    folder = str(path.parent)
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise InvalidArgumentError(f"{str(path)!r} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(path.stem, None)
        raise
    return module


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise InvalidArgumentError(f"app module {name!r} not found on sys.path") from None


def app_classes(module: ModuleType) -> list[type[App]]:
    """App subclasses defined in `module` itself (not imported into it)."""
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, App)
        and value is not App
        and value.__module__ == module.__name__
    ]


def _pick_class(module: ModuleType, class_name: str | None) -> type[App]:
    if class_name is None:
        found = app_classes(module)
        if len(found) != 1:
            names = ", ".join(sorted(c.__name__ for c in found)) or "none"
            raise InvalidArgumentError(
                f"{module.__name__} defines {len(found)} App classes ({names}); name one "
                f"as FILE::Class"
            )
        return found[0]
    value = getattr(module, class_name, None)
    if value is None:
        raise InvalidArgumentError(f"{module.__name__} has no class {class_name!r}")
    if not (isinstance(value, type) and issubclass(value, App)):
        raise InvalidArgumentError(f"{module.__name__}.{class_name} is not a falrt.App subclass")
    return value


def load_app_class(source: str | os.PathLike[str], class_name: str | None = None) -> type[App]:
    """Imports `source` (a .py file path or a module name) and returns its App class."""
    text = os.fspath(source)
    is_file = text.endswith(".py") or os.sep in text or Path(text).is_file()
    module = import_app_file(Path(text)) if is_file else _import_module(text)
    return _pick_class(module, class_name)


def load_app_ref(ref: str) -> type[App]:
    """Loads the App class a reference (`file.py::Class`, `module:Class`, ...) names."""
    source, class_name = parse_app_ref(ref)
    return load_app_class(source, class_name)
