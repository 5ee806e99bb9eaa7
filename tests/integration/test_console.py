"""The console socket protocol and the container's pty, against the real kernel.

The end-to-end tests fork a child that builds a small container-like root
from a `make_bundle` rootfs in a private mount namespace (tmpfs /dev, a new
devpts instance at /dev/pts with /dev/ptmx -> pts/ptmx, proc at /proc),
chroots into it, calls setup_console and execs busybox. The test plays the
engine: it listens on the console socket, receives the pty master and talks
to the container through it. Everything the child mounted dies with its
mount namespace when it exits.

The child reports over a close-on-exec pipe (JSON): its fd table right after
setup_console, which must hold only 0, 1, 2 and that report pipe.
"""

import errno
import fcntl
import json
import os
import select
import signal
import socket
import stat
import struct
import termios
import traceback

import pytest

from namespaces import syscalls as sc
from runtime import console
from runtime.errors import ConsoleError

pytestmark = pytest.mark.usefixtures("require_root")

GUARD = 30.0  # seconds before a stuck read fails the test (a hang guard, not a timing check)


# -- the child ----------------------------------------------------------------------


def _container_like_root(s, rootfs):
    s.unshare(sc.CLONE_NEWNS)
    s.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE, None)
    dev = f"{rootfs}/dev"
    s.mount("tmpfs", dev, "tmpfs", sc.MS_NOSUID, "mode=755")
    os.mkdir(f"{dev}/pts")
    s.mount(
        "devpts",
        f"{dev}/pts",
        "devpts",
        sc.MS_NOSUID | sc.MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    s.mount("proc", f"{rootfs}/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, None)


def _open_fds():
    fds = []
    for fd in range(1024):
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            continue
        fds.append(fd)
    return fds


def _close_all_but(keep):
    start = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, 65536)


def _child(rootfs, report_w, script, *, host_socket, inner_socket, exec_console, size):
    try:
        s = sc.libc()
        _container_like_root(s, rootfs)
        arg = console.connect_console_socket(host_socket) if host_socket else inner_socket
        _close_all_but({report_w} | ({arg} if isinstance(arg, int) else set()))
        os.chroot(rootfs)
        os.chdir("/")
        setup = console.setup_exec_console if exec_console else console.setup_console
        setup(arg, sys=s, size=size)
        has_console = os.path.exists("/dev/console")
        report = {
            "fds": _open_fds(),
            "report_fd": report_w,
            "isatty": [os.isatty(fd) for fd in (0, 1, 2)],
            "ttyname": os.ttyname(0),
            "session_leader": os.getsid(0) == os.getpid(),
            "foreground": os.tcgetpgrp(0) == os.getpgrp(),
            "stdio_rdev": [os.fstat(fd).st_rdev for fd in (0, 1, 2)],
            "console_rdev": os.stat("/dev/console").st_rdev if has_console else None,
            "winsize": list(struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, bytes(8)))),
        }
        os.write(report_w, json.dumps(report).encode())
        # a clean env: busybox prefers LINES/COLUMNS (pytest may set them) to the tty's size
        os.execve("/bin/busybox", ["sh", "-c", script], {"PATH": "/bin"})
    except BaseException:
        os.write(report_w, json.dumps({"error": traceback.format_exc()}).encode())
    os._exit(127)


class ConsoleChild:
    """A forked child that sets up its console and execs `script`; reaped on exit."""

    def __init__(
        self, rootfs, script, *, host_socket=None, inner_socket=None, exec_console=False, size=None
    ):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _child(
                str(rootfs),
                w,
                script,
                host_socket=host_socket,
                inner_socket=inner_socket,
                exec_console=exec_console,
                size=size,
            )
        os.close(w)
        self.pid = pid
        self._report_r = r
        self.status = None

    def report(self):
        data = b""
        while True:
            ready, _, _ = select.select([self._report_r], [], [], GUARD)
            assert ready, "the child neither reported nor exec'd"
            chunk = os.read(self._report_r, 65536)
            if not chunk:
                break
            data += chunk
        report = json.loads(data)
        assert "error" not in report, report["error"]
        return report

    def wait(self):
        _, status = os.waitpid(self.pid, 0)
        self.status = status
        return os.waitstatus_to_exitcode(status)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self._report_r)
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            self.wait()


def read_until(fd, done, guard=GUARD):
    """Read the master until done(data) or the slave side is gone (EIO)."""
    data = b""
    while not done(data):
        ready, _, _ = select.select([fd], [], [], guard)
        assert ready, f"no output from the container; so far: {data!r}"
        try:
            chunk = os.read(fd, 65536)
        except OSError as exc:
            if exc.errno == errno.EIO:  # every slave fd closed: the container exited
                break
            raise
        if not chunk:
            break
        data += chunk
    return data


def until_eof(data):
    return False


# -- end to end -----------------------------------------------------------------------


