"""Regenerate memstate/nri/proto/*_pb2.py(i) from the .proto files (needs the `test` extra).

Usage: python scripts/gen_nri_proto.py [OUTPUT_DIR]

The generated modules are checked in; tests/nri/test_proto_generated.py regenerates them into a
temporary directory and fails when the checked-in copies differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent.parent / "memstate" / "nri" / "proto"
PROTO_FILES = ("nri.proto", "ttrpc.proto")


def generate(out_dir: Path) -> None:
    """Run protoc (grpcio-tools) on every .proto file into `out_dir`."""
    from grpc_tools import protoc  # the test extra only

    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *(str(PROTO_DIR / name) for name in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed: {' '.join(args)}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_DIR)
