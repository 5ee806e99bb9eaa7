"""What a container needs to know of its pod sandbox to be placed in it.

The sandbox manager makes a PodContext from its record; the container spec
builder reads it. It is the one seam between the two, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PodContext:
    sandbox_id: str
    # pinned namespace files the container joins; "" means the host's namespace (NODE mode)
    netns: str
    ipcns: str
    utsns: str
    # the pod's shared pid namespace (/proc/<pod init>/ns/pid) for NamespaceMode POD;
    # "" means the container gets its own (CONTAINER) unless host_pid is set
    pidns: str
    host_pid: bool
    hostname: str
    # files of the pod that every container bind-mounts (kubelet's /etc/hosts, resolv.conf,
    # hostname); "" when the pod has none (then the image's own file stays)
    hosts_path: str
    resolv_path: str
    hostname_path: str
    # cgroup directory of the pod, relative to the unified hierarchy ("/pinnace/pods/<id>")
    cgroup_parent: str
    # namespaced sysctls of the pod; already applied to the pod's namespaces by the
    # sandbox manager, repeated here for containers that get their own namespace
    sysctls: dict[str, str] = field(default_factory=dict)
