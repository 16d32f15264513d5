"""The file store (docs/files.md): one contract (`base.py`), one module per implementation,
and the table below that maps `--file-store` to one."""

from __future__ import annotations

from collections.abc import Callable

from falrt.files.base import FileStore
from falrt.files.local import LocalFileStore
from falrt.settings import ServerSettings

FILES_DIR = "files"


def create_file_store(settings: ServerSettings) -> FileStore:
    """The file store the settings name; ValueError for an unknown one, or for `s3`
    without a bucket or without boto3 (the `s3` extra)."""
    stores: dict[str, Callable[[], FileStore]] = {
        "local": lambda: LocalFileStore(settings.data_dir / FILES_DIR),
        "s3": lambda: _s3_store(settings),
    }
    make = stores.get(settings.file_store)
    if make is None:
        raise ValueError(f"unknown file store {settings.file_store!r}: one of "
                         f"{', '.join(sorted(stores))}")
    return make()


def _s3_store(settings: ServerSettings) -> FileStore:
    if not settings.s3_bucket:
        raise ValueError("the s3 file store needs a bucket (--s3-bucket)")
    try:
        from falrt.files.s3 import S3FileStore
    except ImportError as exc:
        raise ValueError(f"the s3 file store needs boto3: pip install 'falrt[s3]' ({exc})") \
            from None
    return S3FileStore(settings.s3_bucket, settings.s3_endpoint, settings.s3_region)
