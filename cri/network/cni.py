"""A pod network driver that delegates to CNI plugins, as containerd and CRI-O do.

The first network configuration list in the config dir (by file name) is the
pod network. Plugins run as separate executables per the CNI spec (1.0/1.1):
ADD in list order with each plugin's result handed to the next as prevResult,
DEL in reverse order with the cached result, CHECK, STATUS and GC (1.1).
Every ADD is recorded on disk *before* the first plugin runs and updated with
the final result after, so a DEL after a crash or a config change uses the
exact configuration and result of the ADD, and reconcile can release what a
killed server left half-done. Plugins run inside the node's network namespace
(`nsenter --net=`) when one is configured, so tests never touch the host.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import subprocess
import threading
import zlib
from dataclasses import dataclass, field
from ipaddress import ip_interface
from pathlib import Path
from typing import Any

from cri.network.driver import NetworkError, PodNetwork, PodNetworkRequest
from cri.records import read_json, remove_stale_temps, write_json_atomic

# Spec versions whose result format we understand (0.1/0.2 used ip4/ip6 keys).
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CONFIG_SUFFIXES = (".conflist", ".conf", ".json")
CACHE_KIND = "pinnaceCNICacheV1"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


def version_tuple(v: str) -> tuple[int, int, int]:
    m = _VERSION_RE.match(v)
    if not m:
        raise ValueError(f"not a CNI version: {v!r}")
    return int(m[1]), int(m[2]), int(m[3])


class CNIConfigError(NetworkError):
    """The network configuration (a file in the config dir) is missing or malformed."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class CNIPluginError(NetworkError):
    """A plugin failed; carries its type name, the verb and the spec's {code, msg, details}."""

    def __init__(
        self,
        plugin: str,
        command: str,
        msg: str,
        *,
        code: int = 0,
        details: str = "",
        sandbox_id: str = "",
    ) -> None:
        text = f"CNI plugin {plugin} {command} failed"
        if code:
            text += f" (code {code})"
        text += f": {msg}"
        if details and details != msg:
            text += f": {details}"
        super().__init__(text, sandbox_id=sandbox_id)
        self.plugin = plugin
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details


