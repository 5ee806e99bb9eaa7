"""Exec, Attach and PortForward through a real `pinnace cri`: the RPC hands out a URL, a client
written here from the protocol documents (SPDY/3.1 and WebSocket framing from cri/streaming)
connects to it, and real containers answer."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
import pytest

from cri.api import api_pb2
from cri.streaming import websocket as wsmod
from cri.streaming.spdy import SpdySession, SpdyStream
from tests.fixtures.cri import CRIServer

pytestmark = pytest.mark.root

T = TypeVar("T")
DEADLINE = 30.0  # every client run is bounded, so a hang fails instead of blocking the suite


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), DEADLINE)

    return asyncio.run(bounded())


def code_of(call: Callable[..., Any], *args: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call(*args)
    code: grpc.StatusCode = err.value.code()
    return code


def start_container(
    srv: CRIServer, command: list[str], *, sid: str | None = None, pod: Any = None, **kw: Any
) -> tuple[str, str]:
    if sid is None:
        sid, pod = srv.run_pod()
    name = f"c-{uuid.uuid4().hex[:8]}"
    cid = srv.create(sid, pod, srv.container_config(name, command, **kw))
    srv.rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    return sid, cid


def exec_url(srv: CRIServer, cid: str, cmd: list[str], **flags: bool) -> str:
    req = api_pb2.ExecRequest(container_id=cid, cmd=cmd, **flags)
    return str(srv.rt.Exec(req).url)


def attach_url(srv: CRIServer, cid: str, **flags: bool) -> str:
    return str(srv.rt.Attach(api_pb2.AttachRequest(container_id=cid, **flags)).url)


def pf_url(srv: CRIServer, sid: str, ports: list[int]) -> str:
    req = api_pb2.PortForwardRequest(pod_sandbox_id=sid, port=ports)
    return str(srv.rt.PortForward(req).url)


# -- clients ---------------------------------------------------------------------------------


class HttpStatus(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status


async def http_upgrade(
    url: str, headers: dict[str, str], method: str = "POST"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict[str, str]]:
    u = urlsplit(url)
    assert u.hostname and u.port
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    lines = [f"{method} {u.path}{'?' + u.query if u.query else ''} HTTP/1.1", f"Host: {u.netloc}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status = int(head.split(" ", 2)[1])
    got = {}
    for line in head.split("\r\n")[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            got[k.strip().lower()] = v.strip()
    if status != 101:
        body = await reader.read(4096)
        writer.close()
        raise HttpStatus(status, body)
    return reader, writer, got


async def spdy_connect(
    url: str, protocols: list[str], method: str = "POST"
) -> tuple[SpdySession, str]:
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "SPDY/3.1",
        "X-Stream-Protocol-Version": ", ".join(protocols),
    }
    reader, writer, got = await http_upgrade(url, headers, method)
    session = SpdySession(reader, writer, client=True)
    session.start()
    return session, got.get("x-stream-protocol-version", "")


async def read_all(stream: SpdyStream) -> bytes:
    out = b""
    while chunk := await stream.read():
        out += chunk
    return out


async def read_until(stream: SpdyStream, needle: bytes) -> bytes:
    out = b""
    while needle not in out:
        chunk = await stream.read()
        if not chunk:
            raise AssertionError(f"stream ended before {needle!r}: {out!r}")
        out += chunk
    return out


@dataclass
class Result:
    stdout: bytes = b""
    stderr: bytes = b""
    error: bytes = b""
    protocol: str = ""

    @property
    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.error))


async def spdy_exec(
    url: str, *, stdin: bytes | None = None, stderr: bool = True, tty: bool = False
) -> Result:
    """kubectl's order: the error stream first, then stdin/stdout/stderr (and resize)."""
    session, protocol = await spdy_connect(url, ["v4.channel.k8s.io", "v3.channel.k8s.io"])
    try:
        err = await session.open_stream({"streamtype": "error"}, fin=True)
        sin = await session.open_stream({"streamtype": "stdin"}) if stdin is not None else None
        out = await session.open_stream({"streamtype": "stdout"}, fin=True)
        serr = await session.open_stream({"streamtype": "stderr"}, fin=True) if stderr else None
        if tty:
            await session.open_stream({"streamtype": "resize"})
        if sin is not None:
            assert stdin is not None
            await sin.write(stdin)
            await sin.close()
        outs = await asyncio.gather(
            read_all(out), read_all(serr) if serr else asyncio.sleep(0, b""), read_all(err)
        )
        return Result(outs[0], outs[1], outs[2], protocol)
    finally:
        await session.close()


