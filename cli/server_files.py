"""`falrt server`'s file store options (docs/files.md), added to the command as one decorator
and passed down as the ServerSettings fields they set."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click

from falrt.settings import ServerSettings

R = TypeVar("R")
_DEFAULTS = ServerSettings()
FIELDS = ("file_store", "max_file_bytes", "file_expiry_s", "s3_endpoint", "s3_bucket",
          "s3_region", "payload_ref_bytes")


def file_options(command: Callable[..., R]) -> Callable[..., R]:
    """Adds --file-store, --max-file-bytes, --file-expiry, --payload-ref-bytes and the
    --s3-* options to `command`, which receives them as `file_settings` (ServerSettings
    field -> value).
    The S3 credentials are not options: boto3 reads AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY (or ~/.aws) itself, so they never reach settings or logs."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        settings = {name: kwargs.pop(name) for name in FIELDS}
        if settings["file_store"] == "s3" and not settings["s3_bucket"]:
            raise click.BadParameter("--file-store s3 needs --s3-bucket",
                                     param_hint="--s3-bucket")
        return command(*args, file_settings=settings, **kwargs)

    decorated: Callable[..., R] = click.option(
        "--s3-region", "s3_region", envvar="FALRT_S3_REGION", default="",
        help="the S3 file store's region (env FALRT_S3_REGION; default: boto3's, "
             "AWS_DEFAULT_REGION)")(wrapper)
    decorated = click.option(
        "--s3-bucket", "s3_bucket", envvar="FALRT_S3_BUCKET", default="",
        help="the bucket of --file-store s3, which must exist (env FALRT_S3_BUCKET)")(decorated)
    decorated = click.option(
        "--s3-endpoint", "s3_endpoint", envvar="FALRT_S3_ENDPOINT", default="",
        callback=_endpoint,
        help="the URL of an S3-compatible service for --file-store s3, such as "
             "http://minio:9000 (env FALRT_S3_ENDPOINT; default: AWS S3)")(decorated)
    decorated = click.option(
        "--file-expiry", "file_expiry_s", envvar="FALRT_FILE_EXPIRY_S",
        type=click.FloatRange(min=1), default=_DEFAULTS.file_expiry_s, show_default=True,
        help="seconds an uploaded file is kept unless its upload says otherwise "
             "(env FALRT_FILE_EXPIRY_S)")(decorated)
    decorated = click.option(
        "--payload-ref-bytes", "payload_ref_bytes", envvar="FALRT_PAYLOAD_REF_BYTES",
        type=click.IntRange(min=0), default=_DEFAULTS.payload_ref_bytes, show_default=True,
        help="a payload over this many bytes travels by file reference, not inline (runner "
             "outputs, HTTP inputs; 0: always inline) (env FALRT_PAYLOAD_REF_BYTES)")(decorated)
    decorated = click.option(
        "--max-file-bytes", "max_file_bytes", envvar="FALRT_MAX_FILE_BYTES",
        type=click.IntRange(min=0), default=_DEFAULTS.max_file_bytes, show_default=True,
        help="the largest file an upload may announce (env FALRT_MAX_FILE_BYTES)")(decorated)
    return click.option(
        "--file-store", "file_store", envvar="FALRT_FILE_STORE",
        type=click.Choice(["local", "s3"]), default=_DEFAULTS.file_store, show_default=True,
        help="where uploaded files live: local (<data dir>/files), or s3 (a bucket of an "
             "S3-compatible service, which several servers can share: --s3-*)")(decorated)


def _endpoint(context: click.Context, param: click.Parameter, value: str) -> str:
    """--s3-endpoint: an http(s) URL without credentials in it (they would be logged)."""
    parsed = urlsplit(value)
    if value and (parsed.scheme not in ("http", "https") or not parsed.hostname):
        raise click.BadParameter("give an http(s) URL such as http://127.0.0.1:9000")
    if parsed.username or parsed.password:
        raise click.BadParameter("put no credentials in the URL: set AWS_ACCESS_KEY_ID "
                                 "and AWS_SECRET_ACCESS_KEY")
    return value.rstrip("/")
