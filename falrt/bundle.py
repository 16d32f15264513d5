"""App bundles: a deterministic gzipped tar of an app file, its local modules, and the
files its App classes add (`app_files`, `local_python_modules`: see `falrt.app_files`).

`pack` runs on the deploying machine (the CLI); `unpack` runs on the server and treats the
archive as hostile input. A bundle is content-addressed: the same files give the same bytes,
hence the same SHA-256.

The bundle root is the app file's folder, whose module the runner imports by the
entrypoint's name from the root. When an App's `app_files_context_dir` is a folder above the
app file's (fal's `".."`), the bundle root is that folder instead: the app file keeps its
place below it, and a small loader (`_entry_loader`) at the root, named as the app module,
makes the import work unchanged on every server and runner. It puts the app file's folder
first on `sys.path` and makes it the working directory (where fal's runners work, so the app
reads its files by the relative paths it uses locally), then runs the app file as that module.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType

from falrt.app_files import app_file_entries, bundle_root, local_module_entries
from falrt.errors import InvalidArgumentError, quote
from falrt.sdk.app import App
from falrt.sdk.loader import app_classes, import_app_file

_SKIPPED_DIRS = frozenset({"__pycache__", ".git"})
_SKIPPED_SUFFIXES = frozenset({".pyc", ".pyo"})
# The runtime provides falrt itself; a checkout of it next to an app is never bundled.
_RUNTIME_PACKAGES = frozenset({"falrt"})
_CHUNK_BYTES = 1024 * 1024
# An entry's path: at most this many bytes, and this many per folder or file name, counted
# as the filesystem gets them (UTF-8): Linux refuses a name part over 255 bytes, which 128
# characters such as "é" already are.
MAX_NAME_BYTES = 1024
MAX_PART_BYTES = 255


@dataclass(frozen=True)
class Bundle:
    """A packed app: the archive bytes and their hex SHA-256."""

    data: bytes
    sha256: str


def pack(app_file: Path, app: type[App] | None = None) -> Bundle:
    """Packs `app_file`, the local modules it imports and the files of `app` (default: of
    every App class the file defines) into a deterministic bundle.

    The app file is imported (`falrt.sdk.loader.import_app_file`) so that its local imports
    show up in `sys.modules`; every loaded module whose file lives under the app file's
    folder is included (a package with all its files), then the `app_files` and
    `local_python_modules` of the App class(es). Entries are named relative to the bundle
    root (the module's docstring). Same files -> same bytes. Raises whatever importing the
    app file raises, and `InvalidArgumentError` for app files or modules that cannot be
    bundled.
    """
    app_file = app_file.resolve()
    folder = app_file.parent
    module = import_app_file(app_file)
    classes = [app] if app is not None else app_classes(module)
    root = bundle_root(folder, classes)
    entries: dict[str, Path | bytes] = {p.relative_to(root).as_posix(): p
                                        for p in {app_file, *_local_module_files(folder)}}
    for cls in classes:
        _add(entries, app_file_entries(root, folder, cls))
        _add(entries, local_module_entries(cls.local_python_modules or ()))
    if root != folder:
        _add(entries, {app_file.name: _entry_loader(folder.relative_to(root), app_file.name)})
    data = _archive(entries)
    return Bundle(data=data, sha256=hashlib.sha256(data).hexdigest())


def _entry_loader(folder: Path, file_name: str) -> bytes:
    """The bundle root's module that loads the app file `folder/file_name` (both relative to
    the root) as itself: the module's docstring says why."""
    return (
        '"""Written by falrt (falrt/bundle.py): loads the app module from '
        f'{(folder / file_name).as_posix()}."""\n'
        "import importlib.util\nimport os\nimport sys\n\n"
        "_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "
        f"*{list(folder.parts)!r})\n"
        "sys.path.insert(0, _FOLDER)\n"
        "os.chdir(_FOLDER)\n"
        f"_SPEC = importlib.util.spec_from_file_location(__name__, os.path.join(_FOLDER, "
        f"{file_name!r}))\n"
        "_MODULE = importlib.util.module_from_spec(_SPEC)\n"
        "sys.modules[__name__] = _MODULE  # what importing this module returns\n"
        "_SPEC.loader.exec_module(_MODULE)\n"
    ).encode()


def _add(entries: dict[str, Path | bytes], more: Mapping[str, Path | bytes]) -> None:
    """Adds `more`; raises `InvalidArgumentError` when a name would hold two files."""
    for name, source in more.items():
        if entries.setdefault(name, source) != source:
            raise InvalidArgumentError(f"bundle entry {quote(name)} would be both "
                                       f"{_shown(entries[name])} and {_shown(source)}")


def _shown(source: Path | bytes) -> str:
    return str(source) if isinstance(source, Path) else "falrt's loader of the app module"


def _module_path(module: ModuleType) -> Path | None:
    file = getattr(module, "__file__", None)
    return Path(file).resolve() if isinstance(file, str) else None


def _local_module_files(root: Path) -> set[Path]:
    """Files of loaded modules under `root`: module files, and all files of packages."""
    files: set[Path] = set()
    for name, module in list(sys.modules.items()):
        path = _module_path(module)
        if path is None or name.partition(".")[0] in _RUNTIME_PACKAGES:
            continue
        if not _is_bundleable(root, path):
            continue
        if hasattr(module, "__path__"):
            files.update(_package_files(root, path.parent))
        else:
            files.add(path)
    return files


