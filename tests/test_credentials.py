"""Which key and which transport a client gets for a server: keys belong to one server
address (in any spelling of it), there is no default key for other hosts, and a key never
travels in clear to another machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from falrt import errors
from falrt.client import credentials
from falrt.client.connection import resolve_target
from falrt.settings import TlsFiles
from falrt.tls import TlsError, check
from shim.settings import SettingsError, ShimSettings

pytestmark = pytest.mark.unit

KEY = "k-1:secret"
OTHER = "k-2:other"


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A credentials file of the test's own, with nothing in it yet."""
    path = tmp_path / "credentials.json"
    monkeypatch.setenv(credentials.FILE_ENV, str(path))
    monkeypatch.delenv(credentials.KEY_ENV, raising=False)
    for name in ("FALRT_TLS_CA", "FALRT_TLS_CLIENT_CERT", "FALRT_TLS_CLIENT_KEY"):
        monkeypatch.delenv(name, raising=False)
    return path


@pytest.mark.parametrize(("address", "normal"), [
    ("127.0.0.1:50051", "127.0.0.1:50051"),
    ("https://127.0.0.1:50051", "127.0.0.1:50051"),
    ("http://127.0.0.1:50051/", "127.0.0.1:50051"),
    ("localhost:50051", "127.0.0.1:50051"),
    ("LOCALHOST:50051", "127.0.0.1:50051"),
    ("[::1]:50051", "127.0.0.1:50051"),
    ("127.0.0.2:50051", "127.0.0.2:50051"),
    ("https://Falrt.Example.com", "falrt.example.com:443"),
    ("falrt.example.com.:443", "falrt.example.com:443"),
    ("grpcs://falrt.example.com:8443", "falrt.example.com:8443"),
    ("[2001:DB8:0:0::1]:50051", "[2001:db8::1]:50051"),
    ("10.0.0.5:50051", "10.0.0.5:50051"),
])
def test_an_address_is_recorded_in_one_normal_form(address: str, normal: str) -> None:
    assert credentials.normalise(address) == normal


@pytest.mark.parametrize(("address", "local"), [
    ("127.0.0.1:1", True), ("localhost:1", True), ("[::1]:1", True), ("https://localhost", True),
    ("unix:/tmp/falrt.sock", True), ("10.0.0.5:1", False), ("example.com:1", False),
    ("127.0.0.2:1", True), ("0.0.0.0:1", False), ("[::ffff:10.0.0.1]:1", False),
])
def test_only_loopback_names_are_local(address: str, local: bool) -> None:
    assert credentials.is_local(address) is local


def test_a_key_recorded_for_a_server_is_found_in_any_spelling_of_its_address(
    recorded: Path,
) -> None:
    credentials.save("127.0.0.1:50051", KEY)
    for spelling in ("127.0.0.1:50051", "https://localhost:50051", "[::1]:50051"):
        assert credentials.key_for(spelling) == KEY
    assert credentials.key_for("127.0.0.1:50052") is None
    assert json.loads(recorded.read_text()) == {"servers": {"127.0.0.1:50051": KEY}}
    assert recorded.stat().st_mode & 0o777 == 0o600


def test_an_old_default_key_is_never_sent_and_is_dropped_at_the_next_write(
    recorded: Path,
) -> None:
    recorded.write_text(json.dumps({"servers": {"a.example:1": KEY}, "default": KEY}))
    assert credentials.key_for("b.example:1") is None
    assert credentials.key_for("a.example:1") == KEY
    credentials.save("c.example:1", OTHER)
    assert "default" not in json.loads(recorded.read_text())