async def ws_exec(
    url: str, protocol: str, *, stdin: bytes | None = None, close_stdin: bool = True
) -> Result:
    u = urlsplit(url)
    assert u.hostname and u.port
    ws, chosen = await wsmod.connect(u.hostname, u.port, u.path, [protocol])
    res = Result(protocol=chosen)
    try:
        if stdin is not None:
            await ws.send(wsmod.channel_message(wsmod.STDIN, stdin))
            if close_stdin:
                await ws.send(wsmod.channel_message(wsmod.CLOSE, bytes([wsmod.STDIN])))
        while (msg := await ws.recv()) is not None:
            ch, data = wsmod.parse_channel_message(msg)
            if ch == wsmod.STDOUT:
                res.stdout += data
            elif ch == wsmod.STDERR:
                res.stderr += data
            elif ch == wsmod.ERROR:
                res.error += data
    finally:
        await ws.close()
    return res


# -- exec --------------------------------------------------------------------------------------

SPLIT = ["sh", "-c", "echo to-out; echo to-err >&2; exit 3"]


@pytest.fixture
def running(cri_server: CRIServer) -> tuple[CRIServer, str]:
    _sid, cid = start_container(cri_server, ["sleep", "600"])
    return cri_server, cid


def test_exec_over_spdy_separates_streams_and_reports_the_exit_code(running):
    srv, cid = running
    res = run(lambda: spdy_exec(exec_url(srv, cid, SPLIT, stdout=True, stderr=True)))
    assert res.protocol == "v4.channel.k8s.io"
    assert (res.stdout, res.stderr) == (b"to-out\n", b"to-err\n")
    st = res.status
    assert st["status"] == "Failure" and st["reason"] == "NonZeroExitCode"
    assert st["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    ok = run(lambda: spdy_exec(exec_url(srv, cid, ["true"], stdout=True, stderr=True)))
    assert ok.status == {"metadata": {}, "status": "Success"}


@pytest.mark.parametrize("protocol", ["v5.channel.k8s.io", "v4.channel.k8s.io"])
def test_exec_over_websocket(running, protocol: str):
    srv, cid = running
    res = run(lambda: ws_exec(exec_url(srv, cid, SPLIT, stdout=True, stderr=True), protocol))
    assert res.protocol == protocol
    assert (res.stdout, res.stderr) == (b"to-out\n", b"to-err\n")
    assert res.status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]


def test_exec_with_stdin_over_spdy_and_websocket(running):
    srv, cid = running
    data = b"line one\n" + bytes(range(256)) * 300 + b"\nlast"
    res = run(
        lambda: spdy_exec(
            exec_url(srv, cid, ["cat"], stdin=True, stdout=True), stdin=data, stderr=False
        )
    )
    assert res.stdout == data and res.status["status"] == "Success"
    url = exec_url(srv, cid, ["wc", "-c"], stdin=True, stdout=True)
    res = run(lambda: ws_exec(url, "v5.channel.k8s.io", stdin=b"12345"))
    assert res.stdout.strip() == b"5" and res.status["status"] == "Success"


