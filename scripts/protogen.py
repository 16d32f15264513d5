"""Generates the Python code of the contract in proto/ into falrt/v1/.

`make proto` runs it; tests/test_proto_fresh.py runs it into a temporary folder and fails
when the committed code differs (the committed code is stale).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE = "falrt/v1"
BIN = Path(sys.executable).parent
HEADER = '"""Generated from proto/falrt/v1 by `make proto`. Do not edit."""\n'


def generate(out_root: Path) -> list[Path]:
    """Writes *_pb2.py, *_pb2_grpc.py and *.pyi for every proto under proto/falrt/v1."""
    out_dir = out_root / PACKAGE
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out_dir / "__init__.py").write_text(HEADER)
    (out_dir / "py.typed").write_text("")
    return sorted(p for p in out_dir.iterdir() if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: repo)")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out), file=sys.stderr)


if __name__ == "__main__":
    main()
