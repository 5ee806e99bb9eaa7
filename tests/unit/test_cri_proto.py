"""The CRI proto is the wire contract kubelet and crictl speak: it must match it exactly,
and the committed generated modules must be what the proto compiles to."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "cri" / "api" / "api.proto"
# ../shared/cri-wire beside the checkout (or beside any directory above it, for a
# checkout made deeper by CI)
CHECK = next(
    (c for d in REPO.parents if (c := d / "shared" / "cri-wire" / "check.py").exists()),
    REPO.parent / "shared" / "cri-wire" / "check.py",
)


@pytest.mark.skipif(not CHECK.exists(), reason="the shared CRI wire contract is not here")
def test_proto_matches_the_wire_contract(tmp_path):
    # check.py leaves its compiled descriptor in $TMPDIR: keep it in tmp_path
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, str(CHECK), str(PROTO)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "571 of 571 items match" in out.stdout


def test_generated_module_is_the_compiled_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    out = tmp_path / "api.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO}",
            f"--descriptor_set_out={out}",
            str(PROTO),
        ],
        check=True,
    )
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    from cri.api import api_pb2

    committed = descriptor_pb2.FileDescriptorProto()
    api_pb2.DESCRIPTOR.CopyToProto(committed)
    compiled = fds.file[0]
    for fdp in (compiled, committed):  # json_name is derived and CopyToProto leaves it out
        _strip_json_names(fdp.message_type)
    assert compiled == committed, "cri/api is stale: run `python -m cri.api.generate`"


def test_services_have_every_rpc_of_the_contract():
    from cri.api import api_pb2

    rt = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"]
    img = api_pb2.DESCRIPTOR.services_by_name["ImageService"]
    assert {"Version", "RunPodSandbox", "CreateContainer", "ExecSync"} <= set(rt.methods_by_name)
    assert {"PullImage", "ImageFsInfo"} <= set(img.methods_by_name)


def _strip_json_names(messages):
    for m in messages:
        for f in m.field:
            f.ClearField("json_name")
        _strip_json_names(m.nested_type)
