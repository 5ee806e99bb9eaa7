"""A CRI ContainerConfig, its pod and its image -> the OCI config.json the runtime creates.

Pure mapping, with the rules kubelet expects of containerd (whose behaviour
it is written against): process arguments from the image's Entrypoint/Cmd
and the request, env, user and groups resolved in the image's own
databases, the pod's namespaces joined, CRI mounts and devices, resources
and the security context. Every bad input is an InvalidArgument naming the
request field, before anything is created. The only I/O: the image's
/etc/passwd and /etc/group (runtime.passwd, inside the rootfs), a Localhost
seccomp profile, and a stat of each requested host device.

Not here, by design: stdin/stdin_once (the monitor holds the container's
stdio), log_path (the monitor writes the log), labels (kept in the CRI
record; OCI has no labels), CDI devices, and AppArmor/SELinux (this host has
neither LSM; the profiles and labels are ignored, as containerd does when
the LSM is disabled).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cri.api import api_pb2
from cri.errors import InvalidArgument
from cri.podcontext import PodContext
from runtime import passwd
from runtime.capabilities import CAPABILITIES
from runtime.defaults import (
    DEFAULT_CAPABILITIES,
    DEFAULT_PATH,
    MASKED_PATHS,
    OCI_VERSION,
    READONLY_PATHS,
    default_config,
)
from runtime.seccomp_profile import default_profile

# containerd's annotation keys: tools that read config.json (hooks, NRI, audits) know them
ANN_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
ANN_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
ANN_CONTAINER_NAME = "io.kubernetes.cri.container-name"
ANN_SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
ANN_SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
ANN_SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
ANN_IMAGE_NAME = "io.kubernetes.cri.image-name"

DEFAULT_SECCOMP_ROOT = "/var/lib/kubelet/seccomp"
MAX_PROFILE_BYTES = 1 << 20
MAX_ID = 2**32 - 2  # (uid_t)-1 is "unchanged" to the kernel, not an id
OOM_SCORE_ADJ_RANGE = (-1000, 1000)

SC = "linux.security_context"
RES = "linux.resources"

_CPUSET_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_PAGE_SIZE_RE = re.compile(r"^[1-9]\d*[KMGTP]B$")

# Go architecture names (docker profiles' includes.arches) of os.uname().machine
_GO_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}

TargetResolver = Callable[[str], str]

_PROPAGATION = {
    api_pb2.PROPAGATION_PRIVATE: "rprivate",
    api_pb2.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    api_pb2.PROPAGATION_BIDIRECTIONAL: "rshared",
}


def build_spec(
    cfg: api_pb2.ContainerConfig,
    sandbox: api_pb2.PodSandboxConfig,
    pod: PodContext,
    image_config: Mapping[str, Any],
    rootfs: str,
    *,
    container_id: str,
    seccomp_root: str = DEFAULT_SECCOMP_ROOT,
    target_pidns: TargetResolver | None = None,
) -> dict[str, Any]:
    """The OCI config for `cfg` in `pod`; InvalidArgument(subject=<request field>) if bad.

    `image_config` is the image's config blob (its "config" section is read)
    or that section itself. `target_pidns` maps a container id to its pid
    namespace file, for NamespaceMode TARGET (ephemeral debug containers).
    """
    from runtime.state import validate_id

    try:
        validate_id(container_id)
    except Exception as exc:
        raise InvalidArgument(str(exc), subject="container_id") from None
    if not os.path.isabs(rootfs):
        raise InvalidArgument(
            f"the rootfs must be an absolute path, not {rootfs!r}", subject="rootfs"
        )
    image = _image_section(image_config)
    sc = cfg.linux.security_context
    pod_sc = sandbox.linux.security_context
    privileged = sc.privileged
    if privileged and not pod_sc.privileged:
        raise InvalidArgument(
            "a privileged container needs a privileged pod sandbox", subject=f"{SC}.privileged"
        )

    base = default_config(terminal=cfg.tty)
    capabilities = _capabilities(sc, privileged)
    resources = resources_to_oci(cfg.linux.resources)
    oom = cfg.linux.resources.oom_score_adj
    if not OOM_SCORE_ADJ_RANGE[0] <= oom <= OOM_SCORE_ADJ_RANGE[1]:
        raise InvalidArgument(f"must be in -1000..1000, not {oom}", subject=f"{RES}.oom_score_adj")
    devices, device_rules = _devices(cfg.devices)
    resources["devices"] = [{"allow": False, "access": "rwm"}, *device_rules]
    mounts, rootfs_propagation = _mounts(cfg, pod, base["mounts"], privileged)

    process: dict[str, Any] = {
        # stdin/stdin_once are the monitor's: it gives the init a pipe (or the pty) at create
        "terminal": cfg.tty,
        "user": _user(sc, pod_sc, image, rootfs),
        "args": _args(cfg, image),
        "env": _env(cfg, image, pod.hostname),
        "cwd": _cwd(cfg, image),
        "capabilities": capabilities,
        "rlimits": base["process"]["rlimits"],
        "noNewPrivileges": sc.no_new_privs,
        "oomScoreAdj": oom,
    }
    linux: dict[str, Any] = {
        "namespaces": _namespaces(sc, pod, target_pidns),
        "resources": resources,
        "cgroupsPath": f"{pod.cgroup_parent.rstrip('/')}/{container_id}",
        "devices": devices,
    }
    if privileged:
        # runc's --privileged: nothing masked or read-only. Unlike containerd, the host's
        # devices are NOT added (privileged_without_host_devices): a pod that needs a device
        # asks for it in `devices`, and the device cgroup still denies the rest.
        linux["maskedPaths"] = []
        linux["readonlyPaths"] = []
    else:
        linux["maskedPaths"] = _paths(sc.masked_paths, MASKED_PATHS, f"{SC}.masked_paths")
        linux["readonlyPaths"] = _paths(sc.readonly_paths, READONLY_PATHS, f"{SC}.readonly_paths")
    seccomp = _seccomp(sc, pod_sc, seccomp_root, capabilities["bounding"], privileged)
    if seccomp is not None:
        linux["seccomp"] = seccomp
    sysctls = _sysctls(pod)
    if sysctls:
        linux["sysctl"] = sysctls
    if rootfs_propagation:
        linux["rootfsPropagation"] = rootfs_propagation

    config: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": sc.readonly_rootfs},
        "mounts": mounts,
        "linux": linux,
        "annotations": _annotations(cfg, sandbox, pod),
    }
    if pod.utsns and pod.hostname:
        # the pod's uts namespace already carries it; in the host's we must not set it
        config["hostname"] = pod.hostname
    return config


# --- process ----------------------------------------------------------------------------


def _image_section(image_config: Mapping[str, Any]) -> Mapping[str, Any]:
    section = image_config.get("config")
    return section if isinstance(section, Mapping) else image_config


def _image_strings(image: Mapping[str, Any], key: str) -> list[str]:
    raw = image.get(key)
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise InvalidArgument("must be a list of strings", subject=f"image.config.{key}")
    return list(raw)


def _args(cfg: api_pb2.ContainerConfig, image: Mapping[str, Any]) -> list[str]:
    """kubelet's command/args over the image's Entrypoint/Cmd (docker's rules, as containerd)."""
    command, args = list(cfg.command), list(cfg.args)
    if not command:
        entrypoint = _image_strings(image, "Entrypoint")
        if entrypoint == [""]:
            entrypoint = []  # `--entrypoint ""` at build time: no entrypoint
        command = entrypoint
        if not args:
            args = _image_strings(image, "Cmd")
    out = command + args
    if not out:
        raise InvalidArgument(
            "no command: neither the request nor the image gives one", subject="command"
        )
    if any("\0" in a for a in out):
        raise InvalidArgument("an argument contains a NUL byte", subject="command")
    return out


def _env(cfg: api_pb2.ContainerConfig, image: Mapping[str, Any], hostname: str) -> list[str]:
    """PATH, HOSTNAME and TERM (tty) defaults, the image's Env, then the request's, by key."""
    env: dict[str, str] = {"PATH": DEFAULT_PATH}
    if hostname:
        env["HOSTNAME"] = hostname
    if cfg.tty:
        env["TERM"] = "xterm"
    for item in _image_strings(image, "Env"):
        key, sep, value = item.partition("=")
        if not key:
            continue
        if sep:
            env[key] = value
        else:
            env.pop(key, None)  # docker: a bare name unsets
    for i, kv in enumerate(cfg.envs):
        where = f"envs[{i}]"
        if not kv.key or "=" in kv.key or "\0" in kv.key:
            raise InvalidArgument(f"invalid variable name {kv.key!r}", subject=where)
        try:
            value = kv.value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument("the value is not UTF-8", subject=where) from None
        if "\0" in value:
            raise InvalidArgument("the value contains a NUL byte", subject=where)
        env[kv.key] = value
    return [f"{k}={v}" for k, v in env.items()]


def _cwd(cfg: api_pb2.ContainerConfig, image: Mapping[str, Any]) -> str:
    if cfg.working_dir:
        cwd, where = cfg.working_dir, "working_dir"
    else:
        raw = image.get("WorkingDir")
        cwd, where = (raw if isinstance(raw, str) and raw else "/"), "image.config.WorkingDir"
    if not cwd.startswith("/"):
        raise InvalidArgument(f"the working directory must be absolute, not {cwd!r}", subject=where)
    return cwd


def _check_id(value: int, where: str) -> int:
    if not 0 <= value <= MAX_ID:
        raise InvalidArgument(f"{value} is not a valid id (0..{MAX_ID})", subject=where)
    return value


def _user(
    sc: api_pb2.LinuxContainerSecurityContext,
    pod_sc: api_pb2.LinuxSandboxSecurityContext,
    image: Mapping[str, Any],
    rootfs: str,
) -> dict[str, Any]:
    """uid, gid and additionalGids as containerd computes them.

    The user is run_as_username, else run_as_user, else the pod's run_as_user
    (kubelet merges it in already), else the image's User; its primary gid
    comes from the image's /etc/passwd unless run_as_group says otherwise.
    additionalGids holds the primary gid first (CVE-2023-25173: a process
    must not be able to drop its primary group by setgroups), then the
    groups of /etc/group that list the user (unless the policy is Strict),
    then the requested supplemental groups.
    """
    try:
        if sc.run_as_username:
            who = passwd.lookup_name(rootfs, sc.run_as_username)
        elif sc.HasField("run_as_user"):
            who = passwd.lookup_uid(rootfs, _check_id(sc.run_as_user.value, f"{SC}.run_as_user"))
        elif pod_sc.HasField("run_as_user"):
            uid = _check_id(pod_sc.run_as_user.value, "linux.security_context.run_as_user (pod)")
            who = passwd.lookup_uid(rootfs, uid)
        else:
            spec = image.get("User")
            if spec is not None and not isinstance(spec, str):
                raise InvalidArgument("must be a string", subject="image.config.User")
            who = passwd.resolve(spec, rootfs) if spec else passwd.lookup_uid(rootfs, 0)
            _check_id(who.uid, "image.config.User")
            _check_id(who.gid, "image.config.User")
    except passwd.UserLookupError as exc:
        subject = f"{SC}.run_as_username" if sc.run_as_username else "image.config.User"
        raise InvalidArgument(str(exc), subject=subject) from None
    gid = who.gid
    if sc.HasField("run_as_group"):
        gid = _check_id(sc.run_as_group.value, f"{SC}.run_as_group")
    elif pod_sc.HasField("run_as_group"):
        gid = _check_id(pod_sc.run_as_group.value, "linux.security_context.run_as_group (pod)")
    strict = api_pb2.Strict in (sc.supplemental_groups_policy, pod_sc.supplemental_groups_policy)
    requested = list(sc.supplemental_groups) or list(pod_sc.supplemental_groups)
    gids = [gid]
    if who.name and not strict:
        gids += passwd.member_gids(rootfs, who.name)
    for i, g in enumerate(requested):
        gids.append(_check_id(g, f"{SC}.supplemental_groups[{i}]"))
    return {"uid": who.uid, "gid": gid, "additionalGids": list(dict.fromkeys(gids))}


# --- capabilities, seccomp, masked paths ----------------------------------------------


def _cap_name(raw: str, where: str) -> str:
    name = raw.strip().upper()
    if not name.startswith("CAP_"):
        name = "CAP_" + name
    if name not in CAPABILITIES:
        raise InvalidArgument(f"unknown capability {raw!r}", subject=where)
    return name


def _capabilities(sc: api_pb2.LinuxContainerSecurityContext, privileged: bool) -> dict[str, Any]:
    """containerd's order: ALL added, ALL dropped, then the named adds, then the named drops.

    A privileged container gets every capability and add/drop do not apply.
    Ambient capabilities are raised in every set they need to stay effective
    (the kernel keeps an ambient cap only while it is permitted and inheritable).
    Inheritable is otherwise empty (CVE-2022-24769).
    """
    c = sc.capabilities
    if privileged:
        caps = set(CAPABILITIES)
    else:
        caps = set(DEFAULT_CAPABILITIES)
        if any(a.strip().upper() == "ALL" for a in c.add_capabilities):
            caps = set(CAPABILITIES)
        if any(d.strip().upper() == "ALL" for d in c.drop_capabilities):
            caps = set()
        for i, a in enumerate(c.add_capabilities):
            if a.strip().upper() != "ALL":
                caps.add(_cap_name(a, f"{SC}.capabilities.add_capabilities[{i}]"))
        for i, d in enumerate(c.drop_capabilities):
            if d.strip().upper() != "ALL":
                caps.discard(_cap_name(d, f"{SC}.capabilities.drop_capabilities[{i}]"))
    ambient = {
        _cap_name(a, f"{SC}.capabilities.add_ambient_capabilities[{i}]")
        for i, a in enumerate(c.add_ambient_capabilities)
    }
    caps |= ambient

    def ordered(names: set[str]) -> list[str]:
        return sorted(names, key=CAPABILITIES.__getitem__)

    all_caps = ordered(caps)
    return {
        "bounding": all_caps,
        "effective": list(all_caps),
        "permitted": list(all_caps),
        "inheritable": ordered(ambient),
        "ambient": ordered(ambient),
    }


def _paths(given: Sequence[str], default: Sequence[str], where: str) -> list[str]:
    """kubelet sends its list explicitly; an empty one means the runtime's default."""
    if not given:
        return list(default)
    for i, p in enumerate(given):
        if not p.startswith("/"):
            raise InvalidArgument(f"must be an absolute path, not {p!r}", subject=f"{where}[{i}]")
    return list(given)


def _seccomp(
    sc: api_pb2.LinuxContainerSecurityContext,
    pod_sc: api_pb2.LinuxSandboxSecurityContext,
    seccomp_root: str,
    caps: Sequence[str],
    privileged: bool,
) -> dict[str, Any] | None:
    """The container's seccomp filter, None for unconfined.

    The container's profile, else the deprecated path string, else the
    pod's. Nothing at all (crictl without a profile) means RuntimeDefault:
    Pinnace confines by default, as CRI-O does (containerd would run
    unconfined). A privileged container is never filtered.
    """
    if privileged:
        return None
    if sc.HasField("seccomp"):
        return _from_profile(sc.seccomp, f"{SC}.seccomp", seccomp_root, caps)
    if sc.seccomp_profile_path:
        return _from_path(sc.seccomp_profile_path, f"{SC}.seccomp_profile_path", seccomp_root, caps)
    if pod_sc.HasField("seccomp"):
        return _from_profile(pod_sc.seccomp, f"{SC}.seccomp (pod)", seccomp_root, caps)
    if pod_sc.seccomp_profile_path:
        where = f"{SC}.seccomp_profile_path (pod)"
        return _from_path(pod_sc.seccomp_profile_path, where, seccomp_root, caps)
    return default_profile()


def _from_profile(
    p: api_pb2.SecurityProfile, where: str, seccomp_root: str, caps: Sequence[str]
) -> dict[str, Any] | None:
    if p.profile_type == api_pb2.SecurityProfile.RuntimeDefault:
        return default_profile()
    if p.profile_type == api_pb2.SecurityProfile.Unconfined:
        return None
    if p.profile_type == api_pb2.SecurityProfile.Localhost:
        if not p.localhost_ref:
            raise InvalidArgument("a Localhost profile needs localhost_ref", subject=where)
        return load_localhost_profile(p.localhost_ref, seccomp_root, caps, where=where)
    raise InvalidArgument(f"unknown seccomp profile type {p.profile_type}", subject=where)


def _from_path(
    value: str, where: str, seccomp_root: str, caps: Sequence[str]
) -> dict[str, Any] | None:
    """The pre-1.19 strings: runtime/default (docker/default), unconfined, localhost/<path>."""
    if value in ("runtime/default", "docker/default"):
        return default_profile()
    if value == "unconfined":
        return None
    if value.startswith("localhost/"):
        return load_localhost_profile(value[len("localhost/") :], seccomp_root, caps, where=where)
    raise InvalidArgument(f"unknown seccomp profile {value!r}", subject=where)


def load_localhost_profile(
    ref: str, seccomp_root: str, caps: Sequence[str], *, where: str = f"{SC}.seccomp"
) -> dict[str, Any]:
    """Read a Localhost profile (absolute, or relative to kubelet's seccomp root) and check it.

    Docker-format profiles (archMap, per-rule name, includes/excludes by
    capability and architecture) are converted to OCI's form first, as
    containerd does; the result is validated by the runtime's own parser.
    """
    if os.path.isabs(ref):
        path = posixpath.normpath(ref)
    else:
        path = posixpath.normpath(posixpath.join(seccomp_root, ref))
        if not path.startswith(seccomp_root.rstrip("/") + "/"):
            raise InvalidArgument(f"{ref!r} leaves the seccomp root {seccomp_root}", subject=where)
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise InvalidArgument(f"{path} is not a regular file", subject=where)
            raw = f.read(MAX_PROFILE_BYTES + 1)
    except OSError as exc:
        raise InvalidArgument(
            f"cannot read the seccomp profile {path}: {exc.strerror}", subject=where
        ) from None
    if len(raw) > MAX_PROFILE_BYTES:
        raise InvalidArgument(f"{path} is larger than {MAX_PROFILE_BYTES} bytes", subject=where)
    try:
        profile = json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"{path} is not valid JSON: {exc}", subject=where) from None
    if not isinstance(profile, dict):
        raise InvalidArgument(f"{path} must hold a JSON object", subject=where)
    oci = _docker_to_oci(profile, caps, path, where)
    _validate_profile(oci, path, where)
    return oci


