"""`create --console-socket` through `pinnace-oci`, the way containerd's shim uses it.

Skipped until the runtime's process and rootfs modules exist (the create
path imports them).
"""

import errno
import os
import select
import time

import pytest

from runtime import console

pytest.importorskip("runtime.process")
pytest.importorskip("runtime.rootfs")

GUARD = 30.0  # a hang guard, not a timing assertion


def _read_to_eio(fd):
    data = b""
    while True:
        ready, _, _ = select.select([fd], [], [], GUARD)
        assert ready, f"no output from the container; so far: {data!r}"
        try:
            chunk = os.read(fd, 65536)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return data
            raise
        if not chunk:
            return data
        data += chunk


def _wait_stopped(oci, cid):
    deadline = time.monotonic() + GUARD
    while oci.status(cid) != "stopped":
        assert time.monotonic() < deadline, oci.state(cid)
        time.sleep(0.02)


def test_create_with_a_console_socket(oci, make_bundle, scratch_dir):
    script = "tty; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-tty; echo hello"
    bundle = make_bundle(["sh", "-c", script], terminal=True)
    cid = "pinnace-test-tty1"
    with console.ConsoleSocketServer(str(scratch_dir / "console.sock")) as server:
        oci("create", "--bundle", str(bundle), "--console-socket", server.path, cid)
        try:
            master, name = server.receive(timeout=GUARD)
            try:
                assert name.startswith("/dev/pts/")
                oci("start", cid)
                out = _read_to_eio(master)
            finally:
                os.close(master)
            assert b"/dev/pts/0\r\n" in out
            assert b"all-tty\r\n" in out
            assert b"hello\r\n" in out
            _wait_stopped(oci, cid)
        finally:
            oci("delete", "--force", cid)


def test_terminal_without_a_console_socket_is_refused(oci, make_bundle):
    bundle = make_bundle(["true"], terminal=True)
    res = oci("create", "--bundle", str(bundle), "pinnace-test-tty2", check=False)
    assert res.returncode != 0
    assert "console socket" in res.stderr or "console-socket" in res.stderr
    assert oci.ids() == []
