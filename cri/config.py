"""Settings of `pinnace cri`: built-in defaults, overridden by a YAML file (`--config`)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from cri.errors import InvalidArgument

DEFAULT_SOCKET = "/run/pinnace/pinnace.sock"


@dataclass
class CRIConfig:
    socket: str = DEFAULT_SOCKET
    state_dir: str = "/var/lib/pinnace/cri"  # durable records of sandboxes and containers
    run_dir: str = "/run/pinnace/cri"  # pins, pod files, bundles, monitor sockets
    runtime_root: str = "/run/pinnace/runtime"  # runtime/'s state (pinnace-oci --root)
    image_root: str = "/var/lib/pinnace"  # images/'s content and snapshot store
    registry_config_dir: str = (
        "/etc/pinnace"  # registries.yaml (mirrors, credentials), as `pinnace image`
    )
    cgroup_parent: str = "/pinnace/pods"  # pods without linux.cgroup_parent go below it
    seccomp_root: str = "/var/lib/kubelet/seccomp"  # where Localhost profiles may live
    stream_address: str = "127.0.0.1"  # the streaming server (exec/attach/port-forward)
    stream_port: int = 0
    metrics_address: str = "127.0.0.1:0"  # the server's own /metrics (Prometheus); "" = off
    exec_output_limit: int = 16 << 20  # ExecSync bytes kept per stream, as CRI-O
    events_queue: int = 1000  # container events held for a slow GetContainerEvents subscriber
    log_level: str = "info"
    # pod networking: "bridge" (built in), "cni" (plugins from cni_bin_dirs) or "none"
    network: str = "bridge"
    pod_cidr: str = "10.85.0.0/16"
    pod_cidr_v6: str = ""  # dual stack for the bridge driver, e.g. "fd85::/64"; "" = IPv4 only
    bridge: str = "pinnace0"
    nft_table: str = "pinnace"
    node_netns: str = ""  # where the node side (bridge, rules) lives; "" = this host's
    cni_conf_dir: str = "/etc/cni/net.d"
    cni_bin_dirs: list[str] = field(default_factory=lambda: ["/opt/cni/bin", "/usr/lib/cni"])

    @property
    def socket_path(self) -> str:
        return self.socket.removeprefix("unix://")

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], *, source: str = "config") -> CRIConfig:
        """Keys as the field names (dashes allowed); unknown keys and wrong types are errors."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            name = str(key).replace("-", "_")
            if name not in fields:
                raise InvalidArgument(
                    f"unknown setting {key!r} (known: {', '.join(sorted(fields))})", subject=source
                )
            want = type(getattr(cls(), name))
            if not isinstance(value, want) or isinstance(value, bool) is not (want is bool):
                raise InvalidArgument(
                    f"{key} must be of type {want.__name__}, not {value!r}", subject=source
                )
            values[name] = value
        cfg = cls(**values)
        for name in ("state_dir", "run_dir", "runtime_root", "image_root"):
            if not os.path.isabs(getattr(cfg, name)):
                raise InvalidArgument(f"{name} must be an absolute path", subject=source)
        if cfg.network not in ("bridge", "cni", "none"):
            raise InvalidArgument(
                f"network must be bridge, cni or none, not {cfg.network!r}", subject=source
            )
        if cfg.metrics_address:
            from cri.metrics import parse_address

            try:
                parse_address(cfg.metrics_address)
            except ValueError as exc:
                raise InvalidArgument(str(exc), subject=source) from None
        if not cfg.cgroup_parent.startswith("/"):
            cfg.cgroup_parent = "/" + cfg.cgroup_parent
        return cfg

    @classmethod
    def load(cls, path: str | None) -> CRIConfig:
        if path is None:
            return cls()
        import yaml

        try:
            with open(path) as f:
                raw = yaml.safe_load(f) or {}
        except OSError as exc:
            raise InvalidArgument(f"cannot read: {exc.strerror}", subject=path) from None
        except yaml.YAMLError as exc:
            raise InvalidArgument(f"not valid YAML: {exc}", subject=path) from None
        if not isinstance(raw, dict):
            raise InvalidArgument("must be a mapping of settings", subject=path)
        return cls.from_mapping(raw, source=path)