def _docker_to_oci(
    profile: dict[str, Any], caps: Sequence[str], path: str, where: str
) -> dict[str, Any]:
    machine = os.uname().machine
    out: dict[str, Any] = {
        k: profile[k]
        for k in (
            "defaultAction",
            "defaultErrnoRet",
            "architectures",
            "flags",
            "listenerPath",
            "listenerMetadata",
        )
        if k in profile
    }
    if "architectures" not in out and isinstance(profile.get("archMap"), list):
        from runtime.seccomp_profile import ARCHITECTURES

        primary = (ARCHITECTURES.get(machine) or [""])[0]
        for entry in profile["archMap"]:
            if isinstance(entry, dict) and entry.get("architecture") == primary:
                out["architectures"] = [primary, *(entry.get("subArchitectures") or [])]
    syscalls = profile.get("syscalls")
    if syscalls is None:
        return out
    if not isinstance(syscalls, list):
        raise InvalidArgument(f"{path}: syscalls must be an array", subject=where)
    rules = []
    for i, entry in enumerate(syscalls):
        if not isinstance(entry, dict):
            raise InvalidArgument(f"{path}: syscalls[{i}] must be an object", subject=where)
        if not _applies(entry.get("includes"), caps, machine, True) or _applies(
            entry.get("excludes"), caps, machine, False
        ):
            continue
        rule = {k: entry[k] for k in ("names", "action", "errnoRet", "args") if k in entry}
        if "names" not in rule and isinstance(entry.get("name"), str):
            rule["names"] = [entry["name"]]
        rules.append(rule)
    out["syscalls"] = rules
    return out


