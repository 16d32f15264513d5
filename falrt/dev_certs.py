"""`falrt certs dev`: a local CA and the certificates to try TLS on one machine.

Writes, in one directory (mode 0700; every key mode 0600):

- `ca.pem`: the CA's certificate, for clients (`falrt --tls-ca`) and for a mutual-TLS
  server (`falrt server --tls-client-ca`);
- `server.pem`, `server.key`: the server's certificate (followed by the CA's, so that the
  file alone lets runners verify the server) and its key (`--tls-cert`, `--tls-key`);
- `client.pem`, `client.key`: a client certificate for mutual TLS
  (`falrt --tls-client-cert/--tls-client-key`);
- `runner.pem`, `runner.key`: the runners' client certificate for mutual TLS
  (`falrt server --tls-runner-cert/--tls-runner-key`).

The server certificate names localhost, 127.0.0.1, ::1 and the hosts given. The CA's key is
not kept: nothing more can be signed with it (run the command again for other names, and
hand out the new `ca.pem`). For trying TLS only: a real deployment uses certificates of the
operator's own CA or a public one. Needs the `cryptography` package (loaded with this module
only, never by the clients).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
FILES = ("ca.pem", "server.pem", "server.key", "client.pem", "client.key", "runner.pem",
         "runner.key")


class DevCertsExist(FileExistsError):
    """The directory already holds certificates (and `force` was not given)."""


@dataclass(frozen=True)
class DevCerts:
    """Where `make` wrote the files."""

    directory: Path
    names: tuple[str, ...]  # what the server certificate names

    def path(self, name: str) -> Path:
        return self.directory / name


def default_dir(environ: dict[str, str] | None = None) -> Path:
    """`$XDG_CONFIG_HOME/falrt/dev-certs`, or `~/.config/falrt/dev-certs`."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "falrt" / "dev-certs"


def make(directory: Path, hosts: Sequence[str] = (), *, force: bool = False) -> DevCerts:
    """Makes the CA and the certificates in `directory`. Raises DevCertsExist when it holds
    some already, unless `force`."""
    if not force and any((directory / name).exists() for name in FILES):
        raise DevCertsExist(f"{directory} already holds certificates")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    names = tuple(dict.fromkeys((*LOCAL_NAMES, *hosts)))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _ca_certificate(ca_key)
    _write(directory / "ca.pem", _pem(ca))
    server_key, server = _leaf(ca, ca_key, "falrt server", ExtendedKeyUsageOID.SERVER_AUTH,
                               names)
    _write(directory / "server.pem", _pem(server) + _pem(ca))
    _write(directory / "server.key", _key_pem(server_key), private=True)
    for role in ("client", "runner"):
        key, cert = _leaf(ca, ca_key, f"falrt {role}", ExtendedKeyUsageOID.CLIENT_AUTH, ())
        _write(directory / f"{role}.pem", _pem(cert))
        _write(directory / f"{role}.key", _key_pem(key), private=True)
    return DevCerts(directory, names)


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "falrt dev CA")])
    return (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )


def _leaf(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, common_name: str,
    usage: x509.ObjectIdentifier, names: Sequence[str],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _builder(subject, ca.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return x509.DNSName(name)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Writes `path` anew; mode 0600 for a key (set before a byte is written)."""
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)
