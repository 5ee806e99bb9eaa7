"""Resolve and open paths inside a root directory without ever leaving it.

Every mount target of a container and every entry of an image layer is
named by an untrusted path inside an untrusted tree: a symlink
`etc -> /` or a `../../..` must not reach the host. Resolution is done by
the kernel where it can (openat2 with RESOLVE_IN_ROOT: `/` and `..` stop
at the root, symlinks are followed as if the root were `/`), and by a
component-by-component walk with O_NOFOLLOW on older kernels. Both give
file descriptors, not path strings, so nothing can be swapped between the
check and the use.
"""

from __future__ import annotations

import errno
import os
import stat

from namespaces import syscalls as sc

MAX_SYMLINKS = 40  # the kernel's own limit (ELOOP after this many)


class PathEscapeError(OSError):
    """A path that would resolve outside its root, refused (RESOLVE_BENEATH semantics)."""

    def __init__(self, path: str, root: str) -> None:
        super().__init__(errno.EXDEV, f"path escapes its root {root!r}", path)
        self.root = root


def _components(path: str) -> list[str]:
    """The names in `path`, '..' kept; empty and '.' ones dropped, as pathlib parts do.

    A split, not PurePosixPath("/", path).parts (the same list): pathlib costs
    ~10 ms of import in every verb (see namespaces/record.py).
    """
    return [c for c in path.split("/") if c not in ("", ".")]


def lexical_clean(path: str) -> str:
    """`path` made relative to the root with `..` clamped at `/`, symlinks not followed.

    Good for names (tar entries, whiteout targets) that must be judged before
    anything exists on disk.
    """
    out: list[str] = []
    for c in _components(path):
        if c == "..":
            if out:
                out.pop()
        else:
            out.append(c)
    return "/".join(out)


class RootFS:
    """A directory treated as `/`: every lookup under it stays under it.

    Holds an O_PATH fd of the root, so the root itself cannot be swapped.
    """

    def __init__(self, root: str | os.PathLike[str], sys: sc.Syscalls | None = None) -> None:
        self.path = os.fspath(root)
        self.sys = sys or sc.libc()
        self.fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._openat2: bool | None = None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RootFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- opening ---------------------------------------------------------------

    def open(
        self, path: str, flags: int = os.O_PATH, mode: int = 0, *, follow_last: bool = True
    ) -> int:
        """Open `path` as seen from inside the root; symlinks are resolved in-root.

        `follow_last=False` opens a final symlink itself (O_NOFOLLOW|O_PATH),
        as a layer unpacker must when replacing it.
        """
        flags |= os.O_CLOEXEC
        if not follow_last:
            flags |= os.O_NOFOLLOW
        if self._openat2 is not False:
            try:
                fd = self.sys.openat2(
                    self.fd, path or ".", flags, mode, sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS
                )
                self._openat2 = True
                return fd
            except sc.SyscallError as exc:
                if not sc.is_enosys(exc):
                    raise OSError(exc.errno, exc.strerror, path) from None
                self._openat2 = False
        return self._walk_open(path, flags, mode, follow_last)

    def resolve(self, path: str, *, follow_last: bool = True) -> str:
        """The in-root path (relative, '' for the root) that `path` resolves to.

        Missing trailing components are kept as named (clamped); used to
        report and to create paths, never as the final handle.
        """
        parent, rest = self._walk(path, follow_last=follow_last, allow_missing=True)
        try:
            where = self._fd_path(parent)
        finally:
            os.close(parent)
        return "/".join(p for p in [where, *rest] if p)

    def ensure_beneath(self, path: str) -> str:
        """Like `resolve` but refuse (PathEscapeError) where the walk would leave the root.

        An in-root resolution clamps `..` and absolute symlinks silently; a
        caller that must treat those as hostile (an image layer's entry
        names) uses this.
        """
        depth = 0
        for c in _components(path):
            depth = depth - 1 if c == ".." else depth + 1
            if depth < 0:
                raise PathEscapeError(path, self.path)
        return lexical_clean(path)

    def mkdir_all(self, path: str, mode: int = 0o755) -> int:
        """Create every missing directory of `path` inside the root; an O_PATH fd of the last.

        The walk holds an fd at every step and creates with mkdirat relative
        to it, so a symlink planted mid-way is followed in-root or refused,
        never out of the root (runc's MkdirAllInRoot).
        """
        parent, rest = self._walk(path, follow_last=True, allow_missing=True)
        try:
            for name in rest:
                if name == "..":
                    raise OSError(errno.ENOENT, "'..' after a missing directory", path)
                try:
                    os.mkdir(name, mode, dir_fd=parent)
                except FileExistsError:
                    pass  # raced with another creator: open what is there, without following
                nxt = os.open(
                    name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent
                )
                os.close(parent)
                parent = nxt
            st = os.fstat(parent)
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
            return parent
        except BaseException:
            os.close(parent)
            raise

    # -- the portable walk -----------------------------------------------------

    def _walk_open(self, path: str, flags: int, mode: int, follow_last: bool) -> int:
        creating = bool(flags & os.O_CREAT)
        parent, rest = self._walk(path, follow_last=follow_last, allow_missing=creating)
        try:
            if not rest:
                return os.open(".", flags & ~os.O_CREAT, mode, dir_fd=parent)
            if len(rest) != 1:
                raise FileNotFoundError(errno.ENOENT, "no such directory", path)
            return os.open(rest[0], flags | os.O_NOFOLLOW, mode, dir_fd=parent)
        finally:
            os.close(parent)

    def _walk(self, path: str, *, follow_last: bool, allow_missing: bool) -> tuple[int, list[str]]:
        """Walk `path` from the root: (fd of the deepest existing dir, the rest unresolved).

        Symlinks are read and spliced into the remaining components; absolute
        targets restart at the root; `..` never climbs above the root.
        """
        todo = _components(path)
        stack = [os.dup(self.fd)]  # fds of the directories walked, root first
        links = 0
        try:
            while todo:
                name = todo.pop(0)
                if name == "..":
                    if len(stack) > 1:
                        os.close(stack.pop())
                    continue
                last = not todo
                try:
                    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
                except FileNotFoundError:
                    if allow_missing:
                        return self._keep_top(stack), [name, *todo]
                    raise
                st = os.fstat(fd)
                if stat.S_ISLNK(st.st_mode) and (follow_last or not last):
                    links += 1
                    if links > MAX_SYMLINKS:
                        os.close(fd)
                        raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
                    target = os.readlink("", dir_fd=fd)
                    os.close(fd)
                    if target.startswith("/"):
                        while len(stack) > 1:
                            os.close(stack.pop())
                    todo = _components(target) + todo
                    continue
                if last:
                    os.close(fd)
                    return self._keep_top(stack), [name]
                if not stat.S_ISDIR(st.st_mode):
                    os.close(fd)
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
                stack.append(fd)
            return self._keep_top(stack), []
        except BaseException:
            for fd in stack:
                os.close(fd)
            raise

    @staticmethod
    def _keep_top(stack: list[int]) -> int:
        top = stack.pop()
        for fd in stack:
            os.close(fd)
        return top

    def _fd_path(self, fd: int) -> str:
        """Where an fd below the root is, relative to the root."""
        real = os.readlink(f"/proc/self/fd/{fd}")
        root = os.readlink(f"/proc/self/fd/{self.fd}")
        rel = os.path.relpath(real, root)
        if rel == ".":
            return ""
        if rel.startswith(".."):
            raise PathEscapeError(real, self.path)
        return rel