def _is_bundleable(root: Path, path: Path) -> bool:
    """True for a source file under `root`, outside hidden folders, caches and venvs."""
    if not path.is_relative_to(root) or not path.is_file():
        return False
    parts = path.relative_to(root).parts
    if any(p in _SKIPPED_DIRS or p.startswith(".") or p == "site-packages" for p in parts):
        return False
    return path.suffix not in _SKIPPED_SUFFIXES


def _package_files(root: Path, package_dir: Path) -> set[Path]:
    return {p for p in package_dir.rglob("*") if _is_bundleable(root, p)}


def pack_folder(folder: Path) -> bytes:
    """The unpacked bundle in `folder` packed again (a gzipped tar `unpack` takes), for a
    runner on a host that does not share the server's disk. Blocking."""
    files = {path.relative_to(folder).as_posix(): path
             for path in folder.rglob("*") if path.is_file() and not path.is_symlink()}
    return _archive(files)


def _archive(entries: Mapping[str, Path | bytes]) -> bytes:
    """A gzipped tar of `entries` (name -> file or content, sorted by name), all metadata
    normalised."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, source in sorted(entries.items()):
            content = source if isinstance(source, bytes) else source.read_bytes()
            tar.addfile(_entry(name, len(content)), io.BytesIO(content))
    return buffer.getvalue()


def _entry(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def unpack(data: bytes, dest: Path, *, max_bytes: int, max_files: int = 10000) -> None:
    """Safely extracts the bundle `data` into the folder `dest`.

    Only regular files and folders are accepted; absolute names, `..` escapes, links,
    devices, more than `max_files` entries or more than `max_bytes` of content raise
    `InvalidArgumentError`, and nothing is left behind. The archive is extracted into a
    temporary sibling folder, then renamed to `dest` atomically. If `dest` exists already it
    is assumed to hold the same content (bundles are content-addressed) and is kept.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _extract(data, tmp, max_bytes=max_bytes, max_files=max_files)
        _publish(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, dest: Path) -> None:
    """Renames `tmp` to `dest`; a `dest` already there (another unpack won) is kept."""
    if dest.exists():
        return
    try:
        os.rename(tmp, dest)
    except OSError:
        if not dest.is_dir():
            raise


class _Counted:
    """The decompressed archive as tarfile reads it, every byte (headers included) counted
    against the bundle's limit: a small bundle cannot make extraction read more than that,
    whatever its headers declare."""

    def __init__(self, source: gzip.GzipFile, limit: int) -> None:
        self._source = source
        self._limit = limit
        self._read = 0

    def read(self, size: int = -1) -> bytes:
        left = self._limit + 1 - self._read
        data = self._source.read(left if size < 0 else min(size, left))
        self._read += len(data)
        if self._read > self._limit:
            raise InvalidArgumentError(
                f"bundle is larger than {self._limit} bytes once decompressed (its headers "
                "count too)")
        return data


def _extract(data: bytes, root: Path, *, max_bytes: int, max_files: int) -> None:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as gz, \
                tarfile.open(fileobj=_Counted(gz, max_bytes), mode="r|") as tar:  # type: ignore[call-overload]
            _extract_members(tar, root, max_bytes=max_bytes, max_files=max_files)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        # (ValueError: names and PAX records that do not decode)
        raise InvalidArgumentError(f"bundle is not a valid gzipped tar: {exc}") from exc
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        # A file and a folder (or two files) claim the same name.
        raise InvalidArgumentError(f"bundle has conflicting entries: {exc}") from exc


def _extract_members(tar: tarfile.TarFile, root: Path, *, max_bytes: int, max_files: int) -> None:
    total_bytes = 0
    seen: set[str] = set()
    for count, member in enumerate(tar, start=1):
        if count > max_files:
            raise InvalidArgumentError(f"bundle has more than {max_files} entries")
        target = _checked_target(root, member, seen)
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        total_bytes += member.size
        if total_bytes > max_bytes:
            raise InvalidArgumentError(f"bundle content is larger than {max_bytes} bytes")
        _write_file(tar, member, target)


def _checked_target(root: Path, member: tarfile.TarInfo, seen: set[str]) -> Path:
    """Where `member` goes under `root`; raises for unsafe names, kinds and duplicates."""
    if not (member.isfile() or member.isdir()):
        raise InvalidArgumentError(
            f"bundle entry {quote(member.name)}: only regular files and folders are allowed "
            "(no links or devices)"
        )
    name = PurePosixPath(member.name)
    encoded = os.fsencode(member.name)  # (ValueError for a name no filesystem can hold)
    if len(encoded) > MAX_NAME_BYTES or any(len(p) > MAX_PART_BYTES for p in encoded.split(b"/")):
        raise InvalidArgumentError(
            f"bundle entry {quote(member.name)}: names may have at most {MAX_NAME_BYTES} "
            f"bytes in UTF-8, {MAX_PART_BYTES} per folder or file name")
    if not member.name or name.is_absolute() or ".." in name.parts or "\x00" in member.name:
        raise InvalidArgumentError(f"bundle entry {quote(member.name)}: path escapes the bundle")
    key = name.as_posix()
    if key in seen and not member.isdir():
        raise InvalidArgumentError(f"bundle entry {quote(member.name)} appears twice")
    seen.add(key)
    target = root.joinpath(*name.parts)
    if not target.resolve().is_relative_to(root.resolve()):
        raise InvalidArgumentError(f"bundle entry {quote(member.name)}: path escapes the bundle")
    return target


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    source = tar.extractfile(member)
    if source is None:
        raise InvalidArgumentError(f"bundle entry {quote(member.name)} has no content")
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("xb") as out:
        while chunk := source.read(_CHUNK_BYTES):
            out.write(chunk)
    target.chmod(0o644)
