"""The typed view of config.json's root filesystem sections, and their validation.

Covers `root`, `mounts`, `linux.devices`, `linux.maskedPaths`,
`linux.readonlyPaths` and `linux.rootfsPropagation` (OCI runtime spec 1.2,
config.md and config-linux.md). Pure: every problem is a SpecError naming
the JSON path of the field, raised before anything is forked or mounted.
"""

from __future__ import annotations

import os
import stat

from namespaces.record import FrozenRecord
from namespaces.rootpath import lexical_clean
from namespaces.userns import IDMap, IDMapError
from namespaces.userns import validate as validate_idmap
from runtime.errors import SpecError
from runtime.rootfs_options import PROPAGATION, MountOptions, parse_options

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeGuard

# Filesystems that need no real source: a missing `source` becomes the type.
SOURCELESS_TYPES = frozenset(
    {
        "proc",
        "sysfs",
        "tmpfs",
        "devpts",
        "mqueue",
        "cgroup",
        "cgroup2",
        "ramfs",
        "securityfs",
        "debugfs",
        "tracefs",
        "configfs",
        "pstore",
        "bpf",
        "hugetlbfs",
        "fusectl",
        "binfmt_misc",
        "efivarfs",
        "overlay",
        "none",
    }
)

DEVICE_TYPES = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}


class MountSpec(FrozenRecord):
    """One entry of `mounts`, checked; `source` of a bind is an absolute host path."""

    __slots__ = (
        "destination",
        "gid_mappings",
        "index",
        "options",
        "source",
        "type",
        "uid_mappings",
    )

    def __init__(
        self,
        index: int,
        destination: str,
        type: str,
        source: str,
        options: MountOptions,
        uid_mappings: tuple[IDMap, ...] = (),
        gid_mappings: tuple[IDMap, ...] = (),
    ) -> None:
        self.index = index
        self.destination = destination
        self.type = type
        self.source = source
        self.options = options
        self.uid_mappings = uid_mappings
        self.gid_mappings = gid_mappings

    @property
    def where(self) -> str:
        """How errors name this mount: its JSON path and destination."""
        return f"mounts[{self.index}] ({self.destination})"

    @property
    def bind(self) -> bool:
        return self.options.bind

    @property
    def is_cgroup(self) -> bool:
        return self.type in ("cgroup", "cgroup2")

    @property
    def clean_destination(self) -> str:
        """The destination relative to the root, `..` clamped at `/`."""
        return lexical_clean(self.destination)


class DeviceSpec(FrozenRecord):
    """One entry of `linux.devices` (or a default device)."""

    __slots__ = ("file_mode", "gid", "index", "kind", "major", "minor", "path", "uid")

    def __init__(
        self,
        path: str,
        kind: str,  # c, u, b or p
        major: int = 0,
        minor: int = 0,
        file_mode: int = 0o666,
        uid: int = 0,
        gid: int = 0,
        index: int | None = None,  # None for a default device
    ) -> None:
        self.path = path
        self.kind = kind
        self.major = major
        self.minor = minor
        self.file_mode = file_mode
        self.uid = uid
        self.gid = gid
        self.index = index

    @property
    def where(self) -> str:
        if self.index is None:
            return f"default device {self.path}"
        return f"linux.devices[{self.index}] ({self.path})"

    @property
    def mode(self) -> int:
        """st_mode for mknod: the node type and the permission bits."""
        return DEVICE_TYPES[self.kind] | self.file_mode

    @property
    def rdev(self) -> int:
        return os.makedev(self.major, self.minor)


class RootfsSpec(FrozenRecord):
    """Everything the root filesystem setup needs, checked."""

    __slots__ = (
        "devices",
        "masked_paths",
        "mounts",
        "namespaces",
        "propagation",
        "readonly",
        "readonly_paths",
        "rootfs",
    )

    def __init__(
        self,
        rootfs: str,  # absolute host path of root.path
        readonly: bool = False,
        mounts: tuple[MountSpec, ...] = (),
        devices: tuple[DeviceSpec, ...] = (),
        masked_paths: tuple[str, ...] = (),
        readonly_paths: tuple[str, ...] = (),
        propagation: str | None = None,
        namespaces: frozenset[str] | None = None,
    ) -> None:
        self.rootfs = rootfs
        self.readonly = readonly
        self.mounts = mounts
        self.devices = devices
        self.masked_paths = masked_paths
        self.readonly_paths = readonly_paths
        self.propagation = propagation
        self.namespaces = frozenset() if namespaces is None else namespaces


