"""Run a test body in a forked child, for work that must not touch the test process.

Namespaces entered or mounts made in a private mount namespace die with the
child. The return value (or the exception's traceback) comes back over a pipe.
"""

import os
import pickle
import traceback


class ChildFailed(AssertionError):
    pass


def in_child(fn, *args, timeout=60):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            payload = ("ok", fn(*args))
        except BaseException:
            payload = ("err", traceback.format_exc())
        try:
            os.write(w, pickle.dumps(payload))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise ChildFailed(f"child died without an answer (wait status {status})")
    kind, value = pickle.loads(data)
    if kind == "err":
        raise ChildFailed(value)
    return value


def _private_mount_namespace_then(fn, *args):
    from namespaces import syscalls as sc

    s = sc.libc()
    s.unshare(sc.CLONE_NEWNS)
    s.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE, None)
    return fn(*args)


def in_private_mntns(fn, *args):
    """`in_child`, inside a new mount namespace with private propagation.

    Nothing the child mounts can outlive it or reach the host's mount table.
    """
    return in_child(_private_mount_namespace_then, fn, *args)