def test_init_console_over_a_preconnected_socket(make_bundle, scratch_dir):
    rootfs = make_bundle(["sh"], terminal=True) / "rootfs"
    script = "tty; echo hello; if [ -t 0 ] && [ -t 1 ] && [ -t 2 ]; then echo all-tty; fi; exec cat"
    with (
        console.ConsoleSocketServer(str(scratch_dir / "console.sock")) as server,
        ConsoleChild(rootfs, script, host_socket=server.path) as child,
    ):
        report = child.report()
        master, name = server.receive(timeout=GUARD)
        try:
            assert name == "/dev/pts/0"
            assert os.isatty(master)
            assert fcntl.fcntl(master, fcntl.F_GETFD) & fcntl.FD_CLOEXEC

            # the child after setup_console: stdio is the slave, its controlling terminal
            assert report["fds"] == [0, 1, 2, report["report_fd"]]
            assert report["isatty"] == [True, True, True]
            assert report["ttyname"] == "/dev/pts/0"
            assert report["session_leader"] and report["foreground"]
            assert len(set(report["stdio_rdev"])) == 1
            assert report["console_rdev"] == report["stdio_rdev"][0]  # bound on /dev/console

            out = read_until(master, lambda d: b"all-tty" in d)
            assert b"/dev/pts/0\r\n" in out
            assert b"hello\r\n" in out

            os.write(master, b"ping\n")  # echoed by the tty, then copied by cat
            out = read_until(master, lambda d: d.count(b"ping\r\n") >= 2)
            assert out.count(b"ping\r\n") == 2

            os.write(master, b"\x04")  # ^D: end of file for cat
            read_until(master, until_eof)
        finally:
            os.close(master)
        assert child.wait() == 0


def test_console_socket_path_inside_the_root_and_window_size(make_bundle):
    rootfs = make_bundle(["sh"], terminal=True) / "rootfs"
    with (
        console.ConsoleSocketServer(str(rootfs / "tmp" / "console.sock")) as server,
        ConsoleChild(
            rootfs, "stty size; echo via-path", inner_socket="/tmp/console.sock", size=(33, 101)
        ) as child,
    ):
        report = child.report()
        assert report["winsize"][:2] == [33, 101]
        master, name = server.receive(timeout=GUARD)
        try:
            assert name == "/dev/pts/0"
            out = read_until(master, until_eof)
        finally:
            os.close(master)
        assert b"33 101\r\n" in out
        assert b"via-path\r\n" in out
        assert child.wait() == 0


def test_exec_console_does_not_touch_dev_console(make_bundle, scratch_dir):
    rootfs = make_bundle(["sh"], terminal=True) / "rootfs"
    with (
        console.ConsoleSocketServer(str(scratch_dir / "console.sock")) as server,
        ConsoleChild(rootfs, "tty", host_socket=server.path, exec_console=True) as child,
    ):
        report = child.report()
        master, _ = server.receive(timeout=GUARD)
        try:
            out = read_until(master, until_eof)
        finally:
            os.close(master)
        assert report["console_rdev"] is None
        assert report["isatty"] == [True, True, True]
        assert report["fds"] == [0, 1, 2, report["report_fd"]]
        assert b"/dev/pts/0\r\n" in out
        assert child.wait() == 0


# -- the protocol ---------------------------------------------------------------------


def test_send_and_receive_a_pty_master(scratch_dir):
    pty = console.open_pty()  # the host's devpts: a throw-away pty
    try:
        with console.ConsoleSocketServer(str(scratch_dir / "c.sock")) as server:
            assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
            fd = console.connect_console_socket(server.path)
            try:
                console.send_pty_master(fd, pty.master, pty.name)
            finally:
                os.close(fd)
            got, name = server.receive(timeout=GUARD)
        try:
            assert name == pty.name
            assert os.fstat(got).st_ino == os.fstat(pty.master).st_ino
            assert os.fstat(got).st_rdev == os.fstat(pty.master).st_rdev
        finally:
            os.close(got)
        assert not os.path.exists(scratch_dir / "c.sock")
    finally:
        pty.close()


def _send_raw(path, payload, fds):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(path)
        if fds:
            socket.send_fds(c, [payload], fds)
        else:
            c.sendall(payload)


@pytest.mark.parametrize("count", [0, 2])
def test_a_message_without_exactly_one_fd_is_refused(scratch_dir, count):
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(count)]
    try:
        with console.ConsoleSocketServer(str(scratch_dir / "c.sock")) as server:
            _send_raw(server.path, b"/dev/pts/9", fds)
            with pytest.raises(ConsoleError, match=f"carried {count} fds, expected 1"):
                server.receive(timeout=GUARD)
    finally:
        for fd in fds:
            os.close(fd)


def test_receive_times_out_without_a_connection(scratch_dir):
    with (
        console.ConsoleSocketServer(str(scratch_dir / "c.sock")) as server,
        pytest.raises(ConsoleError, match="no connection"),
    ):
        server.receive(timeout=0.05)


def test_connecting_to_a_missing_socket_names_it(scratch_dir):
    path = str(scratch_dir / "missing.sock")
    with pytest.raises(ConsoleError, match="cannot connect to console socket") as info:
        console.connect_console_socket(path)
    assert info.value.path == path


def test_open_pty_refuses_what_is_not_ptmx():
    with pytest.raises(ConsoleError, match="not the pty multiplexer"):
        console.open_pty(os.devnull)


def test_open_pty_without_devpts_says_so(scratch_dir):
    with pytest.raises(ConsoleError, match="is devpts mounted"):
        console.open_pty(str(scratch_dir / "ptmx"))


def test_open_pty_gives_an_unlocked_pair_named_by_its_number():
    pty = console.open_pty()
    try:
        assert pty.name.startswith("/dev/pts/")
        assert os.ttyname(pty.slave) == pty.name
        assert os.fstat(pty.slave).st_rdev == os.stat(pty.name).st_rdev
        os.write(pty.slave, b"x")
        assert read_until(pty.master, lambda d: d == b"x") == b"x"
    finally:
        pty.close()


def test_messages_for_the_core():
    assert "console socket" in console.TTY_WITHOUT_CONSOLE_SOCKET
    assert "console socket" in console.CONSOLE_SOCKET_WITHOUT_TTY