def parse_rootfs(config: dict[str, Any], bundle: str) -> RootfsSpec:
    """Check and type every root filesystem section of `config`."""
    if not isinstance(config, dict):
        raise SpecError("config.json", "must be a JSON object")
    linux = _obj(config.get("linux"), "linux")
    rootfs, readonly = parse_root(config, bundle)
    return RootfsSpec(
        rootfs=rootfs,
        readonly=readonly,
        mounts=parse_mounts(config.get("mounts"), bundle),
        devices=parse_devices(linux.get("devices")),
        masked_paths=parse_paths(linux.get("maskedPaths"), "linux.maskedPaths"),
        readonly_paths=parse_paths(linux.get("readonlyPaths"), "linux.readonlyPaths"),
        propagation=parse_propagation(linux.get("rootfsPropagation")),
        namespaces=namespace_types(linux),
    )


def parse_root(config: dict[str, Any], bundle: str) -> tuple[str, bool]:
    """(absolute rootfs path, root.readonly); root.path may be relative to the bundle."""
    root = config.get("root")
    if not isinstance(root, dict):
        raise SpecError("root", "missing: Linux containers need a root filesystem")
    path = root.get("path")
    if not isinstance(path, str) or not path:
        raise SpecError("root.path", "must be a non-empty string")
    readonly = root.get("readonly", False)
    if not isinstance(readonly, bool):
        raise SpecError("root.readonly", f"must be true or false, not {readonly!r}")
    full = os.path.join(bundle, path)
    try:
        st = os.stat(full)
    except PermissionError:
        raise SpecError(
            "root.path",
            f"{full} cannot be reached by host uid {_host_uid()} (in a user namespace: the "
            "bundle's directories must be searchable by the container's mapped root)",
        ) from None
    except FileNotFoundError:
        raise SpecError("root.path", f"{full} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SpecError("root.path", f"{full} is not a directory")
    return os.path.realpath(full), readonly


def _host_uid() -> int:
    """Our effective uid as the host sees it (through our user namespace's uid_map)."""
    from namespaces.userns import map_id, parse_map

    try:
        with open("/proc/self/uid_map") as f:
            host = map_id(parse_map(f.read()), os.geteuid())
    except OSError:
        host = None
    return os.geteuid() if host is None else host


def parse_mounts(mounts: Any, bundle: str) -> tuple[MountSpec, ...]:
    if mounts is None:
        return ()
    if not isinstance(mounts, list):
        raise SpecError("mounts", "must be an array")
    return tuple(_parse_mount(i, m, bundle) for i, m in enumerate(mounts))


def _parse_mount(i: int, m: Any, bundle: str) -> MountSpec:
    where = f"mounts[{i}]"
    if not isinstance(m, dict):
        raise SpecError(where, "must be an object")
    dest = m.get("destination")
    if not isinstance(dest, str) or not dest:
        raise SpecError(f"{where}.destination", "must be a non-empty string")
    if not dest.startswith("/"):
        raise SpecError(f"{where}.destination", f"{dest!r} is not an absolute path")
    if "\0" in dest:
        raise SpecError(f"{where}.destination", "contains a NUL byte")
    if lexical_clean(dest) == "":
        raise SpecError(f"{where}.destination", "mounting over the container's / is not allowed")
    fstype = m.get("type", "")
    if not isinstance(fstype, str):
        raise SpecError(f"{where}.type", "must be a string")
    source = m.get("source", "")
    if not isinstance(source, str):
        raise SpecError(f"{where}.source", "must be a string")
    raw_options = m.get("options", [])
    if raw_options is None:
        raw_options = []
    if not isinstance(raw_options, list) or not all(isinstance(o, str) for o in raw_options):
        raise SpecError(f"{where}.options", "must be an array of strings")
    options = parse_options(raw_options)
    if fstype == "bind" and not options.bind:
        # type "bind" is what Docker and containerd write; mount(2) knows no such fs
        options = parse_options(["bind", *raw_options])
    if options.bind:
        if not source:
            raise SpecError(f"{where}.source", "a bind mount needs a source")
        source = os.path.join(bundle, source)  # relative sources are relative to the bundle
    elif not fstype:
        raise SpecError(f"{where}.type", "missing, and the mount is not a bind mount")
    elif not source:
        if fstype not in SOURCELESS_TYPES:
            raise SpecError(f"{where}.source", f"a {fstype!r} mount needs a source")
        source = fstype
    if fstype == "proc" and not options.bind and lexical_clean(dest) != "proc":
        # a second procfs elsewhere would dodge maskedPaths (runc refuses it too)
        raise SpecError(f"{where}.destination", "a proc filesystem may only be mounted at /proc")
    uid_maps = _idmaps(m.get("uidMappings"), f"{where}.uidMappings", "uid")
    gid_maps = _idmaps(m.get("gidMappings"), f"{where}.gidMappings", "gid")
    if bool(uid_maps) != bool(gid_maps):
        raise SpecError(
            f"{where}.{'gidMappings' if uid_maps else 'uidMappings'}",
            "uidMappings and gidMappings must be given together",
        )
    idmapped = options.idmap or options.ridmap
    if uid_maps and not idmapped:
        raise SpecError(f"{where}.options", "uidMappings/gidMappings need 'idmap' or 'ridmap'")
    if idmapped and not options.bind:
        raise SpecError(f"{where}.options", "'idmap'/'ridmap' apply to bind mounts only")
    if options.tmpcopyup and fstype != "tmpfs":
        raise SpecError(f"{where}.options", "'tmpcopyup' applies to tmpfs mounts only")
    return MountSpec(
        index=i,
        destination=dest,
        type=fstype,
        source=source,
        options=options,
        uid_mappings=uid_maps,
        gid_mappings=gid_maps,
    )


def _idmaps(raw: Any, where: str, what: str) -> tuple[IDMap, ...]:
    if raw is None or raw == []:
        return ()
    if not isinstance(raw, list):
        raise SpecError(where, "must be an array")
    maps = []
    for j, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise SpecError(f"{where}[{j}]", "must be an object")
        vals: list[int] = []
        for key in ("containerID", "hostID", "size"):
            v = entry.get(key)
            if not _is_int(v):
                raise SpecError(f"{where}[{j}].{key}", "must be an integer")
            vals.append(v)
        maps.append(IDMap(*vals))
    try:
        validate_idmap(maps, what)
    except IDMapError as exc:
        raise SpecError(where, str(exc)) from None
    return tuple(maps)


def parse_devices(devices: Any) -> tuple[DeviceSpec, ...]:
    if devices is None:
        return ()
    if not isinstance(devices, list):
        raise SpecError("linux.devices", "must be an array")
    out = []
    for i, d in enumerate(devices):
        where = f"linux.devices[{i}]"
        if not isinstance(d, dict):
            raise SpecError(where, "must be an object")
        path = d.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise SpecError(f"{where}.path", "must be an absolute path")
        if lexical_clean(path) in ("", "dev"):
            raise SpecError(f"{where}.path", f"{path!r} cannot be a device node")
        kind = d.get("type")
        if kind not in DEVICE_TYPES:
            raise SpecError(f"{where}.type", f"{kind!r} is not one of c, b, u, p")
        nums: dict[str, int] = {}
        for key in ("major", "minor"):
            v = d.get(key, 0 if kind == "p" else None)
            if not _is_int(v) or v < 0:
                raise SpecError(f"{where}.{key}", "must be a non-negative integer")
            nums[key] = v
        mode = d.get("fileMode", 0o666)
        if not _is_int(mode) or mode < 0:
            raise SpecError(f"{where}.fileMode", "must be a non-negative integer")
        mode &= ~0o170000  # some configs include the node type bits; mknod takes ours
        if mode > 0o7777:
            raise SpecError(f"{where}.fileMode", f"{oct(mode)} has bits beyond 07777")
        owner: dict[str, int] = {}
        for key in ("uid", "gid"):
            v = d.get(key, 0)
            if not _is_int(v) or v < 0:
                raise SpecError(f"{where}.{key}", "must be a non-negative integer")
            owner[key] = v
        out.append(
            DeviceSpec(
                path=path,
                kind=kind,
                major=nums["major"],
                minor=nums["minor"],
                file_mode=mode,
                uid=owner["uid"],
                gid=owner["gid"],
                index=i,
            )
        )
    return tuple(out)


def parse_paths(paths: Any, where: str) -> tuple[str, ...]:
    """maskedPaths / readonlyPaths: absolute paths inside the container."""
    if paths is None:
        return ()
    if not isinstance(paths, list):
        raise SpecError(where, "must be an array of absolute paths")
    for i, p in enumerate(paths):
        if not isinstance(p, str) or not p.startswith("/"):
            raise SpecError(f"{where}[{i}]", f"{p!r} is not an absolute path")
        if lexical_clean(p) == "":
            raise SpecError(f"{where}[{i}]", "cannot be the container's /")
    return tuple(paths)


def parse_propagation(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if value not in PROPAGATION:
        raise SpecError(
            "linux.rootfsPropagation",
            f"{value!r} is not one of shared, slave, private, unbindable (or an r- form)",
        )
    return str(value)


def namespace_types(linux: dict[str, Any]) -> frozenset[str]:
    """The namespace types the container gets, new or joined (validated by the core)."""
    out = set()
    for ns in linux.get("namespaces") or []:
        if isinstance(ns, dict) and isinstance(ns.get("type"), str):
            out.add(ns["type"])
    return frozenset(out)


def _obj(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(where, "must be an object")
    return value


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)
