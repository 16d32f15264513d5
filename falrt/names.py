"""App, environment and endpoint names, shared by the server, the client and the CLI.

An app `x` in the environment `staging` is known everywhere as `x--staging` (its endpoint
id is `owner/x--staging`, as fal's); in `main` it is just `x`. So an app name may not
contain `--`.
"""

from __future__ import annotations

import re

from falrt.errors import quote

MAIN = "main"
APP_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
ENV_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
SEPARATOR = "--"


def check_app_name(name: str) -> None:
    """Raises ValueError for a name an app cannot have."""
    if not APP_NAME.match(name) or SEPARATOR in name:
        raise ValueError(
            f"invalid app name {quote(name)}: use lowercase letters, digits and single dashes (at "
            "most 63), starting and ending with a letter or digit")


def check_environment(name: str) -> None:
    if not ENV_NAME.match(name) or SEPARATOR in name:
        raise ValueError(
            f"invalid environment name {quote(name)}: use lowercase letters, digits and single "
            "dashes (at most 32)")


def full_name(app: str, environment: str = "") -> str:
    """The name an app has everywhere: `x` in main, `x--staging` elsewhere."""
    return app if environment in ("", MAIN) else f"{app}{SEPARATOR}{environment}"


def split_name(name: str) -> tuple[str, str]:
    """(app, environment) of a full app name."""
    app, sep, environment = name.partition(SEPARATOR)
    return (app, environment) if sep else (app, MAIN)


def environment_of(name: str) -> str:
    return split_name(name)[1]


# A secret's name: an environment variable's (the runner gets it as one).
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def is_secret_name(name: str) -> bool:
    return SECRET_NAME.match(name) is not None
