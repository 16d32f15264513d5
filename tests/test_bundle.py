"""App bundles: deterministic packing and hostile-archive extraction."""

from __future__ import annotations

import gzip
import io
import sys
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from falrt.bundle import pack, pack_folder, unpack
from falrt.errors import InvalidArgumentError
from falrt.sdk.loader import import_app_file

pytestmark = pytest.mark.unit


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder with an app file that imports a local module and a local package."""
    root = tmp_path / "proj"
    (root / "helpers_pkg" / "__pycache__").mkdir(parents=True)
    (root / "helpers_pkg" / "__init__.py").write_text("from helpers_pkg.inner import VALUE\n")
    (root / "helpers_pkg" / "inner.py").write_text("VALUE = 1\n")
    (root / "helpers_pkg" / "weights.txt").write_text("data\n")
    (root / "helpers_pkg" / "__pycache__" / "inner.cpython-311.pyc").write_bytes(b"junk")
    (root / "localmod_b.py").write_text("B = 2\n")
    (root / "unused.py").write_text("raise SystemExit('never imported')\n")
    (root / "app.py").write_text("import json\nimport helpers_pkg\nimport localmod_b\n")
    yield root
    local = ("app", "helpers_pkg", "localmod_b")
    for name in [n for n in sys.modules if n.partition(".")[0] in local]:
        del sys.modules[name]


def _names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getnames()


def test_pack_includes_the_app_and_its_local_modules_only(app_dir: Path) -> None:
    bundle = pack(app_dir / "app.py")
    assert _names(bundle.data) == [
        "app.py",
        "helpers_pkg/__init__.py",
        "helpers_pkg/inner.py",
        "helpers_pkg/weights.txt",
        "localmod_b.py",
    ]


def test_pack_is_deterministic(app_dir: Path) -> None:
    first = pack(app_dir / "app.py")
    (app_dir / "app.py").touch()
    second = pack(app_dir / "app.py")
    assert first.data == second.data
    assert first.sha256 == second.sha256
    assert len(first.sha256) == 64


def test_pack_normalises_entry_metadata(app_dir: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(pack(app_dir / "app.py").data), mode="r:gz") as tar:
        for member in tar.getmembers():
            assert (member.mtime, member.uid, member.gid) == (0, 0, 0)
            assert (member.uname, member.gname, member.mode) == ("", "", 0o644)


def test_importing_an_app_file_registers_it_under_its_stem(app_dir: Path) -> None:
    module = import_app_file(app_dir / "app.py")
    assert module is sys.modules["app"]
    assert import_app_file(app_dir / "app.py") is module
    (app_dir / "other").mkdir()
    (app_dir / "other" / "app.py").write_text("")
    with pytest.raises(InvalidArgumentError, match="another module of that name"):
        import_app_file(app_dir / "other" / "app.py")


def test_unpack_restores_the_packed_files(app_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    unpack(pack(app_dir / "app.py").data, dest, max_bytes=1 << 20)
    assert (dest / "helpers_pkg" / "inner.py").read_text() == "VALUE = 1\n"
    assert (dest / "app.py").exists()


def test_unpack_keeps_an_existing_destination(app_dir: Path, tmp_path: Path) -> None:
    data = pack(app_dir / "app.py").data
    dest = tmp_path / "out"
    unpack(data, dest, max_bytes=1 << 20)
    unpack(data, dest, max_bytes=1 << 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "proj"]


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for info, content in members:
            info.size = len(content) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(content) if info.isfile() else None)
    return buffer.getvalue()


def _file(name: str, content: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), content


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


@pytest.mark.parametrize("name", ["../evil.py", "a/../../evil.py", "/etc/evil.py"])
def test_unpack_rejects_a_path_that_escapes(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidArgumentError, match="escapes"):
        unpack(_tar(_file("ok.py"), _file(name)), tmp_path / "out", max_bytes=1 << 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
def test_unpack_rejects_links_and_devices(tmp_path: Path, kind: bytes) -> None:
    data = _tar(_link("link", "/etc/passwd", kind))
    with pytest.raises(InvalidArgumentError, match="no links or devices"):
        unpack(data, tmp_path / "out", max_bytes=1 << 20)
    assert not (tmp_path / "out").exists()


def test_unpack_rejects_content_over_the_size_limit(tmp_path: Path) -> None:
    data = _tar(_file("a.bin", b"x" * 600), _file("b.bin", b"y" * 600))
    with pytest.raises(InvalidArgumentError, match="larger than 1000 bytes"):
        unpack(data, tmp_path / "out", max_bytes=1000)
    assert not (tmp_path / "out").exists()


def test_unpack_rejects_too_many_entries(tmp_path: Path) -> None:
    data = _tar(*(_file(f"f{i}.py") for i in range(4)))
    with pytest.raises(InvalidArgumentError, match="more than 3 entries"):
        unpack(data, tmp_path / "out", max_bytes=1 << 20, max_files=3)


def test_unpack_rejects_bytes_that_are_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="not a valid gzipped tar"):
        unpack(b"definitely not gzip", tmp_path / "out", max_bytes=1 << 20)


def test_unpack_rejects_duplicate_entries(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="twice"):
        unpack(_tar(_file("a.py"), _file("a.py")), tmp_path / "out", max_bytes=1 << 20)


def huge_header_bundle(kind: bytes, declared: int) -> bytes:
    """A gzipped tar whose first header (a PAX extended header, or a GNU long name) declares
    `declared` bytes of zeros: a small bundle that decompresses to a huge header."""
    info = tarfile.TarInfo("././@Header")
    info.type, info.size = kind, declared
    stream = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip framing
    parts = [stream.compress(info.tobuf(format=tarfile.GNU_FORMAT))]
    chunk = bytes(1024 * 1024)
    for _ in range(declared // len(chunk)):
        parts.append(stream.compress(chunk))
    parts.append(stream.compress(bytes(declared % len(chunk) + 1024)))
    return b"".join([*parts, stream.flush()])


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME], ids=["pax", "name"])
def test_unpack_counts_header_bytes_against_the_limit(tmp_path: Path, kind: bytes) -> None:
    bundle = huge_header_bundle(kind, 8 * 1024 * 1024)
    assert len(bundle) < 64 * 1024
    with pytest.raises(InvalidArgumentError, match="larger than 1048576 bytes once decompressed"):
        unpack(bundle, tmp_path / "out", max_bytes=1024 * 1024)
    assert not (tmp_path / "out").exists()


def test_unpack_rejects_names_over_the_length_limits(tmp_path: Path) -> None:
    # (The last two are under the limits in characters, over them in bytes: "é" is 2.)
    for name in ("a" * 300 + ".py", "/".join(["d" * 100] * 11) + ".py", "é" * 200,
                 "/".join(["é" * 100] * 6)):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        with pytest.raises(InvalidArgumentError, match="names may have at most 1024"):
            unpack(buffer.getvalue(), tmp_path / "out", max_bytes=1024 * 1024)


# fal's app_files and local_python_modules


@pytest.fixture
def files_app(tmp_path: Path) -> Iterator[Path]:
    """An app whose class names `app_files` (a file, a folder) and a local module elsewhere."""
    root = tmp_path / "proj"
    (root / "assets" / "__pycache__").mkdir(parents=True)
    (root / "assets" / "a.txt").write_text("a\n")
    (root / "assets" / "notes.tmp").write_text("skip\n")
    (root / "assets" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    (root / "config.yaml").write_text("k: v\n")
    (root / "left_out.txt").write_text("not named\n")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "shared_pkg").mkdir(parents=True)
    (elsewhere / "shared_pkg" / "__init__.py").write_text("X = 1\n")
    (elsewhere / "single_mod.py").write_text("Y = 2\n")
    (root / "files_app.py").write_text(
        "import falrt\n\n"
        "class Files(falrt.App):\n"
        "    app_files = ['config.yaml', 'assets']\n"
        "    app_files_ignore = [r'\\.tmp$', '__pycache__/']\n"
        "    local_python_modules = ['shared_pkg', 'single_mod']\n")
    sys.path.insert(0, str(elsewhere))
    yield root
    sys.path.remove(str(elsewhere))
    for name in ("files_app", "other_app", "shared_pkg", "single_mod"):
        sys.modules.pop(name, None)


def test_pack_adds_app_files_minus_ignored_ones_and_local_python_modules(
    files_app: Path,
) -> None:
    bundle = pack(files_app / "files_app.py")
    assert _names(bundle.data) == [
        "assets/a.txt", "config.yaml", "files_app.py", "shared_pkg/__init__.py",
        "single_mod.py",
    ]
    assert pack(files_app / "files_app.py").sha256 == bundle.sha256


def test_default_app_files_ignore_is_fals(files_app: Path) -> None:
    (files_app / "other_app.py").write_text(
        "import falrt\n\nclass Other(falrt.App):\n    app_files = ['assets']\n")
    assert _names(pack(files_app / "other_app.py").data) == [
        "assets/a.txt", "assets/notes.tmp", "other_app.py"]


@pytest.mark.parametrize(("files", "context", "message"), [
    ("['missing.txt']", None, "does not exist"),
    ("['/etc/hostname']", None, "must be relative"),
    ("['../outside.txt']", None, "outside the context dir"),
    ("['outside.txt']", "'../beside'", "outside the bundle's folder"),
])
def test_app_files_that_cannot_be_bundled_fail_clearly(
    files_app: Path, files: str, context: str | None, message: str
) -> None:
    (files_app.parent / "outside.txt").write_text("x\n")
    (files_app.parent / "beside").mkdir()
    (files_app.parent / "beside" / "outside.txt").write_text("x\n")
    (files_app / "other_app.py").write_text(
        f"import falrt\n\nclass Other(falrt.App):\n    app_files = {files}\n"
        f"    app_files_context_dir = {context}\n")
    with pytest.raises(InvalidArgumentError, match=message):
        pack(files_app / "other_app.py")


def test_a_context_dir_above_the_app_file_roots_the_bundle_with_a_loader_of_the_app(
    files_app: Path,
) -> None:
    (files_app.parent / "configs").mkdir()
    (files_app.parent / "configs" / "model.json").write_text("{}\n")
    (files_app / "other_app.py").write_text(
        "import falrt\n\nclass Other(falrt.App):\n    app_files = ['configs', 'proj/config.yaml']\n"
        "    app_files_context_dir = '..'\n")
    bundle = pack(files_app / "other_app.py")
    assert _names(bundle.data) == [
        "configs/model.json", "other_app.py", "proj/config.yaml", "proj/other_app.py"]
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:gz") as tar:
        member = tar.extractfile("other_app.py")
        assert member is not None
        loader = member.read().decode()
    assert "'proj'" in loader and "'other_app.py'" in loader
    assert pack(files_app / "other_app.py").sha256 == bundle.sha256


def test_an_unknown_local_python_module_fails_clearly(files_app: Path) -> None:
    (files_app / "other_app.py").write_text(
        "import falrt\n\nclass Other(falrt.App):\n"
        "    local_python_modules = ['no_such_module_here']\n")
    with pytest.raises(InvalidArgumentError, match="no_such_module_here"):
        pack(files_app / "other_app.py")


def test_an_unpacked_bundle_packs_again_into_the_same_files(tmp_path: Path) -> None:
    """What RunnerLink.FetchBundle sends a runner on another host (the ray backend)."""
    app = tmp_path / "src" / "app.py"
    app.parent.mkdir()
    app.write_text("import helper\n")
    (tmp_path / "src" / "helper.py").write_text("X = 1\n")
    unpack(pack(app).data, tmp_path / "server", max_bytes=2**20)
    unpack(pack_folder(tmp_path / "server"), tmp_path / "node", max_bytes=2**20)
    files = {p.relative_to(tmp_path / "server"): p.read_bytes()
             for p in (tmp_path / "server").rglob("*") if p.is_file()}
    assert files and files == {p.relative_to(tmp_path / "node"): p.read_bytes()
                               for p in (tmp_path / "node").rglob("*") if p.is_file()}
    assert pack_folder(tmp_path / "server") == pack_folder(tmp_path / "node")  # deterministic