def _applies(cond: Any, caps: Sequence[str], machine: str, empty: bool) -> bool:
    """Docker's includes (all must hold) / excludes (any holds); `empty` for no condition."""
    if not isinstance(cond, dict):
        return empty
    tests: list[bool] = []
    tests += [c in caps for c in cond.get("caps") or [] if isinstance(c, str)]
    tests += [a == _GO_ARCH.get(machine, machine) for a in cond.get("arches") or []]
    if not tests:
        return empty
    return all(tests) if empty else any(tests)


def _validate_profile(profile: dict[str, Any], path: str, where: str) -> None:
    from runtime import seccomp
    from runtime.errors import SpecError

    if not isinstance(profile.get("defaultAction"), str):
        raise InvalidArgument(f"{path}: defaultAction is missing", subject=where)
    if not seccomp.available():
        return  # the runtime reports a missing libseccomp itself, at create
    try:
        seccomp.plan_seccomp(profile, field_name=path)
    except SpecError as exc:
        raise InvalidArgument(str(exc), subject=where) from None


# --- namespaces -------------------------------------------------------------------------


def _namespaces(
    sc: api_pb2.LinuxContainerSecurityContext,
    pod: PodContext,
    target_pidns: TargetResolver | None,
) -> list[dict[str, str]]:
    """A new mount and cgroup namespace; the pod's net, ipc and uts (host's when "").

    The container's network and ipc modes are the pod's by construction
    (kubelet copies them), so only its pid mode is read: TARGET joins another
    container's, NODE needs a host-pid pod, CONTAINER gets its own.
    """
    ns: list[dict[str, str]] = [{"type": "mount"}]
    for kind, path in (("network", pod.netns), ("ipc", pod.ipcns), ("uts", pod.utsns)):
        if path:
            ns.append({"type": kind, "path": path})
    opts = sc.namespace_options if sc.HasField("namespace_options") else None
    where = f"{SC}.namespace_options"
    if (
        opts is not None
        and opts.HasField("userns_options")
        and opts.userns_options.mode != api_pb2.NODE
    ):
        raise InvalidArgument(
            "user namespaces are not supported", subject=f"{where}.userns_options"
        )
    mode = opts.pid if opts is not None else None
    if mode is not None and mode not in (
        api_pb2.POD,
        api_pb2.CONTAINER,
        api_pb2.NODE,
        api_pb2.TARGET,
    ):
        raise InvalidArgument(f"unknown namespace mode {mode}", subject=f"{where}.pid")
    if mode == api_pb2.TARGET:
        assert opts is not None
        if not opts.target_id:
            raise InvalidArgument("mode TARGET needs target_id", subject=f"{where}.target_id")
        if target_pidns is None:
            raise InvalidArgument(
                "joining another container's pid namespace is not available here",
                subject=f"{where}.target_id",
            )
        ns.append({"type": "pid", "path": target_pidns(opts.target_id)})
    elif mode == api_pb2.NODE:
        if not pod.host_pid:
            raise InvalidArgument(
                "the host's pid namespace needs a pod with host pid", subject=f"{where}.pid"
            )
    elif pod.host_pid:
        pass  # the host's: no pid namespace entry
    elif mode != api_pb2.CONTAINER and pod.pidns:
        ns.append({"type": "pid", "path": pod.pidns})
    else:
        ns.append({"type": "pid"})
    ns.append({"type": "cgroup"})
    return ns