@dataclass(frozen=True)
class NetworkConfigList:
    """A validated config list: what every plugin invocation is built from."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    disable_check: bool = False
    disable_gc: bool = False
    source: str = ""  # the file it came from

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cniVersion": self.cni_version,
            "disableCheck": self.disable_check,
            "disableGC": self.disable_gc,
            "plugins": [copy.deepcopy(p) for p in self.plugins],
            "source": self.source,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> NetworkConfigList:
        return cls(
            name=obj["name"],
            cni_version=obj["cniVersion"],
            plugins=tuple(obj["plugins"]),
            disable_check=bool(obj.get("disableCheck", False)),
            disable_gc=bool(obj.get("disableGC", False)),
            source=obj.get("source", ""),
        )


def _truthy(v: Any) -> bool:
    # disableCheck was specified as a string ("true") in older specs and a bool later
    return v is True or (isinstance(v, str) and v.lower() == "true")


def parse_config(raw: bytes | str, path: str) -> NetworkConfigList:
    """Validate one config file; a single-plugin .conf/.json becomes a one-element list."""
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CNIConfigError(f"invalid JSON: {e}", path=path) from e
    if not isinstance(obj, dict):
        raise CNIConfigError("not a JSON object", path=path)
    if not path.endswith(".conflist"):
        # libcni's ConfListFromConf: the plugin's name and version are the list's
        if "plugins" in obj:
            raise CNIConfigError("a config list must be named *.conflist", path=path)
        obj = {"name": obj.get("name"), "cniVersion": obj.get("cniVersion"), "plugins": [obj]}
    name = obj.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise CNIConfigError(f"invalid or missing network name {name!r}", path=path)
    version = _negotiate_version(obj, path)
    plugins = obj.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise CNIConfigError("no plugins in the config list", path=path)
    for i, p in enumerate(plugins):
        if not isinstance(p, dict):
            raise CNIConfigError(f"plugin {i} is not a JSON object", path=path)
        _check_type(p.get("type"), f"plugin {i}", path)
        ipam = p.get("ipam")
        if ipam is not None and (not isinstance(ipam, dict) or "type" not in ipam):
            raise CNIConfigError(f"plugin {i} ({p['type']}): ipam needs a type", path=path)
        if ipam is not None:
            _check_type(ipam["type"], f"plugin {i} ipam", path)
        caps = p.get("capabilities", {})
        if not isinstance(caps, dict):
            raise CNIConfigError(f"plugin {i} ({p['type']}): capabilities is not a map", path=path)
    return NetworkConfigList(
        name=name,
        cni_version=version,
        plugins=tuple(plugins),
        disable_check=_truthy(obj.get("disableCheck")),
        disable_gc=_truthy(obj.get("disableGC")),
        source=path,
    )


def _check_type(t: Any, what: str, path: str) -> None:
    # the type is an executable's file name: nothing that could walk out of the bin dirs
    if not isinstance(t, str) or not t or "/" in t or t in (".", ".."):
        raise CNIConfigError(f"{what}: invalid or missing type {t!r}", path=path)


def _negotiate_version(obj: dict[str, Any], path: str) -> str:
    """The highest version both the file and we speak (1.1's cniVersions, else cniVersion)."""
    offered: list[str] = []
    versions = obj.get("cniVersions")
    if versions is not None:
        if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
            raise CNIConfigError("cniVersions must be a list of strings", path=path)
        offered = list(versions)
    elif isinstance(obj.get("cniVersion"), str):
        offered = [obj["cniVersion"]]
    else:
        raise CNIConfigError("missing cniVersion", path=path)
    ok = [v for v in offered if v in SUPPORTED_VERSIONS]
    if not ok:
        raise CNIConfigError(
            f"unsupported cniVersion {', '.join(offered)} (supported: "
            f"{', '.join(SUPPORTED_VERSIONS)})",
            path=path,
        )
    return max(ok, key=version_tuple)


def find_config(conf_dir: str) -> NetworkConfigList:
    """The first (lexically) config file in `conf_dir`, validated; CNIConfigError if none."""
    try:
        names = sorted(n for n in os.listdir(conf_dir) if n.endswith(CONFIG_SUFFIXES))
    except FileNotFoundError:
        names = []
    except OSError as e:
        raise CNIConfigError(f"cannot read CNI config dir: {e}", path=conf_dir) from e
    if not names:
        raise CNIConfigError(
            f"no CNI network config (*.conflist, *.conf, *.json) in {conf_dir}", path=""
        )
    path = os.path.join(conf_dir, names[0])
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise CNIConfigError(f"cannot read: {e}", path=path) from e
    return parse_config(raw, path)


def build_plugin_config(
    net: NetworkConfigList,
    plugin: dict[str, Any],
    *,
    prev_result: dict[str, Any] | None,
    capability_args: dict[str, Any],
) -> dict[str, Any]:
    """The stdin of one plugin: its own keys, the list's name and version, the previous
    result, and only the runtime capability args it declares (libcni's rules)."""
    conf = copy.deepcopy(plugin)
    conf["name"] = net.name
    conf["cniVersion"] = net.cni_version
    if prev_result is not None:
        conf["prevResult"] = copy.deepcopy(prev_result)
    declared = plugin.get("capabilities") or {}
    runtime = {k: v for k, v in capability_args.items() if declared.get(k) is True}
    if runtime:
        merged = dict(conf.get("runtimeConfig") or {})
        merged.update(runtime)
        conf["runtimeConfig"] = merged
    return conf


def capability_args(req: PodNetworkRequest) -> dict[str, Any]:
    """The runtime's capability args for a pod, in the field names containerd uses."""
    args: dict[str, Any] = {
        "portMappings": [
            {
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": p.protocol.lower(),
                **({"hostIP": p.host_ip} if p.host_ip else {}),
            }
            for p in req.port_mappings
        ]
    }
    dns: dict[str, Any] = {}
    if req.dns_servers:
        dns["servers"] = list(req.dns_servers)
    if req.dns_searches:
        dns["searches"] = list(req.dns_searches)
    if req.dns_options:
        dns["options"] = list(req.dns_options)
    if dns:
        args["dns"] = dns
    return args


def cni_args(req: PodNetworkRequest) -> list[tuple[str, str]]:
    """CNI_ARGS pairs as kubelet/containerd pass them (IgnoreUnknown so host-local accepts)."""
    pairs = [
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", req.pod_namespace),
        ("K8S_POD_NAME", req.pod_name),
        ("K8S_POD_INFRA_CONTAINER_ID", req.sandbox_id),
        ("K8S_POD_UID", req.pod_uid),
    ]
    for k, v in pairs:
        if any(c in v for c in ";=\n\0"):
            raise NetworkError(
                f"{k} {v!r} cannot be passed in CNI_ARGS (contains ';', '=' or a control char)",
                sandbox_id=req.sandbox_id,
                invalid=True,
            )
    return pairs


def parse_result(result: dict[str, Any], ifname: str) -> PodNetwork:
    """The pod's addresses from a final result: IPs on the sandbox interface (or on no
    named interface), IPv4 first as kubelet expects, prefixes dropped."""
    interfaces = result.get("interfaces") or []
    ips: list[tuple[int, str, str]] = []
    for entry in result.get("ips") or []:
        if not isinstance(entry, dict) or "address" not in entry:
            continue
        idx = entry.get("interface")
        if isinstance(idx, int) and 0 <= idx < len(interfaces):
            itf = interfaces[idx]
            if not itf.get("sandbox") or itf.get("name", ifname) != ifname:
                continue
        try:
            addr = ip_interface(entry["address"]).ip
        except ValueError as e:
            raise NetworkError(f"CNI result has a bad address {entry['address']!r}") from e
        ips.append((addr.version, str(addr), str(entry.get("gateway") or "")))
    ips.sort(key=lambda t: t[0])  # stable: keeps the plugin's order within a family
    return PodNetwork(
        ips=tuple(a for _, a, _ in ips),
        gateway=ips[0][2] if ips else "",
        interface=ifname,
    )


def parse_plugin_output(
    plugin: str, command: str, proc: subprocess.CompletedProcess[bytes], *, sandbox_id: str = ""
) -> dict[str, Any] | None:
    """The plugin's JSON result (None for an empty success) or its error as CNIPluginError."""
    out = proc.stdout.strip()
    err_tail = proc.stderr.decode(errors="replace").strip()[-500:]
    if proc.returncode != 0:
        try:
            obj = json.loads(out)
        except (json.JSONDecodeError, UnicodeDecodeError):
            obj = None
        if isinstance(obj, dict) and ("msg" in obj or "code" in obj):
            code = obj.get("code")
            raise CNIPluginError(
                plugin,
                command,
                str(obj.get("msg") or "(no message)"),
                code=code if isinstance(code, int) else 0,
                details=str(obj.get("details") or ""),
                sandbox_id=sandbox_id,
            )
        text = out.decode(errors="replace")[-500:] or err_tail or "no output"
        raise CNIPluginError(
            plugin, command, f"exit status {proc.returncode}: {text}", sandbox_id=sandbox_id
        )
    if not out:
        return None
    try:
        obj = json.loads(out)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CNIPluginError(
            plugin,
            command,
            f"printed invalid JSON ({e}): {out.decode(errors='replace')[:200]!r}",
            sandbox_id=sandbox_id,
        ) from e
    if not isinstance(obj, dict):
        raise CNIPluginError(plugin, command, "result is not a JSON object", sandbox_id=sandbox_id)
    return obj


@dataclass
class _Attachment:
    """One cached ADD: the exact config, args and result a later DEL/CHECK must reuse."""

    path: str
    network: NetworkConfigList
    sandbox_id: str
    ifname: str
    netns: str
    cni_args: list[tuple[str, str]]
    capability_args: dict[str, Any]
    result: dict[str, Any] | None
    state: str  # "adding" | "ready"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": CACHE_KIND,
            "containerId": self.sandbox_id,
            "ifName": self.ifname,
            "networkName": self.network.name,
            "netns": self.netns,
            "config": self.network.to_json(),
            "cniArgs": [list(p) for p in self.cni_args],
            "capabilityArgs": self.capability_args,
            "result": self.result,
            "state": self.state,
        }

    @classmethod
    def load(cls, path: str) -> _Attachment:
        obj = read_json(path)
        if not isinstance(obj, dict) or obj.get("kind") != CACHE_KIND:
            raise ValueError("not a CNI cache record")
        return cls(
            path=path,
            network=NetworkConfigList.from_json(obj["config"]),
            sandbox_id=obj["containerId"],
            ifname=obj["ifName"],
            netns=obj.get("netns", ""),
            cni_args=[(str(k), str(v)) for k, v in obj.get("cniArgs", [])],
            capability_args=obj.get("capabilityArgs") or {},
            result=obj.get("result"),
            state=obj.get("state", "ready"),
        )


