"""Generates the gRPC stubs for toolgate.v1 from ../../proto into this folder.

    python generate_stubs.py   # writes toolgate/v1/toolgate_pb2.py, _pb2.pyi, _pb2_grpc.py

The stubs are generated, not committed: run this again whenever the .proto changes.
"""

import importlib.resources
import sys
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto"


def main() -> int:
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    return protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO}",
            f"-I{well_known}",
            f"--python_out={HERE}",
            f"--pyi_out={HERE}",
            f"--grpc_python_out={HERE}",
            str(PROTO / "toolgate" / "v1" / "toolgate.proto"),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
