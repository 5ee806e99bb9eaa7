"""Regenerate api_pb2.py, api_pb2.pyi and api_pb2_grpc.py from api.proto (needs grpcio-tools).

Run from anywhere: `python -m cri.api.generate`. The proto is compiled with
the repository root as include path, so the generated grpc module imports
`cri.api.api_pb2` by its package name.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO = "cri/api/api.proto"


def protoc_args(out: Path = REPO) -> list[str]:
    return [
        "grpc_tools.protoc",
        f"-I{REPO}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(REPO / PROTO),
    ]


def main() -> int:
    from grpc_tools import protoc

    code: int = protoc.main(protoc_args())
    if code:
        print(f"protoc failed on {PROTO} (exit {code})", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
