"""The features document `pinnace-oci features` prints (runtime-spec 1.2 features.md).

It tells a caller (containerd, CRI-O, podman) what this runtime recognizes
before it writes a config.json: spec versions, hook kinds, mount options,
namespaces, capabilities, seccomp names. Mount options and seccomp names are
read from the modules that parse them (rootfs_options, seccomp), so the
document cannot claim what the runtime would refuse. The spec wants it to describe the
runtime rather than the host, with two exceptions taken from runc: the
capability list stops at the kernel's last capability, and seccomp's
`enabled`/`supportedFlags` depend on libseccomp (loaded at run time here)
and the kernel it probes. Host facts that do not fit the schema go into
`io.pinnace.*` annotations.
"""

from __future__ import annotations

import json
import os
from typing import Any

from runtime.hooks import HOOK_KINDS

OCI_VERSION_MIN = "1.0.0"
OCI_VERSION_MAX = "1.2.0"

NAMESPACES: tuple[str, ...] = (
    "cgroup",
    "ipc",
    "mount",
    "network",
    "pid",
    "time",
    "user",
    "uts",
)

# linux/capability.h, indexed by capability number.
CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)

# The mount options runtime/rootfs_options.py recognizes must include these
# (the coordinated list); the document lists what that module really parses.
MOUNT_OPTIONS: tuple[str, ...] = (
    "async",
    "atime",
    "bind",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "idmap",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "nosymfollow",
    "private",
    "rbind",
    "relatime",
    "remount",
    "ridmap",
    "ro",
    "rprivate",
    "rro",
    "rrw",
    "rshared",
    "rslave",
    "runbindable",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "symfollow",
    "sync",
    "unbindable",
)

# The seccomp names come from runtime/seccomp.py, which parses them; these
# are the ones it refuses with a SpecError although it knows them.
SECCOMP_UNSUPPORTED_ACTIONS = frozenset({"SCMP_ACT_NOTIFY"})
# flag -> the libseccomp API level (seccomp_api_get) at which kernel and
# library both support it: 2 = TSYNC, 3 = LOG, 4 = SPEC_ALLOW,
# 7 = WAIT_KILLABLE_RECV (which our seccomp accepts but ignores: no notify).
SECCOMP_FLAG_API_LEVEL: dict[str, int] = {
    "SECCOMP_FILTER_FLAG_TSYNC": 2,
    "SECCOMP_FILTER_FLAG_LOG": 3,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": 7,
}

IDMAP_MIN_KERNEL = (5, 12)  # mount_setattr(2) with MOUNT_ATTR_IDMAP


def last_capability(path: str = "/proc/sys/kernel/cap_last_cap") -> int | None:
    """The kernel's highest capability number, or None when it cannot be read."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def known_capabilities(last_cap: int | None) -> list[str]:
    """The names we know, up to the kernel's last capability (as runc lists them)."""
    if last_cap is None:
        return list(CAPABILITIES)
    return list(CAPABILITIES[: last_cap + 1])


def recognized_mount_options() -> list[str]:
    """Every option runtime/rootfs_options.py sorts into a kernel call or marker.

    Anything else would go to mount(2) as filesystem data, which the spec
    says to leave out of this list.
    """
    from runtime import rootfs_options as ro

    names = (
        set(ro.FLAGS) | set(ro.PROPAGATION) | set(ro.RECURSIVE) | set(ro.RECURSIVE_ATIME)
    ) | set(ro.MARKERS)
    return sorted(names)


def libseccomp_info() -> tuple[str, int] | None:
    """(version, API level) of the libseccomp we would load, or None without one.

    The API level is libseccomp's own probe of the kernel (seccomp_api_get).
    """
    import ctypes
    import ctypes.util

    lib = None
    for name in ("libseccomp.so.2", ctypes.util.find_library("seccomp")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return None

    class _Version(ctypes.Structure):
        _fields_ = [
            ("major", ctypes.c_uint),
            ("minor", ctypes.c_uint),
            ("micro", ctypes.c_uint),
        ]

    try:
        lib.seccomp_version.restype = ctypes.POINTER(_Version)
        lib.seccomp_api_get.restype = ctypes.c_uint
        v = lib.seccomp_version().contents
        api = int(lib.seccomp_api_get())
    except AttributeError:  # older than 2.4: no version or API calls
        return None
    return f"{v.major}.{v.minor}.{v.micro}", api


def seccomp_features(lib: tuple[str, int] | None) -> dict[str, Any]:
    """The seccomp section: names runtime/seccomp.py accepts; flags the host supports.

    A flag is supported when libseccomp's API level says kernel and library
    both have it and our seccomp module really applies it (not just accepts it).
    """
    from runtime import seccomp

    api = lib[1] if lib else 0
    applied = [name for name, attr in seccomp.FLAGS.items() if attr is not None]
    return {
        "enabled": lib is not None,
        "actions": sorted(set(seccomp.ACTIONS) - SECCOMP_UNSUPPORTED_ACTIONS),
        "operators": sorted(seccomp.OPERATORS),
        "archs": sorted(seccomp.ARCHITECTURES),
        "knownFlags": list(seccomp.FLAGS),
        "supportedFlags": [f for f in applied if api >= SECCOMP_FLAG_API_LEVEL.get(f, 1 << 30)],
    }


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of the running kernel (or of `release`, e.g. '6.1.0-18-amd64')."""
    release = release or os.uname().release
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def features() -> dict[str, Any]:
    """The features document as a dict (see features_json)."""
    options = recognized_mount_options()
    seccomp = libseccomp_info()
    annotations: dict[str, str] = {
        "io.pinnace.version": _pinnace_version(),
        "io.pinnace.kernel": os.uname().release,
        "io.pinnace.kernel.idmapped-mounts": str(kernel_version() >= IDMAP_MIN_KERNEL).lower(),
    }
    if seccomp:
        annotations["io.github.seccomp.libseccomp.version"] = seccomp[0]
    return {
        "ociVersionMin": OCI_VERSION_MIN,
        "ociVersionMax": OCI_VERSION_MAX,
        "hooks": list(HOOK_KINDS),
        "mountOptions": options,
        "linux": {
            "namespaces": list(NAMESPACES),
            "capabilities": known_capabilities(last_capability()),
            "cgroup": {
                "v1": False,
                "v2": True,
                "systemd": False,
                "systemdUser": False,
                "rdma": False,
            },
            "seccomp": seccomp_features(seccomp),
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            # the spec: true when the runtime parses and uses a mount's
            # uidMappings/gidMappings, whatever the kernel can do
            "mountExtensions": {"idmap": {"enabled": "idmap" in options}},
        },
        "annotations": annotations,
        "potentiallyUnsafeConfigAnnotations": [],
    }


def _pinnace_version() -> str:
    """The installed distribution's version (runtime/ must not import the pinnace CLI)."""
    from importlib import metadata

    try:
        return metadata.version("pinnace")
    except metadata.PackageNotFoundError:
        return "unknown"


def features_json() -> str:
    """The features document, indented as `runc features` prints it."""
    return json.dumps(features(), indent=4)
