"""A mount's `options` list, turned into what the kernel calls take.

The OCI spec's Linux mount options are of four kinds: mount(2) flags
(`nosuid`, `ro`...), propagation changes applied after the mount
(`rslave`...), recursive attributes that only mount_setattr(2) with
AT_RECURSIVE can apply to a whole tree (`rro`, `rnosuid`...), and markers
the runtime itself interprets (`bind`, `idmap`, `tmpcopyup`). Anything
else is filesystem data (`mode=755`, `size=64k`, `newinstance`) and is
passed to mount(2) as its data string, in order.
"""

from __future__ import annotations

from namespaces import syscalls as sc
from namespaces.record import FrozenRecord

# mount(2) flags not in the syscall layer (linux/mount.h).
MS_SYNCHRONOUS = 0x10
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_SILENT = 0x8000
MS_UNBINDABLE = 0x20000
MS_RELATIME = 0x200000
MS_I_VERSION = 0x800000
MS_STRICTATIME = 0x1000000
MS_LAZYTIME = 0x2000000

# mount_setattr(2) attributes (linux/mount.h).
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR__ATIME = 0x70
MOUNT_ATTR_RELATIME = 0x0
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_STRICTATIME = 0x20
MOUNT_ATTR_NODIRATIME = 0x80
MOUNT_ATTR_NOSYMFOLLOW = 0x200000

ATIME_FLAGS = MS_NOATIME | MS_RELATIME | MS_STRICTATIME

# option -> (clear?, flag): "ro" sets MS_RDONLY, "rw" clears it.
FLAGS: dict[str, tuple[bool, int]] = {
    "async": (True, MS_SYNCHRONOUS),
    "atime": (True, MS_NOATIME),
    "bind": (False, sc.MS_BIND),
    "defaults": (False, 0),
    "dev": (True, sc.MS_NODEV),
    "diratime": (True, MS_NODIRATIME),
    "dirsync": (False, MS_DIRSYNC),
    "exec": (True, sc.MS_NOEXEC),
    "iversion": (False, MS_I_VERSION),
    "lazytime": (False, MS_LAZYTIME),
    "loud": (True, MS_SILENT),
    "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME),
    "nodev": (False, sc.MS_NODEV),
    "nodiratime": (False, MS_NODIRATIME),
    "noexec": (False, sc.MS_NOEXEC),
    "noiversion": (True, MS_I_VERSION),
    "nolazytime": (True, MS_LAZYTIME),
    "nomand": (True, MS_MANDLOCK),
    "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME),
    "nosuid": (False, sc.MS_NOSUID),
    "nosymfollow": (False, MS_NOSYMFOLLOW),
    "rbind": (False, sc.MS_BIND | sc.MS_REC),
    "relatime": (False, MS_RELATIME),
    "remount": (False, sc.MS_REMOUNT),
    "ro": (False, sc.MS_RDONLY),
    "rw": (True, sc.MS_RDONLY),
    "silent": (False, MS_SILENT),
    "strictatime": (False, MS_STRICTATIME),
    "suid": (True, sc.MS_NOSUID),
    "symfollow": (True, MS_NOSYMFOLLOW),
    "sync": (False, MS_SYNCHRONOUS),
}

PROPAGATION: dict[str, int] = {
    "private": sc.MS_PRIVATE,
    "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED,
    "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE,
    "rslave": sc.MS_SLAVE | sc.MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | sc.MS_REC,
}

# option -> (clear?, attribute) for mount_setattr(AT_RECURSIVE). The atime
# attributes are one 3-bit field: setting one also clears MOUNT_ATTR__ATIME.
RECURSIVE: dict[str, tuple[bool, int]] = {
    "rro": (False, MOUNT_ATTR_RDONLY),
    "rrw": (True, MOUNT_ATTR_RDONLY),
    "rnosuid": (False, MOUNT_ATTR_NOSUID),
    "rsuid": (True, MOUNT_ATTR_NOSUID),
    "rnodev": (False, MOUNT_ATTR_NODEV),
    "rdev": (True, MOUNT_ATTR_NODEV),
    "rnoexec": (False, MOUNT_ATTR_NOEXEC),
    "rexec": (True, MOUNT_ATTR_NOEXEC),
    "rnodiratime": (False, MOUNT_ATTR_NODIRATIME),
    "rdiratime": (True, MOUNT_ATTR_NODIRATIME),
    "rnosymfollow": (False, MOUNT_ATTR_NOSYMFOLLOW),
    "rsymfollow": (True, MOUNT_ATTR_NOSYMFOLLOW),
}
RECURSIVE_ATIME: dict[str, int] = {
    "rnoatime": MOUNT_ATTR_NOATIME,
    "rstrictatime": MOUNT_ATTR_STRICTATIME,
    "rrelatime": MOUNT_ATTR_RELATIME,
    # "not noatime", "not relatime", "not strictatime": the kernel's default, relatime
    "ratime": MOUNT_ATTR_RELATIME,
    "rnorelatime": MOUNT_ATTR_RELATIME,
    "rnostrictatime": MOUNT_ATTR_RELATIME,
}