@dataclass
class _ConfigCache:
    signature: tuple[Any, ...] = ()
    config: NetworkConfigList | None = None
    error: CNIConfigError | None = None
    versions: dict[tuple[str, int, int], list[str]] = field(default_factory=dict)


class CNIDriver:
    """NetworkDriver over CNI plugins; safe to call from many threads at once."""

    name = "cni"

    def __init__(
        self,
        state_dir: str,
        *,
        conf_dir: str = "/etc/cni/net.d",
        bin_dirs: tuple[str, ...] = ("/opt/cni/bin", "/usr/lib/cni"),
        node_netns: str = "",
        timeout: float = 120.0,
    ) -> None:
        self.state_dir = state_dir
        self.conf_dir = conf_dir
        self.bin_dirs = tuple(bin_dirs)
        self.node_netns = node_netns
        self.timeout = timeout
        self._results_dir = os.path.join(state_dir, "results")
        self._lock = threading.Lock()
        # striped: a lock per sandbox without a map that grows for the server's lifetime
        self._pod_locks = tuple(threading.Lock() for _ in range(64))
        self._cache = _ConfigCache()

    # ---- configuration -------------------------------------------------------------

    def _signature(self) -> tuple[Any, ...]:
        sig: list[Any] = []
        try:
            names = sorted(os.listdir(self.conf_dir))
        except OSError:
            return ("missing",)
        for n in names:
            if n.endswith(CONFIG_SUFFIXES):
                try:
                    st = os.stat(os.path.join(self.conf_dir, n))
                except OSError:
                    continue
                sig.append((n, st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(sig)

    def config(self) -> NetworkConfigList:
        """The current network config, reloaded when a file in the dir changed."""
        sig = self._signature()
        with self._lock:
            if sig != self._cache.signature or (
                self._cache.config is None and self._cache.error is None
            ):
                try:
                    self._cache.config, self._cache.error = find_config(self.conf_dir), None
                except CNIConfigError as e:
                    self._cache.config, self._cache.error = None, e
                self._cache.signature = sig
            if self._cache.error is not None:
                raise self._cache.error
            assert self._cache.config is not None
            return self._cache.config

    def find_plugin(self, plugin_type: str, *, sandbox_id: str = "") -> str:
        """The plugin's executable: the first bin dir that has it wins (CNI_PATH order)."""
        for d in self.bin_dirs:
            p = os.path.join(d, plugin_type)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
        raise NetworkError(
            f"CNI plugin {plugin_type!r} not found in {':'.join(self.bin_dirs)}",
            sandbox_id=sandbox_id,
        )

    def _plugin_versions(self, plugin_type: str) -> list[str]:
        """supportedVersions from the plugin's VERSION answer, cached per binary."""
        path = self.find_plugin(plugin_type)
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
        with self._lock:
            if key in self._cache.versions:
                return self._cache.versions[key]
        out = self._exec(plugin_type, "VERSION", {"cniVersion": SUPPORTED_VERSIONS[-1]}, {})
        versions = out.get("supportedVersions") if out else None
        if not isinstance(versions, list):
            raise CNIPluginError(plugin_type, "VERSION", "no supportedVersions in its answer")
        result = [str(v) for v in versions]
        with self._lock:
            self._cache.versions[key] = result
        return result

    # ---- plugin execution ----------------------------------------------------------

    def _exec(
        self,
        plugin_type: str,
        command: str,
        stdin: dict[str, Any],
        env_extra: dict[str, str],
        *,
        sandbox_id: str = "",
    ) -> dict[str, Any] | None:
        path = self.find_plugin(plugin_type, sandbox_id=sandbox_id)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update({"CNI_COMMAND": command, "CNI_PATH": ":".join(self.bin_dirs)})
        env.update(env_extra)
        argv = [path]
        if self.node_netns:
            argv = [shutil.which("nsenter") or "nsenter", f"--net={self.node_netns}", path]
        try:
            proc = subprocess.run(
                argv,
                input=json.dumps(stdin).encode(),
                env=env,
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise CNIPluginError(
                plugin_type, command, f"timed out after {self.timeout}s", sandbox_id=sandbox_id
            ) from e
        except OSError as e:
            raise CNIPluginError(
                plugin_type, command, f"cannot execute {path}: {e}", sandbox_id=sandbox_id
            ) from e
        return parse_plugin_output(plugin_type, command, proc, sandbox_id=sandbox_id)

    @staticmethod
    def _env(att: _Attachment, *, netns: str | None = None) -> dict[str, str]:
        return {
            "CNI_CONTAINERID": att.sandbox_id,
            "CNI_NETNS": att.netns if netns is None else netns,
            "CNI_IFNAME": att.ifname,
            "CNI_ARGS": ";".join(f"{k}={v}" for k, v in att.cni_args),
        }

    def _invoke(
        self,
        att: _Attachment,
        plugin: dict[str, Any],
        command: str,
        prev_result: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        stdin = build_plugin_config(
            att.network, plugin, prev_result=prev_result, capability_args=att.capability_args
        )
        return self._exec(plugin["type"], command, stdin, self._env(att), sandbox_id=att.sandbox_id)

    def _del_chain(self, att: _Attachment, upto: int) -> list[CNIPluginError | NetworkError]:
        """DEL plugins upto-1..0 with the cached result as prevResult; all of them even
        when one fails (DEL must release as much as it can)."""
        prev = att.result if version_tuple(att.network.cni_version) >= (0, 4, 0) else None
        errors: list[CNIPluginError | NetworkError] = []
        for plugin in reversed(att.network.plugins[:upto]):
            try:
                self._invoke(att, plugin, "DEL", prev)
            except NetworkError as e:
                errors.append(e)
        return errors

    def _rollback(self, att: _Attachment, upto: int) -> None:
        """Undo a failed ADD (plugins upto..1); the record stays if a DEL failed so that
        teardown or reconcile can retry it."""
        if self._del_chain(att, upto):
            self._save(att)
        else:
            self._drop(att)

    # ---- cache ----------------------------------------------------------------------

    def _cache_path(self, network: str, sandbox_id: str, ifname: str) -> str:
        return os.path.join(self._results_dir, network, sandbox_id, f"{ifname}.json")

    def _save(self, att: _Attachment) -> None:
        os.makedirs(os.path.dirname(att.path), mode=0o700, exist_ok=True)
        write_json_atomic(att.path, att.to_json())

    def _drop(self, att: _Attachment) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(att.path)
        d = os.path.dirname(att.path)
        for p in (d, os.path.dirname(d)):
            with contextlib.suppress(OSError):
                os.rmdir(p)  # only when empty

    def _attachments(self, sandbox_id: str | None = None) -> list[_Attachment]:
        found: list[_Attachment] = []
        base = Path(self._results_dir)
        if not base.is_dir():
            return found
        pattern = f"*/{sandbox_id}/*.json" if sandbox_id else "*/*/*.json"
        for p in sorted(base.glob(pattern)):
            try:
                found.append(_Attachment.load(str(p)))
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise NetworkError(f"unreadable CNI cache record {p}: {e}") from e
        return found

    def _pod_lock(self, sandbox_id: str) -> threading.Lock:
        return self._pod_locks[zlib.crc32(sandbox_id.encode()) % len(self._pod_locks)]

    # ---- NetworkDriver ---------------------------------------------------------------

    def setup(self, req: PodNetworkRequest) -> PodNetwork:
        _validate_request(req)
        net = self.config()
        args = cni_args(req)
        with self._pod_lock(req.sandbox_id):
            path = self._cache_path(net.name, req.sandbox_id, req.ifname)
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
                if _Attachment.load(path).state == "ready":
                    # a second ADD would overwrite the record of the first and leak it
                    raise NetworkError(
                        f"already attached to CNI network {net.name} as {req.ifname}; "
                        "tear it down first",
                        sandbox_id=req.sandbox_id,
                        invalid=True,
                    )
            att = _Attachment(
                path=path,
                network=net,
                sandbox_id=req.sandbox_id,
                ifname=req.ifname,
                netns=req.netns,
                cni_args=args,
                capability_args=capability_args(req),
                result=None,
                state="adding",
            )
            # recorded before any side effect: a crash mid-ADD leaves something to DEL
            self._save(att)
            prev: dict[str, Any] | None = None
            for i, plugin in enumerate(net.plugins):
                try:
                    out = self._invoke(att, plugin, "ADD", prev)
                    if out is None:
                        raise CNIPluginError(
                            plugin["type"], "ADD", "printed no result", sandbox_id=req.sandbox_id
                        )
                except NetworkError:
                    att.result = prev
                    self._rollback(att, i + 1)
                    raise
                prev = out
            assert prev is not None
            att.result, att.state = prev, "ready"
            try:
                pod = parse_result(prev, req.ifname)
            except NetworkError as e:
                self._rollback(att, len(net.plugins))
                raise NetworkError(str(e), sandbox_id=req.sandbox_id) from e
            self._save(att)
            return PodNetwork(
                ips=pod.ips,
                gateway=pod.gateway,
                interface=pod.interface,
                extra={"cni_network": net.name, "cni_config": net.source},
            )

    def teardown(self, req: PodNetworkRequest) -> None:
        _validate_request(req)
        with self._pod_lock(req.sandbox_id):
            atts = [a for a in self._attachments(req.sandbox_id) if a.ifname == req.ifname]
            if not atts:
                # no record (state lost): DEL with the current config and no prevResult,
                # as libcni does; with no config there is nothing we could have added
                try:
                    net = self.config()
                except CNIConfigError:
                    return
                atts = [
                    _Attachment(
                        path="",
                        network=net,
                        sandbox_id=req.sandbox_id,
                        ifname=req.ifname,
                        netns=req.netns,
                        cni_args=cni_args(req),
                        capability_args=capability_args(req),
                        result=None,
                        state="unknown",
                    )
                ]
            for att in atts:
                att.netns = req.netns or att.netns
                errors = self._del_chain(att, len(att.network.plugins))
                if errors:
                    raise NetworkError("; ".join(str(e) for e in errors), sandbox_id=req.sandbox_id)
                if att.path:
                    self._drop(att)

    def check(self, req: PodNetworkRequest) -> None:
        """CHECK every plugin in order against the cached ADD result."""
        _validate_request(req)
        with self._pod_lock(req.sandbox_id):
            atts = [
                a
                for a in self._attachments(req.sandbox_id)
                if a.ifname == req.ifname and a.state == "ready"
            ]
            if not atts:
                raise NetworkError(
                    f"no CNI attachment for interface {req.ifname}", sandbox_id=req.sandbox_id
                )
            for att in atts:
                if att.network.disable_check or version_tuple(att.network.cni_version) < (
                    0,
                    4,
                    0,
                ):
                    continue
                for plugin in att.network.plugins:
                    self._invoke(att, plugin, "CHECK", att.result)

    def status(self) -> tuple[bool, str]:
        try:
            net = self.config()
            for plugin in net.plugins:
                types = [plugin["type"]]
                if isinstance(plugin.get("ipam"), dict):
                    types.append(plugin["ipam"]["type"])
                for t in types:
                    versions = self._plugin_versions(t)
                    if net.cni_version not in versions:
                        return False, (
                            f"CNI plugin {t} does not support cniVersion {net.cni_version} "
                            f"of network {net.name} ({net.source}); it supports "
                            f"{', '.join(versions)}"
                        )
            if version_tuple(net.cni_version) >= (1, 1, 0):
                for plugin in net.plugins:
                    stdin = build_plugin_config(net, plugin, prev_result=None, capability_args={})
                    self._exec(plugin["type"], "STATUS", stdin, {})
        except NetworkError as e:
            return False, f"CNI network not ready: {e}"
        return True, f"CNI network {net.name} ({net.source}) is ready"

    def reconcile(self, live: dict[str, PodNetworkRequest]) -> list[str]:
        done: list[str] = []
        base = Path(self._results_dir)
        if base.is_dir():
            for d in base.glob("*/*"):
                for t in remove_stale_temps(str(d)):
                    done.append(f"removed stale temp {d / t}")
        for att in self._attachments():
            if att.sandbox_id in live:
                continue
            with self._pod_lock(att.sandbox_id):
                errors = self._del_chain(att, len(att.network.plugins))
                what = f"CNI attachment {att.network.name}/{att.sandbox_id}/{att.ifname}"
                if errors:
                    done.append(f"failed to release {what}: {'; '.join(map(str, errors))}")
                    continue
                self._drop(att)
                done.append(f"released {what}")
        done.extend(self._gc(live))
        return done

    def _gc(self, live: dict[str, PodNetworkRequest]) -> list[str]:
        """CNI 1.1 GC: tell each plugin which attachments are valid so it frees the rest."""
        try:
            net = self.config()
        except CNIConfigError:
            return []
        if net.disable_gc or version_tuple(net.cni_version) < (1, 1, 0):
            return []
        valid = [{"containerID": sid, "ifname": r.ifname} for sid, r in sorted(live.items())]
        done = []
        for plugin in net.plugins:
            stdin = build_plugin_config(net, plugin, prev_result=None, capability_args={})
            # libcni sets both spellings the spec has used
            stdin["cni.dev/valid-attachments"] = valid
            stdin["cni.dev/attachments"] = valid
            try:
                self._exec(plugin["type"], "GC", stdin, {})
                done.append(f"GC {net.name}/{plugin['type']}: {len(valid)} valid attachments")
            except NetworkError as e:
                done.append(f"GC {net.name}/{plugin['type']} failed: {e}")
        return done


def _validate_request(req: PodNetworkRequest) -> None:
    if not _ID_RE.match(req.sandbox_id):
        raise NetworkError(
            f"invalid sandbox id {req.sandbox_id!r} for CNI",
            sandbox_id=req.sandbox_id,
            invalid=True,
        )
    n = req.ifname
    if (
        not n
        or len(n) > 15
        or n in (".", "..")
        or any(c in n for c in "/:")
        or any(c.isspace() for c in n)
    ):
        raise NetworkError(f"invalid interface name {n!r}", sandbox_id=req.sandbox_id, invalid=True)
