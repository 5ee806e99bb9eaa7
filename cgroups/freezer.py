"""Whether a cgroup is frozen, read so that the kernel's stale `frozen 1` cannot fool it.

cgroup.events `frozen` is the kernel's account of the freezer, and it can go
stale: when tasks of a frozen cgroup die while a child cgroup is leaving the
frozen state, and the cgroup is thawed before the child settles, the kernel
(seen on 6.1 and 6.18) keeps `frozen 1` in cgroup.events for good, although
cgroup.freeze reads 0 and nothing is frozen. Measured: 7 thaws in 300 after
the pre-5.14 kill fallback, on a loaded host.

So, as runc does, the request decides first: a cgroup is frozen only if
cgroup.freeze asks for it (here or in an ancestor, whose freeze freezes the
whole subtree) *and* cgroup.events says the kernel got there. Nothing heavy
is imported: runtime verbs read this on every `state`.
"""

from __future__ import annotations

import os

from cgroups.event_wait import read_event


def freeze_requested(cgroup_dir: str) -> bool:
    """cgroup.freeze of this directory reads 1 (a hierarchy's root has no such file)."""
    try:
        with open(os.path.join(cgroup_dir, "cgroup.freeze"), "rb") as f:
            return f.read(1) == b"1"
    except (FileNotFoundError, NotADirectoryError):
        return False


def events_say_frozen(cgroup_dir: str) -> bool:
    """cgroup.events has `frozen 1`; CgroupNotFound (a FileNotFoundError) when it is gone."""
    return read_event(cgroup_dir, "frozen") == 1


def is_frozen(cgroup_dir: str, top: str) -> bool:
    """Frozen by a freeze asked of this cgroup or an ancestor up to `top`, and settled.

    `top` is the hierarchy's mount point (or any ancestor to stop at).
    Raises FileNotFoundError when the cgroup does not exist.
    """
    if not events_say_frozen(cgroup_dir):
        return False
    return any(freeze_requested(d) for d in _up_to(cgroup_dir, top))


def _up_to(cgroup_dir: str, top: str) -> list[str]:
    """cgroup_dir and each parent up to and including `top` (only cgroup_dir if top is not above)."""
    d, top = os.path.normpath(cgroup_dir), os.path.normpath(top)
    if os.path.commonpath([d, top]) != top:
        return [d]
    out = [d]
    while d != top:
        d = os.path.dirname(d)
        out.append(d)
    return out
