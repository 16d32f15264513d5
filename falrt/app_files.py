"""The files an App class adds to its bundle: fal's `app_files` and `local_python_modules`.

Runs on the deploying machine (the CLI, through `falrt.bundle.pack`). Every function returns
bundle entries: entry name (a POSIX path relative to the bundle root) -> local file. The
bundle root is the app file's folder, or the highest `app_files_context_dir` above it
(`bundle_root`); either way the runner's working directory is the app file's folder inside
the bundle, so an app reads its `app_files` by the same relative paths as on the deploying
machine, as on fal (whose runners work in the app file's folder under the context dir).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable
from pathlib import Path

from falrt.errors import InvalidArgumentError
from falrt.sdk.app import App
from falrt.sdk.options import DEFAULT_APP_FILES_IGNORE

__all__ = ["app_file_entries", "bundle_root", "local_module_entries"]

_CACHE_PARTS = frozenset({"__pycache__", ".git"})


def _context_dir(folder: Path, cls: type[App]) -> Path:
    """`cls.app_files_context_dir` resolved against the app file's `folder` (default: it)."""
    return (folder / (cls.app_files_context_dir or ".")).resolve()


def bundle_root(folder: Path, classes: Iterable[type[App]]) -> Path:
    """The bundle root of an app file in `folder` (resolved): `folder`, or the highest
    context dir of `classes` that `folder` lies under (fal's `app_files_context_dir=".."`)."""
    above = [context for context in (_context_dir(folder, cls) for cls in classes)
             if folder.is_relative_to(context)]
    return min(above, key=lambda path: len(path.parts), default=folder)


def app_file_entries(root: Path, folder: Path, cls: type[App]) -> dict[str, Path]:
    """The files `cls.app_files` names (a folder: every file under it), minus those an
    `app_files_ignore` pattern finds (`re.search` in the path relative to the context dir),
    named relative to the bundle `root`.

    Paths are relative to `app_files_context_dir`, itself relative to the app file's
    `folder` (default: `folder`). Raises `InvalidArgumentError` for an absolute path, a path
    that escapes the context dir, a missing one, or a file outside `root` (a context dir
    beside the app file's folder rather than above or below it).
    """
    context = _context_dir(folder, cls)
    ignore = [re.compile(p) for p in (cls.app_files_ignore
                                      if cls.app_files_ignore is not None
                                      else DEFAULT_APP_FILES_IGNORE)]
    entries: dict[str, Path] = {}
    for name in cls.app_files or ():
        for path in _expand(context, name):
            relative = path.relative_to(context).as_posix()
            if any(pattern.search(relative) for pattern in ignore):
                continue
            entries[_entry_name(root, path, name)] = path
    return entries


def _expand(context: Path, name: str) -> Iterable[Path]:
    """The files `name` (relative to `context`) stands for."""
    if Path(name).is_absolute():
        raise InvalidArgumentError(f"app_files: {name!r} must be relative to the context dir")
    path = (context / name).resolve()
    if not path.is_relative_to(context):
        raise InvalidArgumentError(f"app_files: {name!r} is outside the context dir {context}")
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    raise InvalidArgumentError(f"app_files: {name!r} does not exist (in {context})")


def _entry_name(root: Path, path: Path, name: str) -> str:
    if not path.is_relative_to(root):
        raise InvalidArgumentError(
            f"app_files: {name!r} is outside the bundle's folder {root}: falrt bundles the "
            "app file's folder, or the app_files_context_dir above it (a context dir beside "
            "the app file's folder holds no app file: make it a folder above both)")
    return path.relative_to(root).as_posix()


def local_module_entries(names: Iterable[str]) -> dict[str, Path]:
    """The files of the importable modules `names` (a dotted name: its top-level package),
    placed at the bundle root as they are on `sys.path`. Raises `InvalidArgumentError` for a
    module that cannot be found or is not pure Python."""
    entries: dict[str, Path] = {}
    for name in names:
        top = name.partition(".")[0]
        spec = importlib.util.find_spec(top)
        if spec is None or (spec.origin is None and not spec.submodule_search_locations):
            raise InvalidArgumentError(f"local_python_modules: module {top!r} not found")
        if spec.submodule_search_locations:
            folder = Path(next(iter(spec.submodule_search_locations))).resolve()
            entries.update({f"{top}/{p.relative_to(folder).as_posix()}": p
                            for p in sorted(folder.rglob("*")) if _is_source(folder, p)})
        elif spec.origin is not None and spec.origin.endswith(".py"):
            entries[f"{top}.py"] = Path(spec.origin).resolve()
        else:
            raise InvalidArgumentError(
                f"local_python_modules: {top!r} is not a pure-Python module ({spec.origin})")
    return entries


def _is_source(folder: Path, path: Path) -> bool:
    parts = path.relative_to(folder).parts
    return (path.is_file() and not any(p in _CACHE_PARTS for p in parts)
            and path.suffix not in (".pyc", ".pyo"))
