"""`falrt files`: upload, download, list and delete files of the server's file store
(docs/files.md)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from falrt.client.connection import channel, resolve_target
from falrt.client.files import FilesClient
from falrt.v1 import files_pb2

from .context import CliContext, pass_cli
from .errors import reporting_errors
from .json_shapes import message_json
from .render import OutputFormat, output_option, print_json, print_listing, say, stderr

# Files at least this large get a progress bar (for people: not with --output json).
PROGRESS_BYTES = 8 * 1024 * 1024
_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@click.group()
def files() -> None:
    """Files in the server's file store, fetched by signed URL or id."""


@contextlib.contextmanager
def _client(cli: CliContext) -> Iterator[FilesClient]:
    with reporting_errors(cli.host):
        grpc_channel = channel(resolve_target(cli.host, **cli.connect))
        try:
            yield FilesClient(grpc_channel)
        finally:
            grpc_channel.close()


@contextlib.contextmanager
def _progress(size: int, what: str, show: bool) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr for `size` bytes when `show` and the file is large; yields
    the callback that moves it (None: no bar)."""
    if not show or size < PROGRESS_BYTES:
        yield None
        return
    with Progress("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=stderr, transient=True) as progress:
        task = progress.add_task(what, total=size)
        yield lambda done: progress.update(task, completed=done)


def _seconds(value: str) -> int:
    match = _DURATION.fullmatch(value.strip().lower())
    if match is None or int(match.group(1)) <= 0:
        raise click.BadParameter("a duration such as 90, 90s, 15m, 12h or 7d",
                                 param_hint="--expires-in")
    return int(match.group(1)) * _UNITS[match.group(2)]


@files.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--expires-in", "expires_in", default="", metavar="DURATION",
              help="keep the file this long (90s, 15m, 12h, 7d); default: the server's")
@click.option("--content-type", "content_type", default="",
              help="its media type; default: guessed from its name")
@output_option
@pass_cli
def upload(cli: CliContext, path: Path, expires_in: str, content_type: str,
           output: OutputFormat) -> None:
    """Upload a file; print its signed URL (resumed if the connection breaks)."""
    expires_in_s = _seconds(expires_in) if expires_in else 0
    size = path.stat().st_size
    with _client(cli) as client, _progress(size, path.name, output == "table") as progress:
        info = client.upload(path, content_type=content_type, expires_in_s=expires_in_s,
                             progress=progress)
    if output == "json":
        print_json(message_json(info))
        return
    say(f"uploaded {path} as {info.file_id} ({info.size} bytes, sha256 {info.sha256})")
    click.echo(info.url or info.file_id)


@files.command("get")
@click.argument("file_id")
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="where to write it; default: its name, here")
@output_option
@pass_cli
def get(cli: CliContext, file_id: str, out: Path | None, output: OutputFormat) -> None:
    """Download a file by id."""
    with _client(cli) as client:
        info = client.stat(file_id)
        target = out or Path(info.name)
        with _progress(info.size, info.name, output == "table") as progress:
            info = client.download(file_id, target, progress)
    if output == "json":
        print_json({**message_json(info), "path": str(target)})
        return
    say(f"wrote {target} ({info.size} bytes, sha256 {info.sha256})")


@files.command("list")
@click.option("--limit", type=click.IntRange(min=1, max=1000), default=1000, show_default=True)
@output_option
@pass_cli
def list_files(cli: CliContext, limit: int, output: OutputFormat) -> None:
    """List the files that have not expired, newest first."""
    with _client(cli) as client:
        infos = client.list(limit)
    print_listing(output, infos, "Files", ["id", "name", "size", "type", "state", "expires"],
                  _row)


def _row(info: files_pb2.FileInfo) -> list[str]:
    state = "complete" if info.complete else f"partial ({info.received} bytes)"
    return [info.file_id, info.name, str(info.size), info.content_type, state,
            info.expires_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")]


@files.command("rm")
@click.argument("file_ids", nargs=-1, required=True, metavar="ID...")
@output_option
@pass_cli
def rm(cli: CliContext, file_ids: tuple[str, ...], output: OutputFormat) -> None:
    """Delete files (their URLs stop working at once)."""
    with _client(cli) as client:
        for file_id in file_ids:
            client.delete(file_id)
    if output == "json":
        print_json({"deleted": list(file_ids)})
        return
    say(f"deleted {len(file_ids)} file(s)")