def test_exec_with_a_tty_over_spdy_resizes(running):
    srv, cid = running
    url = exec_url(
        srv,
        cid,
        ["sh", "-c", "echo hello-tty; while :; do busybox stty size; sleep 0.1; done"],
        stdout=True,
        tty=True,
    )

    async def go() -> bytes:
        session, _ = await spdy_connect(url, ["v4.channel.k8s.io"])
        try:
            err = await session.open_stream({"streamtype": "error"}, fin=True)
            out = await session.open_stream({"streamtype": "stdout"}, fin=True)
            resize = await session.open_stream({"streamtype": "resize"})
            first = await read_until(out, b"hello-tty\r\n")
            await resize.write(json.dumps({"Width": 123, "Height": 45}).encode())
            seen = await read_until(out, b"45 123")
            assert err is not None
            return first + seen
        finally:
            await session.close()

    out = run(go)
    assert b"hello-tty\r\n" in out  # a terminal: \n became \r\n


def test_exec_with_a_tty_over_websocket(running):
    srv, cid = running
    url = exec_url(srv, cid, ["sh"], stdin=True, stdout=True, tty=True)

    async def go() -> tuple[bytes, bytes]:
        u = urlsplit(url)
        assert u.hostname and u.port
        ws, _ = await wsmod.connect(u.hostname, u.port, u.path, ["v5.channel.k8s.io"])
        out, err = b"", b""
        try:
            size = json.dumps({"Width": 99, "Height": 33}).encode()
            await ws.send(wsmod.channel_message(wsmod.RESIZE, size))
            await ws.send(wsmod.channel_message(wsmod.STDIN, b"busybox stty size; exit 7\n"))
            while (msg := await ws.recv()) is not None:
                ch, data = wsmod.parse_channel_message(msg)
                if ch == wsmod.STDOUT:
                    out += data
                elif ch == wsmod.ERROR:
                    err += data
        finally:
            await ws.close()
        return out, err

    out, err = run(go)
    assert b"33 99" in out
    assert json.loads(err)["details"]["causes"][0]["message"] == "7"


def test_a_token_is_single_use_and_unknown_ones_are_404(running):
    srv, cid = running
    url = exec_url(srv, cid, ["true"], stdout=True)
    res = run(lambda: spdy_exec(url, stderr=False))
    assert res.status["status"] == "Success"
    with pytest.raises(HttpStatus) as err:
        run(lambda: spdy_exec(url, stderr=False))
    assert err.value.status == 404
    base = url.rsplit("/", 1)[0]
    for bad in (base + "/not-a-token", base.rsplit("/", 1)[0] + "/shell/x"):
        with pytest.raises(HttpStatus) as err:
            run(functools.partial(spdy_exec, bad, stderr=False))
        assert err.value.status == 404
    # a method other than GET/POST is refused before the token is spent
    url = exec_url(srv, cid, ["true"], stdout=True)
    with pytest.raises(HttpStatus) as err:
        run(lambda: spdy_connect(url, ["v4.channel.k8s.io"], method="DELETE"))
    assert err.value.status == 405
    assert run(lambda: spdy_exec(url, stderr=False)).status["status"] == "Success"

    async def garbage() -> bytes:
        u = urlsplit(url)
        reader, writer = await asyncio.open_connection(u.hostname, u.port)
        writer.write(b"HELLO THERE\r\n\r\n")
        head = await reader.read(100)
        writer.close()
        return head

    assert run(garbage).startswith(b"HTTP/1.1 400 ")


# -- attach -------------------------------------------------------------------------------------


def test_attach_sees_new_output(cri_server: CRIServer):
    _sid, cid = start_container(
        cri_server, ["sh", "-c", "i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.1; done"]
    )
    url = attach_url(cri_server, cid, stdout=True, stderr=True)

    async def go() -> bytes:
        session, _ = await spdy_connect(url, ["v4.channel.k8s.io"])
        try:
            await session.open_stream({"streamtype": "error"}, fin=True)
            out = await session.open_stream({"streamtype": "stdout"}, fin=True)
            await session.open_stream({"streamtype": "stderr"}, fin=True)
            return await read_until(out, b"\n")  # one whole line at least
        finally:
            await session.close()

    assert run(go).startswith(b"tick-")


