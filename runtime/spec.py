"""config.json: load it, and check the parts no other module owns.

Each configuring module validates its own section (rootfs: mounts and
paths; process: the process; hooks: hooks); this one owns the top level,
linux.namespaces and the user-namespace ID maps, and `check_config` calls
them all, so a bad config fails before anything is created.
"""

from __future__ import annotations

import os

from namespaces.record import FrozenRecord
from runtime import jsonio
from runtime.errors import SpecError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SUPPORTED_MAJOR = 1
NS_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")


class NamespaceSpec(FrozenRecord):
    __slots__ = ("path", "type")

    def __init__(self, type: str, path: str | None) -> None:
        self.type = type  # OCI name: pid, network, mount, ipc, uts, user, cgroup, time
        self.path = path  # join this one; None creates a new one


def load_config(bundle: str) -> dict[str, Any]:
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise SpecError("config.json", f"no such file in the bundle {bundle}") from None
    try:
        config = jsonio.loads(raw)
    except ValueError as exc:
        raise SpecError("config.json", f"not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise SpecError("config.json", "must be a JSON object")
    return config


def check_top(config: dict[str, Any], bundle: str) -> str:
    """Check ociVersion, root and process presence; return the absolute rootfs path."""
    version = config.get("ociVersion")
    if not isinstance(version, str) or not version:
        raise SpecError("ociVersion", "missing")
    major = version.split(".")[0]
    if not major.isdigit() or int(major) != SUPPORTED_MAJOR:
        raise SpecError("ociVersion", f"{version!r} is not a 1.x version")
    root = config.get("root")
    if not isinstance(root, dict) or not isinstance(root.get("path"), str) or not root["path"]:
        raise SpecError("root.path", "missing")
    from runtime.rootfs_spec import parse_root

    rootfs, _ = parse_root(config, bundle)
    if not isinstance(config.get("process"), dict):
        raise SpecError("process", "missing: a container needs a process to run")
    if "hostname" in config and not isinstance(config["hostname"], str):
        raise SpecError("hostname", "must be a string")
    return rootfs


def namespaces(config: dict[str, Any]) -> list[NamespaceSpec]:
    linux = config.get("linux") or {}
    out: list[NamespaceSpec] = []
    seen = set()
    for i, ns in enumerate(linux.get("namespaces") or []):
        where = f"linux.namespaces[{i}]"
        t = ns.get("type") if isinstance(ns, dict) else None
        if t not in NS_TYPES:
            raise SpecError(f"{where}.type", f"unknown namespace type {t!r}")
        if t in seen:
            raise SpecError(f"{where}.type", f"{t} namespace listed twice")
        seen.add(t)
        path = ns.get("path") or None
        if path is not None and not os.path.isabs(path):
            raise SpecError(f"{where}.path", f"must be absolute: {path!r}")
        out.append(NamespaceSpec(t, path))
    if config.get("hostname") and "uts" not in seen:
        raise SpecError("hostname", "setting a hostname needs a new uts namespace")
    if config.get("domainname") and "uts" not in seen:
        raise SpecError("domainname", "setting a domainname needs a new uts namespace")
    return out


def id_maps(config: dict[str, Any], which: str) -> list[tuple[int, int, int]]:
    """linux.uidMappings / gidMappings as (container, host, size) triples, validated."""
    from namespaces.userns import IDMap, IDMapError, validate

    raw = (config.get("linux") or {}).get(which) or []
    maps = []
    for i, m in enumerate(raw):
        try:
            maps.append((int(m["containerID"]), int(m["hostID"]), int(m["size"])))
        except (KeyError, TypeError, ValueError):
            raise SpecError(f"linux.{which}[{i}]", "needs containerID, hostID and size") from None
    if maps:
        try:
            validate([IDMap(*m) for m in maps], which)
        except IDMapError as exc:
            raise SpecError(f"linux.{which}", str(exc)) from None
    return maps


def new_namespace(nss: list[NamespaceSpec], t: str) -> bool:
    return any(n.type == t and n.path is None for n in nss)


def has_namespace(nss: list[NamespaceSpec], t: str) -> bool:
    return any(n.type == t for n in nss)