MARKERS = frozenset({"idmap", "ridmap", "tmpcopyup"})

# Flags a bind remount can change (the per-mount flags); the others belong
# to the superblock and are ignored by MS_BIND|MS_REMOUNT.
PER_MOUNT_FLAGS = (
    sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | MS_NODIRATIME | MS_NOSYMFOLLOW
) | ATIME_FLAGS


class MountOptions(FrozenRecord):
    """One mount's options, sorted into what each kernel call needs."""

    __slots__ = (
        "cleared",
        "data",
        "flags",
        "idmap",
        "propagation",
        "rec_clr",
        "rec_set",
        "ridmap",
        "tmpcopyup",
    )

    def __init__(
        self,
        flags: int = 0,  # MS_* to pass to mount(2) (bind, rec, ro, nosuid...)
        cleared: int = 0,  # MS_* an option explicitly cleared (rw, suid, dev...)
        propagation: tuple[int, ...] = (),  # applied after the mount, in order
        rec_set: int = 0,  # MOUNT_ATTR_* set on the whole tree (rro, rnosuid...)
        rec_clr: int = 0,
        data: str = "",  # unknown options, comma-joined, for mount(2)'s data
        idmap: bool = False,
        ridmap: bool = False,
        tmpcopyup: bool = False,
    ) -> None:
        self.flags = flags
        self.cleared = cleared
        self.propagation = propagation
        self.rec_set = rec_set
        self.rec_clr = rec_clr
        self.data = data
        self.idmap = idmap
        self.ridmap = ridmap
        self.tmpcopyup = tmpcopyup

    @property
    def bind(self) -> bool:
        return bool(self.flags & sc.MS_BIND)

    @property
    def recursive_bind(self) -> bool:
        return self.bind and bool(self.flags & sc.MS_REC)

    @property
    def remount_flags(self) -> int:
        """The per-mount flags a bind needs applied by a second, remount call."""
        return self.flags & PER_MOUNT_FLAGS

    @property
    def has_recursive_attrs(self) -> bool:
        return bool(self.rec_set or self.rec_clr)


def parse_options(options: list[str]) -> MountOptions:
    """Sort `options` as mount(8) would; later options win over earlier ones."""
    flags = cleared = rec_set = rec_clr = 0
    propagation: list[int] = []
    data: list[str] = []
    markers: set[str] = set()
    for opt in options:
        if opt in FLAGS:
            clear, flag = FLAGS[opt]
            if clear:
                flags &= ~flag
                cleared |= flag
            else:
                flags |= flag
                cleared &= ~flag
        elif opt in PROPAGATION:
            propagation.append(PROPAGATION[opt])
        elif opt in RECURSIVE:
            clear, attr = RECURSIVE[opt]
            if clear:
                rec_clr |= attr
                rec_set &= ~attr
            else:
                rec_set |= attr
                rec_clr &= ~attr
        elif opt in RECURSIVE_ATIME:
            rec_set = (rec_set & ~MOUNT_ATTR__ATIME) | RECURSIVE_ATIME[opt]
            rec_clr |= MOUNT_ATTR__ATIME
        elif opt in MARKERS:
            markers.add(opt)
        else:
            data.append(opt)
    return MountOptions(
        flags=flags,
        cleared=cleared,
        propagation=tuple(propagation),
        rec_set=rec_set,
        rec_clr=rec_clr,
        data=",".join(data),
        idmap="idmap" in markers,
        ridmap="ridmap" in markers,
        tmpcopyup="tmpcopyup" in markers,
    )


# statvfs(3) f_flag bits -> the MS_* flag that keeps them on a remount. A
# remount inside a user namespace must keep these "locked" flags or fail
# with EPERM, and a root.readonly remount must not drop nosuid/nodev.
_STATVFS_TO_MS = (
    (0x1, sc.MS_RDONLY),  # ST_RDONLY
    (0x2, sc.MS_NOSUID),  # ST_NOSUID
    (0x4, sc.MS_NODEV),  # ST_NODEV
    (0x8, sc.MS_NOEXEC),  # ST_NOEXEC
    (0x400, MS_NOATIME),  # ST_NOATIME
    (0x800, MS_NODIRATIME),  # ST_NODIRATIME
    (0x1000, MS_RELATIME),  # ST_RELATIME
    (0x2000, MS_NOSYMFOLLOW),  # ST_NOSYMFOLLOW
)


def flags_from_statvfs(f_flag: int) -> int:
    """The per-mount MS_* flags a mount has now, from statvfs's f_flag."""
    out = 0
    for st_bit, ms in _STATVFS_TO_MS:
        if f_flag & st_bit:
            out |= ms
    if not out & (MS_NOATIME | MS_RELATIME):
        out |= MS_STRICTATIME  # no statvfs bit says "strictatime": it is the absence of both
    return out