def test_attach_stdin_reaches_the_container(cri_server: CRIServer):
    _sid, cid = start_container(cri_server, ["cat"], stdin=True)
    url = attach_url(cri_server, cid, stdin=True, stdout=True, stderr=True)

    async def go() -> bytes:
        u = urlsplit(url)
        assert u.hostname and u.port
        ws, _ = await wsmod.connect(u.hostname, u.port, u.path, ["v5.channel.k8s.io"])
        out = b""
        try:
            await ws.send(wsmod.channel_message(wsmod.STDIN, b"hello attach\n"))
            while b"hello attach\n" not in out:
                msg = await ws.recv()
                assert msg is not None, out
                ch, data = wsmod.parse_channel_message(msg)
                if ch == wsmod.STDOUT:
                    out += data
        finally:
            await ws.close()
        return out

    assert run(go) == b"hello attach\n"
    # the container keeps running after the client left
    assert cri_server.status(cid).state == api_pb2.CONTAINER_RUNNING


# -- port-forward -------------------------------------------------------------------------------

ECHO = ["sh", "-c", "nc -ll -p 8080 -e cat & nc -ll -p 8081 -e cat & wait"]


@dataclass
class Echo:
    srv: CRIServer
    sid: str
    ports: list[int] = field(default_factory=lambda: [8080, 8081])


@pytest.fixture
def echo_pod(cri_server: CRIServer) -> Echo:
    sid, cid = start_container(cri_server, ECHO)
    # the listeners are up once netstat lists them
    for _ in range(200):
        r = cri_server.rt.ExecSync(
            api_pb2.ExecSyncRequest(container_id=cid, cmd=["busybox", "netstat", "-ltn"], timeout=5)
        )
        if b":8080 " in r.stdout and b":8081 " in r.stdout:
            break
    else:
        raise AssertionError(f"the echo servers did not start: {r.stdout!r} {r.stderr!r}")
    return Echo(cri_server, sid)


async def spdy_forward(session: SpdySession, port: int, rid: int, payload: bytes) -> bytes:
    headers = {"port": str(port), "requestid": str(rid)}
    err = await session.open_stream({**headers, "streamtype": "error"}, fin=True)
    data = await session.open_stream({**headers, "streamtype": "data"})
    await data.write(payload)
    await data.close()
    echoed, error = await asyncio.gather(read_all(data), read_all(err))
    assert error == b"", error
    return echoed


def test_port_forward_over_spdy_two_streams_at_once(echo_pod: Echo):
    url = pf_url(echo_pod.srv, echo_pod.sid, echo_pod.ports)

    async def go() -> list[bytes]:
        session, protocol = await spdy_connect(url, ["portforward.k8s.io"])
        assert protocol == "portforward.k8s.io"
        try:
            return list(
                await asyncio.gather(
                    spdy_forward(session, 8080, 1, b"first\n" * 1000),
                    spdy_forward(session, 8081, 2, b"second\n"),
                    spdy_forward(session, 8080, 3, b"third\n"),
                )
            )
        finally:
            await session.close()

    assert run(go) == [b"first\n" * 1000, b"second\n", b"third\n"]


def test_port_forward_reports_connection_errors(echo_pod: Echo):
    url = pf_url(echo_pod.srv, echo_pod.sid, [])  # no ports named: any port

    async def go() -> bytes:
        session, _ = await spdy_connect(url, ["portforward.k8s.io"])
        try:
            headers = {"port": "9", "requestid": "0"}
            err = await session.open_stream({**headers, "streamtype": "error"}, fin=True)
            await session.open_stream({**headers, "streamtype": "data"})
            return await read_all(err)
        finally:
            await session.close()

    assert b"127.0.0.1:9" in run(go)


