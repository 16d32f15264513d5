"""fal's requirement stages on the process backend: each stage is installed by its own
`pip install`, after the stage before it, into the same environment, so a package whose
build needs an earlier stage builds.

Both packages are made here, offline: stage 1 is a wheel (`stage_one`), stage 2 an sdist
(`stage_two`) whose build backend imports `stage_one` and writes its value into the wheel it
builds. pip builds an sdist in an isolated environment that holds only its declared build
requirements, unless the stage says `--no-build-isolation` (as flash-attn's install
instructions do): then the build runs in the app's environment and sees the earlier stages.
The same specifiers in one stage fail: pip builds stage_two before it installs stage_one.
"""

from __future__ import annotations

import inspect
import io
import tarfile
from pathlib import Path

import pytest

from falrt.client import SyncClient
from tests.harness import ServerProcess

pytestmark = pytest.mark.e2e

APP = '''
import msgspec
import falrt

class Nothing(msgspec.Struct):
    pass

class Built(msgspec.Struct):
    stage_one: str
    stage_two_built_with: str

class {name}(falrt.App):
    app_name = "{app_name}"
    requirements = {requirements!r}

    @falrt.endpoint("/")
    def built(self, input: Nothing) -> Built:
        import stage_one
        import stage_two
        return Built(stage_one=stage_one.VALUE, stage_two_built_with=stage_two.BUILT_WITH)
'''

# stage_two's PEP 517 build backend (in its sdist): it needs stage_one to build at all.
BACKEND = '''
from __future__ import annotations

import stage_one

{write_wheel}

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    files = {{"stage_two/__init__.py": f"BUILT_WITH = {{stage_one.VALUE!r}}\\n"}}
    return write_wheel(wheel_directory, "stage_two", files).name
'''


def write_wheel(directory: str, name: str, files: dict[str, str]) -> Path:
    """A pure-Python wheel of `name` 1.0 holding `files` (path -> text), in `directory`.
    Self-contained: stage_two's build backend carries its source."""
    import base64
    import hashlib
    import pathlib
    import zipfile

    info = f"{name}-1.0.dist-info"
    files = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    record = []
    for member, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest())
        record.append(f"{member},sha256={digest.rstrip(b'=').decode()},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    path = pathlib.Path(directory) / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def stage_two_sdist(directory: Path) -> Path:
    """stage_two's sdist, built by a backend that imports stage_one."""
    source = inspect.getsource(write_wheel)
    members = {
        "PKG-INFO": "Metadata-Version: 2.1\nName: stage_two\nVersion: 1.0\n",
        "pyproject.toml": '[project]\nname = "stage_two"\nversion = "1.0"\n\n[build-system]\n'
                          'requires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        "backend.py": BACKEND.format(write_wheel=source),
    }
    path = directory / "stage_two-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(f"stage_two-1.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_later_stage_builds_against_the_stages_installed_before_it(
    fresh_server: ServerProcess, tmp_path: Path,
) -> None:
    one = write_wheel(str(tmp_path), "stage_one", {"stage_one/__init__.py": "VALUE = 'one'\n"})
    two = stage_two_sdist(tmp_path)
    stages = [[str(one), "--no-index"], [str(two), "--no-build-isolation", "--no-index"]]
    app = tmp_path / "staged.py"
    app.write_text(APP.format(name="Staged", app_name="staged", requirements=stages))

    log = fresh_server.cli("deploy", f"{app}::Staged").stderr
    first = log.index(f"installing stage 1/2: {one} --no-index")
    second = log.index(f"installing stage 2/2: {two} --no-build-isolation --no-index")
    assert first < second
    with SyncClient(fresh_server.address) as client:
        built = client.run("local/staged", {})
    assert built == {"stage_one": "one", "stage_two_built_with": "one"}

    # The same specifiers in one stage: pip builds stage_two before installing stage_one.
    flat = [spec for stage in stages for spec in stage]
    app.write_text(APP.format(name="Flat", app_name="flat", requirements=flat))
    failed = fresh_server.cli("deploy", f"{app}::Flat", check=False)
    assert failed.returncode != 0
    assert "installing the requirements failed" in failed.stderr
    assert "No module named 'stage_one'" in failed.stderr

