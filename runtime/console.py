"""The container's terminal, handed over runc's `--console-socket` protocol.

When `process.terminal` is true, the pty must come from the container's own
devpts instance (so `tty` inside names /dev/pts/N of the container), which is
why the init opens `/dev/ptmx` after pivot_root. The master end goes to
whoever listens on the console socket (containerd's shim, conmon, `run -t`):
one SOCK_STREAM message whose payload is the pty's name and whose SCM_RIGHTS
carries exactly one fd, the master. The slave becomes the process's
controlling terminal and its stdin, stdout and stderr, and (for the init)
is bind-mounted on /dev/console.

The console socket is a path on the host, unreachable after pivot_root: the
runtime connects to it before forking (`connect_console_socket`) and hands
the connected fd down; `setup_console` takes either that fd or a path.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import termios
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from namespaces.syscalls import MS_BIND
from runtime.errors import ConsoleError

if TYPE_CHECKING:
    import socket

    from namespaces.syscalls import Syscalls

# linux/asm-generic/ioctls.h (x86_64 and arm64 share them)
TIOCGPTN = 0x80045430  # _IOR('T', 0x30, unsigned int): the pty's number
TIOCSPTLCK = 0x40045431  # _IOW('T', 0x31, int): lock/unlock the slave
TIOCGPTPEER = 0x5441  # _IO('T', 0x41): open the slave by the master (4.13+)
TIOCSCTTY = termios.TIOCSCTTY
TIOCSWINSZ = termios.TIOCSWINSZ

PTMX_RDEV = os.makedev(5, 2)
CONSOLE = "/dev/console"
MAX_NAME = 4096
"""The largest payload (pty name) `receive_pty_master` accepts, as go-runc does."""
MAX_FDS = 4
"""Room for a few fds, so a message with too many is seen (and its fds closed)."""

# runc's wording, for the core's checks of `--tty` / `--console-socket` / `--detach`
TTY_WITHOUT_CONSOLE_SOCKET = (
    "cannot allocate tty if pinnace-oci will detach without setting console socket"
)
CONSOLE_SOCKET_WITHOUT_TTY = (
    "cannot use console socket if pinnace-oci will not detach or allocate tty"
)


def preload() -> None:
    """Import what setup_console needs, for the container init before pivot_root."""
    import array  # noqa: F401  (socket.send_fds uses it)
    import socket  # noqa: F401


@dataclass(frozen=True)
class Pty:
    """A freshly opened pty pair: both fds are close-on-exec and owned by the caller."""

    master: int
    slave: int
    name: str

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def connect_console_socket(path: str) -> int:
    """Connect to the console socket at `path`; the connected fd (close-on-exec).

    Called by the runtime before it forks the container, while host paths
    are still reachable. The fd survives fork; setup_console closes it.
    """
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise ConsoleError(
            f"cannot connect to console socket {path}: {exc.strerror or exc}", path=path
        ) from exc
    return sock.detach()


def open_pty(ptmx: str = "/dev/ptmx") -> Pty:
    """Open a new pty from the devpts instance `ptmx` belongs to, slave unlocked.

    The slave is opened through the master (TIOCGPTPEER) rather than by path,
    so a container that controls /dev/pts cannot substitute another file.
    """
    try:
        master = os.open(ptmx, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConsoleError(
            f"cannot open {ptmx} (is devpts mounted at /dev/pts?): {exc.strerror}", path=ptmx
        ) from exc
    try:
        st = os.fstat(master)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != PTMX_RDEV:
            raise ConsoleError(f"{ptmx} is not the pty multiplexer (5:2)", path=ptmx)
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        (number,) = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, bytes(4)))
        name = f"/dev/pts/{number}"
        flags = os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC
        try:
            slave = fcntl.ioctl(master, TIOCGPTPEER, flags)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTTY):  # kernel older than 4.13
                raise
            slave = os.open(name, flags)
    except ConsoleError:
        os.close(master)
        raise
    except OSError as exc:
        os.close(master)
        raise ConsoleError(f"cannot set up a pty from {ptmx}: {exc}", path=ptmx) from exc
    return Pty(master=master, slave=slave, name=name)


def send_pty_master(sock_fd: int, master: int, name: str) -> None:
    """One message on the console socket: payload `name`, SCM_RIGHTS [master]."""
    import socket

    sock = socket.socket(fileno=sock_fd)
    try:
        socket.send_fds(sock, [name.encode()], [master])
    finally:
        sock.detach()


def setup_console(
    socket_path: str | int,
    *,
    sys: Syscalls,
    size: tuple[int, int] | None = None,
    owner_uid: int | None = None,
) -> None:
    """In the container init, after pivot_root: the pty becomes the init's terminal.

    `socket_path` is the console socket's path or an fd already connected to
    it (connect_console_socket); the fd is closed. `size` is (rows, columns)
    from process.consoleSize; `owner_uid` chowns the slave to the process's
    user, so it can reopen its own terminal.
    """
    _setup(socket_path, sys=sys, mount_console=True, size=size, owner_uid=owner_uid)


def setup_exec_console(
    socket_path: str | int,
    *,
    sys: Syscalls,
    size: tuple[int, int] | None = None,
    owner_uid: int | None = None,
) -> None:
    """The same for a process `exec` adds to a running container, without /dev/console."""
    _setup(socket_path, sys=sys, mount_console=False, size=size, owner_uid=owner_uid)


def _setup(
    socket_path: str | int,
    *,
    sys: Syscalls,
    mount_console: bool,
    size: tuple[int, int] | None,
    owner_uid: int | None,
) -> None:
    sock_fd = connect_console_socket(socket_path) if isinstance(socket_path, str) else socket_path
    where = socket_path if isinstance(socket_path, str) else None
    pty: Pty | None = None
    try:
        pty = open_pty()
        try:
            if size is not None:
                rows, cols = size
                fcntl.ioctl(pty.master, TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            if owner_uid is not None:
                os.fchown(pty.slave, owner_uid, -1)
        except OSError as exc:
            raise ConsoleError(f"cannot configure {pty.name}: {exc}", path=pty.name) from exc
        if mount_console:
            _mount_console(pty.name, sys)
        try:
            send_pty_master(sock_fd, pty.master, pty.name)
        except OSError as exc:
            raise ConsoleError(
                f"cannot send the pty master over the console socket: {exc}", path=where
            ) from exc
        _become_terminal(pty.slave, pty.name)
    except BaseException:
        if pty is not None:
            pty.close()
        raise
    else:
        os.close(pty.master)
        if pty.slave > 2:
            os.close(pty.slave)
    finally:
        os.close(sock_fd)


def _mount_console(name: str, sys: Syscalls) -> None:
    """Bind the slave on /dev/console, creating the mount point if missing."""
    try:
        st = os.lstat(CONSOLE)
    except FileNotFoundError:
        try:
            fd = os.open(
                CONSOLE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise ConsoleError(f"cannot create {CONSOLE}: {exc.strerror}", path=CONSOLE) from exc
        os.close(fd)
    else:
        if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode):
            raise ConsoleError(f"{CONSOLE} is not a file or device node", path=CONSOLE)
    try:
        sys.mount(name, CONSOLE, None, MS_BIND, None)
    except OSError as exc:
        raise ConsoleError(f"cannot bind {name} on {CONSOLE}: {exc}", path=CONSOLE) from exc


def _become_terminal(slave: int, name: str) -> None:
    """New session, slave as its controlling terminal, and as fds 0, 1 and 2."""
    try:
        if os.getsid(0) != os.getpid():
            os.setsid()
        fcntl.ioctl(slave, TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            if fd != slave:
                os.dup2(slave, fd, inheritable=True)
            else:
                os.set_inheritable(fd, True)
    except OSError as exc:
        raise ConsoleError(
            f"cannot make {name} the controlling terminal: {exc}", path=name
        ) from exc


def receive_pty_master(
    listen_sock: socket.socket, *, timeout: float | None = None
) -> tuple[int, str]:
    """Accept one connection on a listening console socket; (master fd, pty name).

    The fd arrives close-on-exec. Anything but exactly one fd is an error
    (and every fd received is closed), as containerd's receiver requires.
    """
    import array
    import socket as socket_mod

    listen_sock.settimeout(timeout)
    try:
        conn, _ = listen_sock.accept()
    except OSError as exc:
        raise ConsoleError(f"no connection on the console socket: {exc}") from exc
    with conn:
        conn.settimeout(timeout)
        try:
            # recvmsg, not socket.recv_fds: that drops its flags (no MSG_CMSG_CLOEXEC)
            msg, ancdata, flags, _ = conn.recvmsg(
                MAX_NAME, socket_mod.CMSG_SPACE(4 * MAX_FDS), socket_mod.MSG_CMSG_CLOEXEC
            )
        except OSError as exc:
            raise ConsoleError(f"cannot receive the pty master: {exc}") from exc
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket_mod.SOL_SOCKET and kind == socket_mod.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if len(fds) != 1 or flags & socket_mod.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise ConsoleError(f"console socket message carried {len(fds)} fds, expected 1")
    return int(fds[0]), msg.decode(errors="replace")


class ConsoleSocketServer:
    """A listening console socket at `path` (mode 0600), removed on close.

    For `run -t` and tests: `receive()` waits for the container's pty master.
    """

    def __init__(self, path: str) -> None:
        import socket

        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.bind(path)
            os.chmod(path, 0o600)
            self._sock.listen(1)
        except OSError as exc:
            self._sock.close()
            raise ConsoleError(f"cannot listen on console socket {path}: {exc}", path=path) from exc

    def fileno(self) -> int:
        return self._sock.fileno()

    def receive(self, timeout: float | None = None) -> tuple[int, str]:
        """The next container's pty master and name (see receive_pty_master)."""
        return receive_pty_master(self._sock, timeout=timeout)

    def close(self) -> None:
        self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> ConsoleSocketServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