def test_an_explicit_key_wins_over_the_environment_which_wins_over_the_file(
    recorded: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    credentials.save("127.0.0.1:1", KEY)
    monkeypatch.setenv(credentials.KEY_ENV, OTHER)
    assert credentials.key_for("127.0.0.1:1") == OTHER
    assert credentials.key_for("elsewhere.example:1") == OTHER  # given: sent where told
    assert credentials.key_for("127.0.0.1:1", "k-3:given") == "k-3:given"


def test_forget_removes_the_key_of_one_server_only(recorded: Path) -> None:
    credentials.save("localhost:1", KEY)
    credentials.save("localhost:2", OTHER)
    assert credentials.forget("127.0.0.1:1")
    assert not credentials.forget("127.0.0.1:1")
    assert credentials.key_for("localhost:1") is None
    assert credentials.key_for("localhost:2") == OTHER


def test_a_server_without_a_recorded_key_gets_none(recorded: Path) -> None:
    credentials.save("127.0.0.1:50051", KEY)
    target = resolve_target("10.0.0.5:50051")
    assert (target.tls, target.api_key) == (False, None)
    target = resolve_target("https://falrt.example.com")
    assert (target.address, target.tls, target.api_key) == ("falrt.example.com", True, None)


def test_a_local_plaintext_server_gets_its_key(recorded: Path) -> None:
    credentials.save("127.0.0.1:50051", KEY)
    target = resolve_target("localhost:50051")
    assert (target.address, target.tls, target.api_key) == ("localhost:50051", False, KEY)


def test_the_server_name_a_runner_is_given_is_checked_over_tls_only(
    recorded: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FALRT_TLS_SERVER_NAME", "falrt.internal")
    assert resolve_target("https://127.0.0.1:50051").server_name == "falrt.internal"
    assert resolve_target("127.0.0.1:50051").server_name == ""


def test_a_key_for_a_remote_plaintext_server_is_refused_before_any_call(
    recorded: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(errors.InsecureConnectionError, match=r"https://10\.0\.0\.5:50051"):
        resolve_target("10.0.0.5:50051", key=KEY)
    monkeypatch.setenv(credentials.KEY_ENV, KEY)
    with pytest.raises(errors.InsecureConnectionError):
        resolve_target("falrt.example.com:50051")
    assert resolve_target("https://falrt.example.com:50051").api_key == KEY


def test_a_ca_file_means_tls_with_that_ca(
    recorded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    target = resolve_target("falrt.example.com:443", tls_ca=ca, key=KEY)
    assert (target.tls, target.ca, target.api_key) == (True, ca.read_bytes(), KEY)
    monkeypatch.setenv("FALRT_TLS_CA", str(ca))
    assert resolve_target("falrt.example.com:443").tls


def test_runners_of_a_mutual_tls_server_need_a_certificate_of_their_own(tmp_path: Path) -> None:
    files = TlsFiles(cert=tmp_path / "s.pem", key=tmp_path / "s.key")
    check(files)
    with pytest.raises(TlsError, match="--tls-runner-cert"):
        check(TlsFiles(cert=files.cert, key=files.key, client_ca=tmp_path / "ca.pem"))
    with pytest.raises(TlsError, match="go together"):
        check(TlsFiles(cert=files.cert, key=files.key, runner_cert=tmp_path / "r.pem"))


RUNNER = {"FALRT_SERVER": "127.0.0.1:1", "FALRT_RUNNER_ID": "r", "FALRT_RUNNER_TOKEN": "t",
          "FALRT_ENTRYPOINT": "app:App"}


def test_a_runner_dials_over_tls_when_the_server_gives_it_roots() -> None:
    assert ShimSettings.from_environ(RUNNER).tls is None
    tls = ShimSettings.from_environ({**RUNNER, "FALRT_TLS_ROOTS_PEM": "roots",
                                     "FALRT_TLS_CERT_PEM": "cert", "FALRT_TLS_KEY_PEM": "key",
                                     "FALRT_TLS_SERVER_NAME": "falrt.example.com"}).tls
    assert tls is not None
    assert (tls.roots, tls.cert, tls.key, tls.server_name) == (
        "roots", "cert", "key", "falrt.example.com")
    assert "key" not in repr(tls).replace("server_name", "")
    with pytest.raises(SettingsError, match="go together"):
        ShimSettings.from_environ({**RUNNER, "FALRT_TLS_ROOTS_PEM": "r",
                                   "FALRT_TLS_CERT_PEM": "c"})
