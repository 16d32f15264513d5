"""`falrt envs`, `falrt secrets` and `falrt keys`: environments, their secrets, API keys."""

from __future__ import annotations

import sys
from typing import TextIO

import click

from falrt.client.control import ControlClient
from falrt.names import is_secret_name

from .context import CliContext, env_option, pass_cli
from .errors import reporting_errors
from .json_shapes import message_json
from .render import (
    OutputFormat,
    age,
    output_option,
    print_done,
    print_json,
    print_listing,
    stderr,
)


@click.group()
def envs() -> None:
    """Environments: apps and secrets of one do not see another's."""


@envs.command("create")
@click.argument("name")
@click.option("--description", default="", help="what the environment is for")
@output_option
@pass_cli
def create_env(cli: CliContext, name: str, description: str, output: OutputFormat) -> None:
    """Create an environment (deploy into it with `falrt deploy --env NAME`)."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        info = control.create_environment(name, description)
    print_done(output, message_json(info), f"created environment {name}")


@envs.command("list")
@output_option
@pass_cli
def list_envs(cli: CliContext, output: OutputFormat) -> None:
    """List environments."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        infos = control.list_environments()
    print_listing(output, infos, "Environments", ["name", "description", "default", "created"],
                  lambda e: [e.name, e.description or "-", "yes" if e.is_default else "",
                             age(e.created_at)])


@envs.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="do not ask (the apps, revisions and secrets go too)")
@output_option
@pass_cli
def delete_env(cli: CliContext, name: str, yes: bool, output: OutputFormat) -> None:
    """Delete an environment with its apps, revisions and secrets."""
    if not yes:
        click.confirm(f"delete environment {name} with all its apps and secrets?", abort=True)
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        reply = control.delete_environment(name)
    print_done(output, {"name": name, **message_json(reply)},
               f"deleted environment {name}: {len(reply.apps)} app(s), {reply.secrets} secret(s)")


@click.group()
def secrets() -> None:
    """Secrets of an environment, given to its runners as environment variables."""


@secrets.command("set")
@click.argument("pairs", nargs=-1, required=True, metavar="NAME | NAME=VALUE...")
@click.option("--from-file", "from_file", type=click.File("r"), default=None,
              help="read the value of the NAME given alone from this file (`-`: standard input)")
@env_option
@output_option
@pass_cli
def set_secrets(
    cli: CliContext, pairs: tuple[str, ...], from_file: TextIO | None, env: str,
    output: OutputFormat,
) -> None:
    """Set secrets. Give a NAME alone and its value is read from --from-file, from standard
    input when it is not a terminal, or else asked for without echo; NAME=VALUE also works,
    but puts the value in the process list and the shell's history. Runners started from now
    on get them (`falrt apps rollout` replaces running ones)."""
    values: dict[str, str] = {}
    alone: list[str] = []
    for position, pair in enumerate(pairs, 1):
        name, sep, value = pair.partition("=")
        if not is_secret_name(name):  # the argument may be a value: it is never echoed
            raise click.BadParameter(
                f"argument {position} is neither NAME nor NAME=VALUE (a NAME has letters, "
                "digits and underscores, not starting with a digit)", param_hint="NAME")
        if sep:
            values[name] = value
        else:
            alone.append(name)
    if values:
        stderr.print("warning: NAME=VALUE puts the value in the process list and the shell's "
                     "history; `falrt secrets set NAME --from-file FILE` (or `-` for standard "
                     "input) does not", style="yellow", highlight=False)
    if len(alone) > 1 or (from_file is not None and not alone):
        raise click.BadParameter("give exactly one NAME alone to read its value",
                                 param_hint="NAME")
    if alone:
        values[alone[0]] = _secret_value(alone[0], from_file)
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        names = control.set_secrets(env, values)
    print_done(output, {"environment": env, "names": names}, f"set {', '.join(names)} in {env}")


@secrets.command("list")
@env_option
@output_option
@pass_cli
def list_secrets(cli: CliContext, env: str, output: OutputFormat) -> None:
    """List secret names (values are never shown)."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        infos = control.list_secrets(env)
    print_listing(output, infos, f"Secrets of {env}", ["name", "created", "updated"],
                  lambda s: [s.name, age(s.created_at), age(s.updated_at)])


@secrets.command("unset")
@click.argument("name")
@env_option
@output_option
@pass_cli
def unset_secret(cli: CliContext, name: str, env: str, output: OutputFormat) -> None:
    """Remove a secret (runners started from now on no longer get it)."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        control.unset_secret(env, name)
    print_done(output, {"environment": env, "name": name, "unset": True},
               f"unset {name} in {env}")


@click.group()
def keys() -> None:
    """API keys: `key_id:secret`, sent as `authorization: Key key_id:secret`."""


@keys.command("create")
@click.option("--scope", type=click.Choice(["ADMIN", "API"], case_sensitive=False),
              required=True, help="ADMIN: the control plane and every app; API: calling apps")
@click.option("--description", default="", help="what the key is for")
@click.option("--owner", default="", help="whose key it is (default: the server's owner)")
@output_option
@pass_cli
def create_key(
    cli: CliContext, scope: str, description: str, owner: str, output: OutputFormat
) -> None:
    """Create a key and print it (the only time it is shown)."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        reply = control.create_key(scope.upper(), description, owner)
    if output == "json":
        print_json({**message_json(reply.info), "key": reply.key})
        return
    stderr.print(f"created {reply.info.scope} key {reply.info.key_id} for "
                 f"{reply.info.owner}; it is shown only now:", highlight=False)
    click.echo(reply.key)


@keys.command("list")
@output_option
@pass_cli
def list_keys(cli: CliContext, output: OutputFormat) -> None:
    """List keys (ids, scopes, owners; never the secrets)."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        infos = control.list_keys()
    print_listing(output, infos, "API keys",
                  ["key id", "scope", "owner", "description", "created", "revoked"],
                  lambda k: [k.key_id, k.scope, k.owner, k.description or "-",
                             age(k.created_at), age(k.revoked_at)])


@keys.command("revoke")
@click.argument("key_id")
@output_option
@pass_cli
def revoke_key(cli: CliContext, key_id: str, output: OutputFormat) -> None:
    """Revoke a key: calls with it are refused from now on."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        control.revoke_key(key_id)
    print_done(output, {"key_id": key_id, "revoked": True}, f"revoked {key_id}")


def _secret_value(name: str, source: TextIO | None) -> str:
    """A secret's value from `source`, from standard input when it is not a terminal, or
    asked for without echo; one trailing newline is not part of it."""
    if source is None and sys.stdin.isatty():
        return str(click.prompt(f"value of {name}", hide_input=True))
    text = (source or sys.stdin).read()
    return text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
