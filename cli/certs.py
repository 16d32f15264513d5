"""`falrt certs dev`: a local CA and certificates to try TLS on one machine
(`falrt.dev_certs`; the `cryptography` package loads for this command only)."""

from __future__ import annotations

from pathlib import Path

import click

from .extras import server_extra


@click.group()
def certs() -> None:
    """Certificates for TLS."""


@certs.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="where to write them (default ~/.config/falrt/dev-certs)")
@click.option("--host", "hosts", multiple=True, metavar="NAME",
              help="another name or address the server certificate names, besides "
                   "localhost, 127.0.0.1 and ::1 (repeat for more)")
@click.option("--force", is_flag=True, help="replace the certificates the directory holds")
def dev(directory: Path | None, hosts: tuple[str, ...], force: bool) -> None:
    """Make a local CA, a server certificate and client certificates (for mutual TLS and
    for runners), and print how to use them. For trying TLS, not for production."""
    with server_extra("certs dev"):  # cryptography loads only here
        from falrt import dev_certs

    target = (directory or dev_certs.default_dir()).expanduser().resolve()
    try:
        made = dev_certs.make(target, hosts, force=force)
    except dev_certs.DevCertsExist as exc:
        raise click.ClickException(f"{exc}: pass --force to replace them") from None
    click.echo(_instructions(made))


def _instructions(made: object) -> str:
    from falrt.dev_certs import DevCerts

    assert isinstance(made, DevCerts)
    p = made.path
    return "\n".join([
        f"wrote a CA and certificates for {', '.join(made.names)} to {made.directory}",
        "(keys mode 0600; the CA's key was not kept)",
        "",
        "serve over TLS:",
        f"  falrt server --tls-cert {p('server.pem')} --tls-key {p('server.key')}",
        "point the CLI (and the Python clients) at it:",
        "  export FALRT_HOST=https://127.0.0.1:50051",
        f"  export FALRT_TLS_CA={p('ca.pem')}",
        "",
        "mutual TLS (every client shows a certificate): add to the server",
        f"  --tls-client-ca {p('ca.pem')} --tls-runner-cert {p('runner.pem')} "
        f"--tls-runner-key {p('runner.key')}",
        "and to the clients",
        f"  export FALRT_TLS_CLIENT_CERT={p('client.pem')} FALRT_TLS_CLIENT_KEY={p('client.key')}",
    ])
