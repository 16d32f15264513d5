"""The file store (docs/files.md): one contract (`base.py`), one module per implementation,
and the table below that maps `--file-store` to one."""

from __future__ import annotations

from falrt.files.base import FileStore
from falrt.files.local import LocalFileStore
from falrt.settings import ServerSettings

FILES_DIR = "files"


def create_file_store(settings: ServerSettings) -> FileStore:
    """The file store the settings name; ValueError for an unknown one."""
    stores = {"local": lambda: LocalFileStore(settings.data_dir / FILES_DIR)}
    make = stores.get(settings.file_store)
    if make is None:
        raise ValueError(f"unknown file store {settings.file_store!r}: one of "
                         f"{', '.join(sorted(stores))}")
    return make()
