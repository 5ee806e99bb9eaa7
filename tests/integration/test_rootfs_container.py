"""runtime.rootfs against the real kernel: a busybox bundle set up as a container's root.

Each test forks a child that unshares a mount and a pid namespace (and
whatever else the case needs) WITHOUT making its mounts private first: the
isolation from the host is prepare_rootfs's own job, and the host's mount
table is compared before and after to prove it. The child forks the
container's init (PID 1 of the new pid namespace), which runs
prepare_rootfs, pivot_into and finish_rootfs and then the test's probe,
from inside the container; the probe's answer comes back over a pipe.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import stat
import traceback
from pathlib import Path

import pytest

from namespaces import syscalls as sc
from runtime import rootfs
from tests.childproc import ChildFailed, in_child

pytestmark = pytest.mark.usefixtures("require_root", "host_mounts_unchanged")


# -- harness ------------------------------------------------------------------------


def _mountinfo() -> list[str]:
    return [
        " ".join(line.split()[3:5])
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    ]


@pytest.fixture
def host_mounts_unchanged():
    before = _mountinfo()
    yield
    assert _mountinfo() == before, "a container mount leaked into the host's mount table"


def _init(bundle, probe, no_pivot, in_userns, cgroup_path, w):
    s = sc.libc()
    try:
        config = json.loads((Path(bundle) / "config.json").read_text())
        rootfs.preload()
        rootfs.prepare_rootfs(
            config, str(bundle), sys=s, in_userns=in_userns, cgroup_path=cgroup_path
        )
        rootfs.pivot_into(rootfs.rootfs_path(config, str(bundle)), no_pivot=no_pivot, sys=s)
        rootfs.finish_rootfs(config, sys=s)
        payload = ("ok", probe())
    except BaseException as exc:
        payload = ("err", (type(exc).__name__, str(exc), traceback.format_exc()))
    os.write(w, pickle.dumps(payload))


def _run_init(s, bundle, probe, flags, no_pivot, in_userns, cgroup_path, before):
    """Unshare mount + pid (+ flags), fork the init, return its pickled answer."""
    s.unshare(flags | sc.CLONE_NEWNS | sc.CLONE_NEWPID)
    if before is not None:
        before()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            _init(bundle, probe, no_pivot, in_userns, cgroup_path, w)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return data


def _in_userns(s, *args):
    """Fork a child into a new user namespace mapping every id to itself, run the init there.

    The init then has capabilities only over namespaces its user namespace
    owns: no mknod, no sysfs without its own network namespace.
    """
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(go_w)
            os.close(res_r)
            s.unshare(sc.CLONE_NEWUSER)
            os.write(ready_w, b"1")
            os.read(go_r, 1)
            data = _run_init(s, *args)
            os.write(res_w, data)
        finally:
            os._exit(0)
    for fd in (ready_w, go_r, res_w):
        os.close(fd)
    try:
        if os.read(ready_r, 1) == b"1":
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{pid}/{name}", "w") as f:
                    f.write("0 0 4294967295\n")
        os.write(go_w, b"1")
        with os.fdopen(res_r, "rb") as f:
            return f.read()
    finally:
        os.close(ready_r)
        os.close(go_w)
        os.waitpid(pid, 0)


def _runtime(bundle, probe, flags, no_pivot, userns, cgroup_path, before):
    s = sc.libc()
    args = (bundle, probe, flags, no_pivot, userns, cgroup_path, before)
    data = _in_userns(s, *args) if userns else _run_init(s, *args)
    if not data:
        raise ChildFailed("the container's init died without an answer")
    return pickle.loads(data)


class ContainerSetupFailed(AssertionError):
    def __init__(self, kind, message, tb):
        super().__init__(f"{kind}: {message}\n{tb}")
        self.kind = kind
        self.message = message


def run_container(
    bundle,
    probe,
    *,
    flags=0,
    no_pivot=False,
    userns=False,
    cgroup_path=None,
    before=None,
):
    """Set up `bundle` as a container root and return probe() as run inside it.

    Raises ContainerSetupFailed (with the exception's type name and message)
    when the rootfs setup or the probe failed inside the container.
    """
    kind, value = in_child(_runtime, bundle, probe, flags, no_pivot, userns, cgroup_path, before)
    if kind == "err":
        raise ContainerSetupFailed(*value)
    return value


# -- probes (run inside the container, after pivot: only modules already imported) ---


def mounts_inside():
    """{mount point: (fstype, per-mount options, optional fields)} of the container."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            fields = head.split()
            out[fields[4]] = (tail.split()[0], fields[5], " ".join(fields[6:]))
    return out


def write_errno(path, *, create=False):
    """0 if `path` can be opened for writing, else the errno."""
    try:
        flags = os.O_WRONLY | (os.O_CREAT if create else 0)
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        return exc.errno
    os.close(fd)
    if create:
        os.unlink(path)
    return 0


def mkdir_errno(path):
    try:
        os.mkdir(path)
    except OSError as exc:
        return exc.errno
    os.rmdir(path)
    return 0


def node(path):
    st = os.lstat(path)
    return (
        stat.S_IFMT(st.st_mode),
        stat.S_IMODE(st.st_mode),
        os.major(st.st_rdev),
        os.minor(st.st_rdev),
        st.st_uid,
        st.st_gid,
    )


# -- the container's tree --------------------------------------------------------------


def _standard_probe():
    out = {"pid": os.getpid(), "mounts": mounts_inside()}
    out["devices"] = {
        n: node(f"/dev/{n}") for n in ("null", "zero", "full", "random", "urandom", "tty")
    }
    with open("/dev/zero", "rb") as f:
        out["zero"] = f.read(4)
    with open("/dev/null", "rb") as f:
        out["null_read"] = f.read()
    out["links"] = {
        n: os.readlink(f"/dev/{n}")
        for n in ("ptmx", "fd", "stdin", "stdout", "stderr", "core")
        if os.path.lexists(f"/dev/{n}")
    }
    master, slave = os.openpty()
    out["pty"] = os.ttyname(slave)
    os.close(master)
    os.close(slave)
    out["sys_write"] = mkdir_errno("/sys/kernel/pinnace-test")
    with open("/proc/keys", "rb") as f:
        out["keys"] = f.read(16)
    out["keys_node"] = node("/proc/keys")[0:4]
    out["firmware"] = os.listdir("/sys/firmware")
    out["firmware_write"] = mkdir_errno("/sys/firmware/x")
    out["proc_sys"] = write_errno("/proc/sys/kernel/hostname")
    out["sysrq"] = os.path.exists("/proc/sysrq-trigger") and write_errno("/proc/sysrq-trigger")
    out["root_write"] = write_errno("/tmp/pinnace-test-file", create=True)
    out["busybox"] = os.path.exists("/bin/busybox")
    return out


def test_minimal_bundle_gives_a_container_tree(make_bundle):
    bundle = make_bundle(["true"])
    out = run_container(bundle, _standard_probe)
    assert out["pid"] == 1
    assert out["busybox"]
    m = out["mounts"]
    assert m["/proc"][0] == "proc"
    assert m["/dev"][0] == "tmpfs"
    assert m["/dev/pts"][0] == "devpts"
    assert m["/dev/shm"][0] == "tmpfs"
    assert m["/sys"][0] == "sysfs" and m["/sys"][1].startswith("ro")
    # the host's mounts are gone with the old root
    assert not any("sandboxing" in p or "pinnace-bundle" in p for p in m), m
    chr_ = stat.S_IFCHR
    assert out["devices"] == {
        "null": (chr_, 0o666, 1, 3, 0, 0),
        "zero": (chr_, 0o666, 1, 5, 0, 0),
        "full": (chr_, 0o666, 1, 7, 0, 0),
        "random": (chr_, 0o666, 1, 8, 0, 0),
        "urandom": (chr_, 0o666, 1, 9, 0, 0),
        "tty": (chr_, 0o666, 5, 0, 0, 0),
    }
    assert out["zero"] == b"\0\0\0\0"
    assert out["null_read"] == b""
    assert out["links"] == {
        "ptmx": "pts/ptmx",
        "fd": "/proc/self/fd",
        "stdin": "/proc/self/fd/0",
        "stdout": "/proc/self/fd/1",
        "stderr": "/proc/self/fd/2",
        **({"core": "/proc/kcore"} if os.path.exists("/proc/kcore") else {}),
    }
    assert out["pty"] == "/dev/pts/0"  # a new devpts instance: its first pty
    assert out["sys_write"] == errno.EROFS
    # maskedPaths: a file reads as /dev/null, a directory is an empty read-only tmpfs
    assert out["keys"] == b""
    assert out["keys_node"] == (chr_, 0o666, 1, 3)
    assert out["firmware"] == []
    assert out["firmware_write"] == errno.EROFS
    assert m["/sys/firmware"][0] == "tmpfs" and m["/sys/firmware"][1].startswith("ro")
    # readonlyPaths
    assert out["proc_sys"] == errno.EROFS
    # a readonly path the kernel lacks is skipped, as runc does
    assert out["sysrq"] == (os.path.exists("/proc/sysrq-trigger") and errno.EROFS)
    assert out["root_write"] == 0


def test_no_pivot_moves_the_root_and_chroots(make_bundle):
    bundle = make_bundle(["true"])
    out = run_container(bundle, _standard_probe, no_pivot=True)
    assert out["busybox"]
    assert out["mounts"]["/proc"][0] == "proc"
    assert out["devices"]["null"][2:4] == (1, 3)
    assert out["keys"] == b""
    assert out["proc_sys"] == errno.EROFS


def _root_ro_probe():
    return {
        "root": write_errno("/pinnace-test-file", create=True),
        "tmp": write_errno("/tmp/pinnace-test-file", create=True),
        "shm": write_errno("/dev/shm/pinnace-test-file", create=True),
        "root_opts": mounts_inside()["/"][1],
    }


def test_readonly_root(make_bundle):
    def edit(c):
        c["root"]["readonly"] = True

    out = run_container(make_bundle(["true"], edit=edit), _root_ro_probe)
    assert out["root"] == errno.EROFS
    assert out["tmp"] == errno.EROFS
    assert out["shm"] == 0  # mounts on top of / keep their own flags
    assert out["root_opts"].split(",")[0] == "ro"


def test_rootfs_propagation_shared_is_applied_to_the_new_root(make_bundle):
    def edit(c):
        c["linux"]["rootfsPropagation"] = "shared"

    out = run_container(make_bundle(["true"], edit=edit), mounts_inside)
    assert "shared:" in out["/"][2]


def test_default_propagation_leaves_root_private(make_bundle):
    out = run_container(make_bundle(["true"]), mounts_inside)
    assert "shared:" not in out["/"][2]


# -- bind mounts -------------------------------------------------------------------------


def _bind_probe():
    out = {"mounts": mounts_inside()}
    for p in ("/mnt/ro", "/mnt/rw", "/mnt/rro", "/mnt/ro-top", "/mnt/rel"):
        out[p] = write_errno(f"{p}/pinnace-test-file", create=True)
        out[p + "/sub"] = write_errno(f"{p}/sub/pinnace-test-file", create=True)
    with open("/etc/hostfile") as f:
        out["file"] = f.read()
    with open("/mnt/rw/data") as f:
        out["data"] = f.read()
    return out


def test_bind_mounts_with_ro_rbind_rro_and_propagation(make_bundle, scratch_dir):
    src = scratch_dir / "src"
    (src / "sub").mkdir(parents=True)
    (src / "data").write_text("from the host\n")
    hostfile = scratch_dir / "hostfile"
    hostfile.write_text("a file\n")

    def edit(c):
        c["mounts"] += [
            {
                "destination": "/mnt/ro",
                "type": "bind",
                "source": str(src),
                "options": ["rbind", "ro"],
            },
            {
                "destination": "/mnt/rw",
                "type": "bind",
                "source": str(src),
                "options": ["rbind", "rw", "shared"],
            },
            {
                "destination": "/mnt/rro",
                "type": "bind",
                "source": str(src),
                "options": ["rbind", "rro", "unbindable"],
            },
            {
                "destination": "/mnt/ro-top",
                "source": str(src),
                "options": ["rbind", "ro", "nosuid"],
            },
            {"destination": "/mnt/rel", "type": "bind", "source": "reldir", "options": ["bind"]},
            {
                "destination": "/etc/hostfile",
                "type": "bind",
                "source": str(hostfile),
                "options": ["bind", "ro"],
            },
        ]

    bundle = make_bundle(["true"], edit=edit)
    (bundle / "reldir" / "sub").mkdir(parents=True)

    def before():
        # a submount inside the source, in the container's mount namespace only
        sc.libc().mount("tmpfs", str(src / "sub"), "tmpfs", 0, "size=1m")

    out = run_container(bundle, _bind_probe, before=before)
    m = out["mounts"]
    assert out["/mnt/ro"] == errno.EROFS
    assert out["/mnt/ro/sub"] == 0  # "ro" is per mount: the rbound submount stays writable
    assert out["/mnt/rw"] == 0 and out["/mnt/rw/sub"] == 0
    assert out["/mnt/rro"] == errno.EROFS
    assert out["/mnt/rro/sub"] == errno.EROFS  # rro: recursive, through mount_setattr
    assert out["/mnt/ro-top"] == errno.EROFS
    assert "nosuid" in m["/mnt/ro-top"][1]
    assert out["/mnt/rel"] == 0  # a relative source is relative to the bundle
    assert "/mnt/rel/sub" not in m  # plain "bind": not recursive
    assert out["file"] == "a file\n"
    assert m["/etc/hostfile"][1].startswith("ro")
    assert out["data"] == "from the host\n"
    assert "shared:" in m["/mnt/rw"][2]
    assert "unbindable" in m["/mnt/rro"][2]
    assert "/mnt/rro/sub" in m and "/mnt/ro/sub" in m


def test_tmpcopyup_copies_the_mount_point_into_the_tmpfs(make_bundle):
    def edit(c):
        c["mounts"].append(
            {
                "destination": "/etc",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["tmpcopyup", "size=1m"],
            }
        )

    bundle = make_bundle(["true"], edit=edit)

    def probe():
        with open("/etc/passwd") as f:
            passwd = f.read()
        with open("/etc/passwd", "a") as f:
            f.write("x:x:9:9::/:/bin/sh\n")
        return passwd, mounts_inside()["/etc"][0], stat.S_IMODE(os.stat("/etc/passwd").st_mode)

    passwd, fstype, mode = run_container(bundle, probe)
    original = (bundle / "rootfs/etc/passwd").read_text()
    assert passwd == original and "root" in original
    assert fstype == "tmpfs"
    assert mode == stat.S_IMODE((bundle / "rootfs/etc/passwd").stat().st_mode)


def test_idmapped_bind_mount(make_bundle, scratch_dir):
    src = scratch_dir / "owned"
    src.mkdir()
    (src / "f").write_text("x")
    os.chown(src / "f", 1000, 1000)
    mapping = [{"containerID": 0, "hostID": 100000, "size": 65536}]

    def edit(c):
        c["mounts"].append(
            {
                "destination": "/mnt/idmapped",
                "type": "bind",
                "source": str(src),
                "options": ["bind", "idmap"],
                "uidMappings": mapping,
                "gidMappings": mapping,
            }
        )

    def probe():
        st = os.stat("/mnt/idmapped/f")
        return st.st_uid, st.st_gid

    assert run_container(make_bundle(["true"], edit=edit), probe) == (101000, 101000)


# -- devices --------------------------------------------------------------------------------


def test_linux_devices_are_created_with_mode_and_owner(make_bundle):
    def edit(c):
        c["linux"]["devices"] = [
            {
                "path": "/dev/fuse",
                "type": "c",
                "major": 10,
                "minor": 229,
                "fileMode": 0o600,
                "uid": 1,
                "gid": 2,
            },
            {"path": "/dev/sub/loop9", "type": "b", "major": 7, "minor": 9, "fileMode": 0o660},
            {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640},
            {"path": "/dev/pipe", "type": "p"},
        ]

    def probe():
        return {p: node(p) for p in ("/dev/fuse", "/dev/sub/loop9", "/dev/null", "/dev/pipe")}

    out = run_container(make_bundle(["true"], edit=edit), probe)
    assert out["/dev/fuse"] == (stat.S_IFCHR, 0o600, 10, 229, 1, 2)
    assert out["/dev/sub/loop9"] == (stat.S_IFBLK, 0o660, 7, 9, 0, 0)
    assert out["/dev/null"] == (stat.S_IFCHR, 0o640, 1, 3, 0, 0)  # the config's, not the default
    assert out["/dev/pipe"][0] == stat.S_IFIFO


def test_existing_mismatching_device_is_an_error(make_bundle):
    def edit(c):
        c["linux"]["devices"] = [{"path": "/etc/passwd", "type": "c", "major": 1, "minor": 3}]

    with pytest.raises(ContainerSetupFailed) as info:
        run_container(make_bundle(["true"], edit=edit), mounts_inside)
    assert info.value.kind == "RootfsError"
    assert "linux.devices[0] (/etc/passwd)" in info.value.message
    assert "EEXIST" in info.value.message


# -- namespaces: net, cgroup, user -------------------------------------------------------------


def test_sysfs_in_a_new_network_namespace(make_bundle):
    def probe():
        return mounts_inside()["/sys"], sorted(os.listdir("/sys/class/net"))

    (fstype, opts, _), links = run_container(make_bundle(["true"]), probe, flags=sc.CLONE_NEWNET)
    assert fstype == "sysfs" and opts.startswith("ro")
    assert links == ["lo"]


_CGROUP_MOUNT = {
    "destination": "/sys/fs/cgroup",
    "type": "cgroup",
    "source": "cgroup",
    "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
}


def _cgroup_probe():
    m = mounts_inside()
    return (
        m["/sys/fs/cgroup"],
        os.path.exists("/sys/fs/cgroup/cgroup.procs"),
        mkdir_errno("/sys/fs/cgroup/pinnace-test"),
    )


def test_cgroup2_mount_in_a_cgroup_namespace(make_bundle):
    def edit(c):
        c["mounts"].append(dict(_CGROUP_MOUNT))
        c["linux"]["namespaces"].append({"type": "cgroup"})

    (fstype, opts, _), procs, write = run_container(
        make_bundle(["true"], edit=edit), _cgroup_probe, flags=sc.CLONE_NEWCGROUP
    )
    assert fstype == "cgroup2"
    assert opts.startswith("ro")
    assert procs
    assert write == errno.EROFS


def _unified() -> Path:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        head, _, tail = line.partition(" - ")
        if tail.split()[0] == "cgroup2":
            return Path(head.split()[4])
    pytest.skip("no cgroup2 hierarchy on this host")


def test_cgroup_mount_without_cgroupns_binds_the_containers_cgroup(make_bundle):
    cg = _unified() / f"pinnace-test-rootfs-{os.getpid()}"
    cg.mkdir()
    try:
        (cg / "child").mkdir()

        def edit(c):
            c["mounts"].append(dict(_CGROUP_MOUNT))

        def probe():
            return _cgroup_probe(), sorted(
                e
                for e in os.listdir("/sys/fs/cgroup")
                if not e.startswith(("cgroup.", "cpu", "memory", "io", "pids", "hugetlb"))
            )

        ((fstype, opts, _), procs, write), entries = run_container(
            make_bundle(["true"], edit=edit), probe, cgroup_path=str(cg)
        )
        assert fstype == "cgroup2"
        assert opts.startswith("ro")
        assert procs and write == errno.EROFS
        assert entries == ["child"]  # the container's own cgroup, not the host's root
    finally:
        (cg / "child").rmdir()
        cg.rmdir()


def test_cgroup_mount_without_cgroupns_or_cgroup_path_is_refused(make_bundle):
    def edit(c):
        c["mounts"].append(dict(_CGROUP_MOUNT))

    with pytest.raises(ContainerSetupFailed) as info:
        run_container(make_bundle(["true"], edit=edit), mounts_inside)
    assert "mounts[5] (/sys/fs/cgroup)" in info.value.message


def _userns_probe():
    out = {"mounts": mounts_inside()}
    out["null"] = node("/dev/null")[0:4]
    out["null_write"] = write_errno("/dev/null")
    with open("/dev/urandom", "rb") as f:
        out["urandom"] = len(f.read(8))
    out["sys_write"] = mkdir_errno("/sys/kernel/pinnace-test")
    with open("/proc/keys", "rb") as f:
        out["keys"] = f.read(16)
    out["proc_sys"] = write_errno("/proc/sys/kernel/hostname")
    return out


def test_user_namespace_binds_host_devices_and_falls_back_to_a_sys_bind(make_bundle):
    bundle = make_bundle(["true"])
    out = run_container(bundle, _userns_probe, userns=True)
    m = out["mounts"]
    assert out["null"] == (stat.S_IFCHR, 0o666, 1, 3)
    assert "/dev/null" in m and "/dev/urandom" in m  # bind mounts, not nodes
    assert out["null_write"] == 0
    assert out["urandom"] == 8
    assert m["/sys"][0] == "sysfs" and m["/sys"][1].startswith("ro")  # the host's, bound
    assert out["sys_write"] == errno.EROFS
    assert out["keys"] == b""
    assert out["proc_sys"] == errno.EROFS


def test_user_namespace_with_its_own_network_namespace_mounts_sysfs(make_bundle):
    out = run_container(make_bundle(["true"]), mounts_inside, userns=True, flags=sc.CLONE_NEWNET)
    assert out["/sys"][0] == "sysfs"
    assert "/sys/fs/cgroup" not in out  # a fresh sysfs, not the host's tree


# -- errors name the mount ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mount", "expect"),
    [
        (
            {"destination": "/x", "type": "pinnacefs", "source": "none"},
            "mounts[5] (/x): mount pinnacefs: ENODEV",
        ),
        (
            {
                "destination": "/y",
                "type": "bind",
                "source": "/nonexistent-pinnace",
                "options": ["bind"],
            },
            "mounts[5] (/y): open the source /nonexistent-pinnace: ENOENT",
        ),
        (
            {"destination": "/etc/passwd/z", "type": "tmpfs", "source": "tmpfs"},
            "mounts[5] (/etc/passwd/z): create the mount point: ENOTDIR",
        ),
    ],
)
def test_mount_errors_name_the_entry_and_the_errno(make_bundle, mount, expect):
    def edit(c):
        c["mounts"].append(mount)

    with pytest.raises(ContainerSetupFailed) as info:
        run_container(make_bundle(["true"], edit=edit), mounts_inside)
    assert info.value.kind == "RootfsError"
    assert expect in info.value.message


def test_finish_works_without_proc_in_the_container(make_bundle):
    """readonlyPaths, maskedPaths and root.readonly use fds only, no /proc/self/fd."""

    def edit(c):
        c["mounts"] = [m for m in c["mounts"] if m["type"] not in ("proc", "sysfs")]
        c["linux"]["readonlyPaths"] = ["/etc", "/proc/sys"]
        c["linux"]["maskedPaths"] = ["/www/index.html", "/home", "/proc/kcore"]
        c["root"]["readonly"] = True

    def probe():
        with open("/www/index.html", "rb") as f:
            index = f.read()
        return {
            "proc": os.listdir("/proc"),
            "etc": write_errno("/etc/passwd"),
            "index": index,
            "home": os.listdir("/home"),
            "root": write_errno("/pinnace-test-file", create=True),
            "links": sorted(os.listdir("/dev")),
        }

    out = run_container(make_bundle(["true"], edit=edit), probe)
    assert out["proc"] == []
    assert out["etc"] == errno.EROFS
    assert out["index"] == b""
    assert out["home"] == []
    assert out["root"] == errno.EROFS
    assert "core" not in out["links"]  # no /proc in the container: no /dev/core