def _sysctls(pod: PodContext) -> dict[str, str]:
    """The pod's namespaced sysctls; one for a namespace the container shares with the host
    would change the host, so it is refused here rather than by the runtime at create."""
    from runtime.process import sysctl_namespace

    for key in pod.sysctls:
        kind = sysctl_namespace(key)
        if (kind == "net" and not pod.netns) or (kind == "ipc" and not pod.ipcns):
            raise InvalidArgument(
                f"{key} would change the host's {kind} namespace",
                subject=f"linux.sysctls[{key}]",
            )
    return dict(pod.sysctls)


# --- mounts and devices -----------------------------------------------------------------


def _depth(m: dict[str, Any]) -> int:
    return len([p for p in str(m["destination"]).split("/") if p])


def _mounts(
    cfg: api_pb2.ContainerConfig,
    pod: PodContext,
    defaults: list[dict[str, Any]],
    privileged: bool,
) -> tuple[list[dict[str, Any]], str]:
    """OCI defaults, the pod's /etc files, the request's binds; and rootfsPropagation.

    A requested mount replaces a default or pod file at the same destination
    (as containerd); binds are sorted parents first so that a mount at /a
    does not hide one at /a/b. Bidirectional or host-to-container
    propagation needs the root itself shared or slave, as containerd sets.
    """
    user: list[dict[str, Any]] = []
    propagation = ""
    for i, m in enumerate(cfg.mounts):
        where = f"mounts[{i}]"
        if m.HasField("image") and (m.image.image or m.image_sub_path):
            raise InvalidArgument("image volumes are not supported", subject=f"{where}.image")
        if m.image_sub_path:
            raise InvalidArgument(
                "image volumes are not supported", subject=f"{where}.image_sub_path"
            )
        if len(m.uidMappings) or len(m.gidMappings):
            raise InvalidArgument(
                "id-mapped mounts are not supported", subject=f"{where}.uidMappings"
            )
        if not m.container_path.startswith("/"):
            raise InvalidArgument(
                f"must be an absolute path, not {m.container_path!r}",
                subject=f"{where}.container_path",
            )
        if not m.host_path.startswith("/"):
            raise InvalidArgument(
                f"must be an absolute path, not {m.host_path!r}", subject=f"{where}.host_path"
            )
        if m.propagation not in _PROPAGATION:
            raise InvalidArgument(
                f"unknown propagation {m.propagation}", subject=f"{where}.propagation"
            )
        options = ["rbind", _PROPAGATION[m.propagation], "ro" if m.readonly else "rw"]
        if m.recursive_read_only:
            if not m.readonly:
                raise InvalidArgument(
                    "recursive_read_only needs readonly", subject=f"{where}.recursive_read_only"
                )
            if m.propagation != api_pb2.PROPAGATION_PRIVATE:
                raise InvalidArgument(
                    "recursive_read_only needs PROPAGATION_PRIVATE",
                    subject=f"{where}.recursive_read_only",
                )
            options.append("rro")
        if m.propagation == api_pb2.PROPAGATION_BIDIRECTIONAL:
            propagation = "rshared"
        elif m.propagation == api_pb2.PROPAGATION_HOST_TO_CONTAINER and not propagation:
            propagation = "rslave"
        dest = posixpath.normpath(m.container_path)
        if any(u["destination"] == dest for u in user):
            raise InvalidArgument(f"{dest} is mounted twice", subject=f"{where}.container_path")
        user.append(
            {
                "destination": dest,
                "type": "bind",
                "source": posixpath.normpath(m.host_path),
                "options": options,
            }
        )
    taken = {u["destination"] for u in user}
    ro = "ro" if cfg.linux.security_context.readonly_rootfs else "rw"
    for dest, src in (
        ("/etc/hosts", pod.hosts_path),
        ("/etc/resolv.conf", pod.resolv_path),
        ("/etc/hostname", pod.hostname_path),
    ):
        if src and dest not in taken:
            user.append(
                {
                    "destination": dest,
                    "type": "bind",
                    "source": src,
                    "options": ["rbind", "rprivate", ro],
                }
            )
    base = [dict(d) for d in defaults if d["destination"] not in taken]
    if privileged:
        # writable /sys and /sys/fs/cgroup, as runc's and containerd's privileged mode
        for d in base:
            if d["destination"] in ("/sys", "/sys/fs/cgroup"):
                d["options"] = [o for o in d.get("options", []) if o != "ro"]
    return base + sorted(user, key=_depth), propagation


