"""`falrt images build-base|build-env`: container images for the docker backend.

These talk to the local Docker engine (not to a falrt server). Progress and build logs go to
stderr; the result (the image reference) goes to stdout, as JSON with `--output json`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.status import Status

from falrt.images import DEFAULT_MIRROR, DEFAULT_SUITE

from .errors import CliError
from .extras import server_extra
from .render import OutputFormat, output_option, print_json, stderr, stdout

registry_option = click.option(
    "--registry", default=None, metavar="HOST:PORT[/PREFIX]",
    help="name the image in this registry and push it there")
no_cache_option = click.option(
    "--no-cache", is_flag=True, help="build even when an image with this tag exists")


@click.group()
def images() -> None:
    """Container images: the Debian-built base image and environment images."""


@contextmanager
def progress(title: str, output: OutputFormat) -> Iterator[Callable[[str], None]]:
    """A line sink that shows the latest log line under a spinner (people) or nothing."""
    started = time.monotonic()
    if output == "json":
        yield lambda line: None
        return
    with Status(title, console=stderr) as status:
        def show(line: str) -> None:
            elapsed = time.monotonic() - started
            status.update(f"{title} [dim]{elapsed:4.0f}s  {line[:100]}[/dim]")
        yield show


@images.command("build-base")
@click.option("--python", "python", default="3.11", show_default=True,
              help="Python version (the suite must ship it)")
@click.option("--suite", default=DEFAULT_SUITE, show_default=True, help="Debian suite")
@click.option("--mirror", default=DEFAULT_MIRROR, show_default=True, help="Debian mirror")
@click.option("--tag", default=None, metavar="NAME[:TAG]",
              help="image name (default falrt-base:<hash of the inputs>)")
@registry_option
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="add these CA certificates (PEM) to the image's trust store")
@no_cache_option
@output_option
def build_base_command(
    python: str, suite: str, mirror: str, tag: str | None, registry: str | None,
    ca_bundle: Path | None, no_cache: bool, output: OutputFormat,
) -> None:
    """Build a Python base image from Debian packages (mmdebstrap; no Docker Hub needed)."""
    with server_extra("images build-base"):  # the docker SDK loads only here
        from falrt.images.base import BaseSpec, build_base
        from falrt.images.engine import ImageError
    spec = BaseSpec(python=python, suite=suite, mirror=mirror,
                    ca_bundle=ca_bundle.read_bytes() if ca_bundle else None)
    try:
        with progress(f"base image (Debian {suite}, Python {python})", output) as sink:
            result = build_base(spec, tag=tag, registry=registry, no_cache=no_cache,
                                on_line=sink)
    except ImageError as exc:
        raise CliError(str(exc)) from exc
    if output == "json":
        print_json({"ref": result.ref, "id": result.image_id, "cached": result.cached,
                    "pushed": result.pushed, "seconds": round(result.seconds, 2)})
        return
    how = "reused" if result.cached else "built"
    pushed = ", pushed" if result.pushed else ""
    stderr.print(f"{how}{pushed} in {result.seconds:.1f}s")
    stdout.print(result.ref)


@images.command("build-env")
@click.option("--base", required=True, help="base image (see build-base)")
@click.option("-r", "--requirement", "requirements", multiple=True,
              help="a pip requirement (repeatable)")
@registry_option
@no_cache_option
@output_option
def build_env_command(
    base: str, requirements: tuple[str, ...], registry: str | None, no_cache: bool,
    output: OutputFormat,
) -> None:
    """Build (or reuse) the environment image for some requirements: base, shim, requirements."""
    with server_extra("images build-env"):  # the docker SDK loads only here
        from falrt.images.build import EnvironmentImageBuilder
        from falrt.images.engine import ImageError
    builder = EnvironmentImageBuilder(registry=registry)
    log = (lambda line: None) if output == "json" else (lambda line: stderr.print(line,
                                                                                  markup=False))
    try:
        result = builder.ensure_blocking(base, requirements, no_cache=no_cache, on_line=log)
    except ImageError as exc:
        raise CliError(str(exc)) from exc
    if output == "json":
        print_json({"ref": result.ref, "id": result.image_id, "key": result.key,
                    "built": result.built, "pulled": result.pulled, "pushed": result.pushed,
                    "seconds": round(result.seconds, 2)})
        return
    how = "built" if result.built else ("pulled" if result.pulled else "reused")
    stderr.print(f"{how} in {result.seconds:.1f}s")
    stdout.print(result.ref)