def test_port_forward_over_websocket_channels(echo_pod: Echo):
    url = pf_url(echo_pod.srv, echo_pod.sid, echo_pod.ports)

    async def go() -> dict[int, bytes]:
        u = urlsplit(url)
        assert u.hostname and u.port
        path = f"{u.path}?port=8080&port=8081"
        ws, protocol = await wsmod.connect(u.hostname, u.port, path, ["v4.channel.k8s.io"])
        assert protocol == "v4.channel.k8s.io"
        got: dict[int, bytes] = {0: b"", 1: b"", 2: b"", 3: b""}
        try:
            await ws.send(wsmod.channel_message(0, b"to-8080\n"))
            await ws.send(wsmod.channel_message(2, b"to-8081\n"))
            while not (got[0].endswith(b"to-8080\n") and got[2].endswith(b"to-8081\n")):
                msg = await ws.recv()
                assert msg is not None, got
                ch, data = wsmod.parse_channel_message(msg)
                got[ch] += data
        finally:
            await ws.close()
        return got

    got = run(go)
    prefix = {ch: (8080 if ch < 2 else 8081).to_bytes(2, "little") for ch in got}
    for ch in (0, 2):
        assert got[ch].startswith(prefix[ch])
    assert got[0][2:] == b"to-8080\n" and got[2][2:] == b"to-8081\n"
    assert got[1] == prefix[1] and got[3] == prefix[3]  # no errors


def test_port_forward_spdy_tunnelled_in_websocket(echo_pod: Echo):
    url = pf_url(echo_pod.srv, echo_pod.sid, echo_pod.ports)

    async def go() -> list[bytes]:
        u = urlsplit(url)
        assert u.hostname and u.port
        ws, protocol = await wsmod.connect(
            u.hostname, u.port, u.path, ["SPDY/3.1+portforward.k8s.io"]
        )
        assert protocol == "SPDY/3.1+portforward.k8s.io"
        reader, writer = wsmod.byte_stream(ws)
        session = SpdySession(reader, writer, client=True)  # type: ignore[arg-type]
        session.start()
        try:
            return list(
                await asyncio.gather(
                    spdy_forward(session, 8080, 1, b"a\n"), spdy_forward(session, 8081, 2, b"b\n")
                )
            )
        finally:
            await session.close()

    assert run(go) == [b"a\n", b"b\n"]


# -- bad requests -----------------------------------------------------------------------------------


def test_bad_rpc_inputs(cri_server: CRIServer):
    sid, cid = start_container(cri_server, ["sleep", "600"])
    rt = cri_server.rt
    INVALID, NOT_FOUND, PRECONDITION = (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    E, A, P = api_pb2.ExecRequest, api_pb2.AttachRequest, api_pb2.PortForwardRequest
    assert code_of(rt.Exec, E(container_id=cid, cmd=[], stdout=True)) == INVALID
    assert code_of(rt.Exec, E(container_id=cid, cmd=["ls"])) == INVALID
    assert code_of(rt.Exec, E(container_id=cid, cmd=["ls"], tty=True, stderr=True)) == INVALID
    assert code_of(rt.Exec, E(container_id="f" * 64, cmd=["ls"], stdout=True)) == NOT_FOUND
    assert code_of(rt.Attach, A(container_id=cid)) == INVALID
    assert code_of(rt.Attach, A(container_id=cid, stdout=True, stderr=True, tty=True)) == INVALID
    assert code_of(rt.Attach, A(container_id=cid, stdin=True, stdout=True)) == PRECONDITION
    assert code_of(rt.Attach, A(container_id="f" * 64, stdout=True)) == NOT_FOUND
    assert code_of(rt.PortForward, P(pod_sandbox_id=sid, port=[0])) == INVALID
    assert code_of(rt.PortForward, P(pod_sandbox_id=sid, port=[65536])) == INVALID
    assert code_of(rt.PortForward, P(pod_sandbox_id="f" * 64, port=[80])) == NOT_FOUND
    # a container that is not running
    pod = cri_server.pod_config()
    sid2 = rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=pod)).pod_sandbox_id
    created = cri_server.create(sid2, pod, cri_server.container_config("idle", ["true"]))
    assert code_of(rt.Exec, E(container_id=created, cmd=["ls"], stdout=True)) == PRECONDITION
    assert code_of(rt.Attach, A(container_id=created, stdout=True)) == PRECONDITION
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid2))
    assert code_of(rt.PortForward, P(pod_sandbox_id=sid2, port=[80])) == PRECONDITION
    # nothing above left a usable token behind: a valid one still works
    url = exec_url(cri_server, cid, ["echo", "ok"], stdout=True)
    assert run(lambda: spdy_exec(url, stderr=False)).stdout == b"ok\n"


