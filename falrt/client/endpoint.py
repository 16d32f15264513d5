"""Endpoint references: `owner/app` ids, optionally followed by a path inside the app."""

from __future__ import annotations

from falrt.errors import InvalidArgumentError


def normalize_path(path: str) -> str:
    """An endpoint path with exactly one leading slash; "" means "/"."""
    return "/" + path.strip("/") if path.strip("/") else "/"


def split_endpoint_ref(ref: str, path: str | None = None) -> tuple[str, str]:
    """Splits `owner/app[/sub/path]` into `("owner/app", "/sub/path")`.

    An explicit `path` wins, but may not be combined with a path inside `ref`.
    Raises `InvalidArgumentError` for a reference without owner and app.
    """
    owner, _, rest = ref.strip("/").partition("/")
    app, _, ref_path = rest.partition("/")
    if not owner or not app:
        raise InvalidArgumentError(f"endpoint id {ref!r} is not of the form owner/app[/path]")
    if path is not None and ref_path:
        raise InvalidArgumentError(
            f"endpoint id {ref!r} already has a path; give the path only once"
        )
    return f"{owner}/{app}", normalize_path(path if path is not None else ref_path)