def _devices(
    devices: Sequence[api_pb2.Device],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """linux.devices and their device-cgroup allow rules, from the host's nodes (stat)."""
    out: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    for i, d in enumerate(devices):
        where = f"devices[{i}]"
        if not d.container_path.startswith("/"):
            raise InvalidArgument(
                f"must be an absolute path, not {d.container_path!r}",
                subject=f"{where}.container_path",
            )
        if not d.host_path.startswith("/"):
            raise InvalidArgument(
                f"must be an absolute path, not {d.host_path!r}", subject=f"{where}.host_path"
            )
        access = d.permissions or "rwm"
        if not set(access) <= set("rwm"):
            raise InvalidArgument(
                f"permissions are letters of 'rwm', not {d.permissions!r}",
                subject=f"{where}.permissions",
            )
        try:
            st = os.stat(d.host_path)
        except OSError as exc:
            raise InvalidArgument(
                f"{d.host_path}: {exc.strerror}", subject=f"{where}.host_path"
            ) from None
        if stat.S_ISCHR(st.st_mode):
            kind = "c"
        elif stat.S_ISBLK(st.st_mode):
            kind = "b"
        else:
            raise InvalidArgument(f"{d.host_path} is not a device", subject=f"{where}.host_path")
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        out.append(
            {
                "path": posixpath.normpath(d.container_path),
                "type": kind,
                "major": major,
                "minor": minor,
                "fileMode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
            }
        )
        rules.append(
            {"allow": True, "type": kind, "major": major, "minor": minor, "access": access}
        )
    return out, rules


# --- resources --------------------------------------------------------------------------


def resources_to_oci(res: api_pb2.LinuxContainerResources, *, where: str = RES) -> dict[str, Any]:
    """LinuxContainerResources -> OCI linux.resources (0 or "" means unset, as in CRI).

    cpu_shares stays shares (the cgroup layer converts it to cpu.weight);
    a memory limit without a swap limit gets swap = limit (no swap), as
    containerd; -1 swap is unlimited. oom_score_adj is process-level, not
    here. CRI has no pids limit.
    """
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if res.cpu_shares < 0:
        raise InvalidArgument(
            f"must not be negative: {res.cpu_shares}", subject=f"{where}.cpu_shares"
        )
    if res.cpu_shares:
        cpu["shares"] = res.cpu_shares
    if res.cpu_quota < -1:
        raise InvalidArgument(
            f"must be -1 (unlimited) or positive: {res.cpu_quota}", subject=f"{where}.cpu_quota"
        )
    if res.cpu_quota:
        cpu["quota"] = res.cpu_quota
    if res.cpu_period < 0:
        raise InvalidArgument(
            f"must not be negative: {res.cpu_period}", subject=f"{where}.cpu_period"
        )
    if res.cpu_period:
        cpu["period"] = res.cpu_period
    for name, value, key in (
        ("cpuset_cpus", res.cpuset_cpus, "cpus"),
        ("cpuset_mems", res.cpuset_mems, "mems"),
    ):
        if value:
            if not _CPUSET_RE.match(value):
                raise InvalidArgument(f"not a cpu list: {value!r}", subject=f"{where}.{name}")
            cpu[key] = value
    if cpu:
        out["cpu"] = cpu
    memory: dict[str, Any] = {}
    limit, swap = res.memory_limit_in_bytes, res.memory_swap_limit_in_bytes
    if limit < 0:
        raise InvalidArgument(
            f"must not be negative: {limit}", subject=f"{where}.memory_limit_in_bytes"
        )
    if swap < -1:
        raise InvalidArgument(
            f"must be -1 (unlimited) or positive: {swap}",
            subject=f"{where}.memory_swap_limit_in_bytes",
        )
    if swap > 0 and (not limit or swap < limit):
        raise InvalidArgument(
            "a swap limit (memory + swap) needs a memory limit no larger than it",
            subject=f"{where}.memory_swap_limit_in_bytes",
        )
    if limit:
        memory["limit"] = limit
        memory["swap"] = swap or limit
    elif swap == -1:
        memory["swap"] = -1
    if memory:
        out["memory"] = memory
    pages = []
    for i, h in enumerate(res.hugepage_limits):
        if not _PAGE_SIZE_RE.match(h.page_size):
            raise InvalidArgument(
                f"not a page size like 2MB: {h.page_size!r}",
                subject=f"{where}.hugepage_limits[{i}].page_size",
            )
        pages.append({"pageSize": h.page_size, "limit": h.limit})
    if pages:
        out["hugepageLimits"] = pages
    if res.unified:
        from cgroups.errors import ResourceError
        from cgroups.resources import check_unified_key

        for key, value in res.unified.items():
            try:
                check_unified_key(key)
            except ResourceError as exc:
                raise InvalidArgument(str(exc), subject=f"{where}.unified[{key}]") from None
            if "\0" in value:
                raise InvalidArgument(
                    "the value contains a NUL byte", subject=f"{where}.unified[{key}]"
                )
        out["unified"] = dict(sorted(res.unified.items()))
    return out


# --- annotations ------------------------------------------------------------------------


def _annotations(
    cfg: api_pb2.ContainerConfig, sandbox: api_pb2.PodSandboxConfig, pod: PodContext
) -> dict[str, str]:
    out = dict(cfg.annotations)
    out[ANN_CONTAINER_TYPE] = "container"
    out[ANN_SANDBOX_ID] = pod.sandbox_id
    out[ANN_CONTAINER_NAME] = cfg.metadata.name
    out[ANN_SANDBOX_NAME] = sandbox.metadata.name
    out[ANN_SANDBOX_NAMESPACE] = sandbox.metadata.namespace
    out[ANN_SANDBOX_UID] = sandbox.metadata.uid
    if cfg.image.image:
        out[ANN_IMAGE_NAME] = cfg.image.image
    return out