def test_attach_stdin_eof_closes_a_stdin_once_container(cri_server: CRIServer):
    _sid, cid = start_container(cri_server, ["cat"], stdin=True, stdin_once=True)
    url = attach_url(cri_server, cid, stdin=True, stdout=True, stderr=True)

    async def go() -> tuple[bytes, bytes]:
        session, _ = await spdy_connect(url, ["v4.channel.k8s.io"])
        try:
            err = await session.open_stream({"streamtype": "error"}, fin=True)
            sin = await session.open_stream({"streamtype": "stdin"})
            out = await session.open_stream({"streamtype": "stdout"}, fin=True)
            await session.open_stream({"streamtype": "stderr"}, fin=True)
            await sin.write(b"once\n")
            seen = await read_until(out, b"once\n")
            await sin.close()  # EOF: cat ends, and with it the container and the attach
            return seen + await read_all(out), await read_all(err)
        finally:
            await session.close()

    out, err = run(go)
    assert out == b"once\n"
    assert json.loads(err) == {"metadata": {}, "status": "Success"}
    st = cri_server.wait_exited(cid)
    assert st.exit_code == 0


def test_attach_to_a_tty_container_with_resize(cri_server: CRIServer):
    _sid, cid = start_container(cri_server, ["sh"], stdin=True, tty=True)
    url = attach_url(cri_server, cid, stdin=True, stdout=True, tty=True)

    async def go() -> bytes:
        session, _ = await spdy_connect(url, ["v4.channel.k8s.io"])
        try:
            await session.open_stream({"streamtype": "error"}, fin=True)
            sin = await session.open_stream({"streamtype": "stdin"})
            out = await session.open_stream({"streamtype": "stdout"}, fin=True)
            resize = await session.open_stream({"streamtype": "resize"})
            await resize.write(json.dumps({"Width": 77, "Height": 22}).encode())
            seen = b""
            while b"22 77" not in seen:  # resize and stdin travel on separate streams
                await sin.write(b"busybox stty size\n")
                seen += await read_until(out, b"\n")
            return seen
        finally:
            await session.close()

    assert b"22 77" in run(go)
    assert cri_server.status(cid).state == api_pb2.CONTAINER_RUNNING


def test_a_stalled_attacher_does_not_block_the_log(cri_server: CRIServer):
    line = "x" * 999
    script = (
        f"read go; i=0; while [ $i -lt 4000 ]; do echo {line}; i=$((i+1)); done; "
        "echo done-marker; sleep 600"
    )
    _sid, cid = start_container(cri_server, ["sh", "-c", script], stdin=True)
    log_path = cri_server.status(cid).log_path
    url = attach_url(cri_server, cid, stdin=True, stdout=True, stderr=True)

    async def go() -> None:
        session, _ = await spdy_connect(url, ["v4.channel.k8s.io"])
        try:
            await session.open_stream({"streamtype": "error"}, fin=True)
            sin = await session.open_stream({"streamtype": "stdin"})
            await session.open_stream({"streamtype": "stdout"}, fin=True)  # never read
            await session.open_stream({"streamtype": "stderr"}, fin=True)
            await sin.write(b"go\n")
            # 4 MB go to the log while this client reads nothing (SPDY flow control stalls
            # the server after 64 KiB, and the monitor's queue for it overflows)
            while True:
                with open(log_path, "rb") as f:
                    if b"done-marker" in f.read():
                        return
                await asyncio.sleep(0.1)
        finally:
            await session.close()

    run(go)
    assert cri_server.status(cid).state == api_pb2.CONTAINER_RUNNING
