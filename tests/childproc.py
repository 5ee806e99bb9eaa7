"""Run test bodies in forked children, for work that must not touch the test process
(or that must race another process for real).

Namespaces entered or mounts made in a private mount namespace die with the
child. Each child's return value (or its traceback) comes back over a pipe.
"""

import gc
import os
import pickle
import traceback


class ChildFailed(AssertionError):
    pass


def _child_main(fn, args, w, go=None):
    """In the child: wait for the go byte if gated, run fn, send the outcome, exit."""
    try:
        if go is not None:
            os.read(go, 1)
        payload = ("ok", fn(*args))
    except BaseException:
        payload = ("err", traceback.format_exc())
    try:
        os.write(w, pickle.dumps(payload))
    finally:
        os._exit(0)


def _collect(pid, r):
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise ChildFailed(f"child {pid} died without an answer (wait status {status})")
    kind, value = pickle.loads(data)
    if kind == "err":
        raise ChildFailed(value)
    return value


def in_child(fn, *args, timeout=60):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        gc.disable()  # a forked child runs no finalizers of its parent's objects (gRPC's hang)
        os.close(r)
        _child_main(fn, args, w)
    os.close(w)
    return _collect(pid, r)


def run_children(*fns):
    """Run each fn in its own forked child, all released at once; their results in order.

    Every child is collected before any failure is raised, so none is left running.
    """
    go_r, go_w = os.pipe()
    children = []
    for fn in fns:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            gc.disable()  # a forked child runs no finalizers of its parent's objects (gRPC's hang)
            os.close(r)
            os.close(go_w)
            _child_main(fn, (), w, go_r)
        os.close(w)
        children.append((pid, r))
    os.close(go_r)
    os.write(go_w, b"x" * len(fns))
    os.close(go_w)
    results, errors = [], []
    for pid, r in children:
        try:
            results.append(_collect(pid, r))
        except ChildFailed as exc:
            errors.append(str(exc))
    assert not errors, "\n".join(errors)
    return results


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
