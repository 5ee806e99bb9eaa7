"""A private containerd with its CRI plugin, for bench/cri_bench.py to compare against.

Everything lives under one temp dir: config.toml, root, state, the gRPC socket, the
(empty) CNI dirs, the opt dir. Pods are expected to use host networking, so no CNI
plugin is needed. The sandbox ("pause") image is built from the busybox fixture layer
with `sleep infinity` as its entrypoint: containerd runs only the pause image's
entrypoint, so any long sleeper will do. Images are imported with `ctr images import`
from an OCI archive whose index carries containerd's image-name annotation.

What containerd 1.6 still puts outside the temp dir: each shim's socket goes to
/run/containerd/s/<hash> (a hard-coded path, removed when the shim exits); `stop`
removes /run/containerd/s and /run/containerd if they are empty and did not exist
before. On a hybrid cgroup host containerd and runc use the v1 hierarchies (plus the
unified one), so cgroup clean-up walks every mounted hierarchy.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.fixtures.cgroup_tree import cgroup_mounts, remove_tree

PAUSE_IMAGE = "docker.io/library/pause-bench:latest"
BUSYBOX_IMAGE = "docker.io/library/busybox:latest"
SHIM_SOCKETS = Path("/run/containerd")


class ContainerdUnavailable(Exception):
    """containerd cannot be used here; the message says why (the bench skips it)."""


@dataclass
class Containerd:
    top: Path
    proc: subprocess.Popen[bytes] | None = None
    preexisting: list[Path] = field(default_factory=list)  # host dirs we must not remove
    sockets_before: set[str] = field(default_factory=set)  # entries of /run/containerd/s

    @property
    def socket(self) -> str:
        return str(self.top / "containerd.sock")

    @property
    def log(self) -> Path:
        return self.top / "containerd.log"

    def log_tail(self, n: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-n:]
        return ""

    def version(self) -> str:
        out = subprocess.run(["containerd", "--version"], capture_output=True, text=True)
        return out.stdout.strip()

    def shim_pids(self) -> list[int]:
        """containerd-shim-runc-v2 processes serving our socket (one per pod)."""
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                argv
                and argv[0].endswith(b"containerd-shim-runc-v2")
                and (self.socket.encode() in argv)
            ):
                pids.append(int(proc.name))
        return pids


def write_config(top: Path) -> Path:
    """config.toml (version 2): private paths, CRI on, overlayfs, runc v2 with cgroupfs."""
    for sub in ("root", "state", "opt", "runc", "cni/bin", "cni/net.d"):
        (top / sub).mkdir(parents=True, exist_ok=True)
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    text = f"""version = 2
root = "{top / "root"}"
state = "{top / "state"}"
disabled_plugins = []

[grpc]
  address = "{top / "containerd.sock"}"

[ttrpc]
  address = "{top / "containerd.sock.ttrpc"}"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{top / "opt"}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # clamp oom_score_adj to containerd's own: the sandbox asks for -998, and lowering it
  # needs CAP_SYS_RESOURCE, which root lacks on some hosts (runc init then dies)
  restrict_oom_score_adj = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{top / "runc"}"

[{cri}.cni]
  bin_dir = "{top / "cni/bin"}"
  conf_dir = "{top / "cni/net.d"}"
"""
    path = top / "config.toml"
    path.write_text(text)
    return path


def write_archive(layout: Path, dest: Path, names: dict[str, str]) -> Path:
    """An OCI archive of `layout` whose index lists only the ref names in `names`, each
    annotated with the full image name containerd should give it."""
    index = json.loads((layout / "index.json").read_text())
    manifests = []
    for desc in index["manifests"]:
        ref = desc.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
        if ref in names:
            desc = {**desc, "annotations": {**desc["annotations"]}}
            desc["annotations"]["io.containerd.image.name"] = names[ref]
            manifests.append(desc)
    missing = set(names) - {
        d["annotations"]["org.opencontainers.image.ref.name"] for d in manifests
    }
    if missing:
        raise ContainerdUnavailable(f"{layout}: no image tagged {sorted(missing)}")
    data = json.dumps({**index, "manifests": manifests}).encode()
    with tarfile.open(dest, "w") as tar:
        tar.add(layout / "oci-layout", arcname="oci-layout")
        tar.add(layout / "blobs", arcname="blobs")
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return dest


def start(top: Path, timeout: float = 60.0) -> Containerd:
    """Start containerd on a config under `top`; raise ContainerdUnavailable with its log."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        raise ContainerdUnavailable("containerd is not installed (apt-get install containerd)")
    if shutil.which("containerd-shim-runc-v2") is None or shutil.which("runc") is None:
        raise ContainerdUnavailable("containerd-shim-runc-v2 or runc is missing")
    top.mkdir(parents=True, exist_ok=True)
    ctrd = Containerd(top)
    ctrd.preexisting = [p for p in (SHIM_SOCKETS / "s", SHIM_SOCKETS) if p.exists()]
    with contextlib.suppress(OSError):
        ctrd.sockets_before = set(os.listdir(SHIM_SOCKETS / "s"))
    config = write_config(top)
    log = open(ctrd.log, "ab")  # noqa: SIM115 - the child owns it
    ctrd.proc = subprocess.Popen(
        ["containerd", "--config", str(config), "--log-level", "warn"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a Ctrl-C in the terminal reaches us, not it: we stop it
    )
    log.close()
    deadline = time.monotonic() + timeout
    while True:
        if ctrd.proc.poll() is not None:
            raise ContainerdUnavailable(
                f"containerd exited {ctrd.proc.returncode}: {ctrd.log_tail()}"
            )
        probe = subprocess.run(
            ["ctr", "-a", ctrd.socket, "version"], capture_output=True, check=False
        )
        if probe.returncode == 0:
            return ctrd
        if time.monotonic() > deadline:
            stop(ctrd)
            raise ContainerdUnavailable(f"containerd did not answer: {ctrd.log_tail()}")
        time.sleep(0.1)


def import_images(ctrd: Containerd, archive: Path) -> None:
    proc = subprocess.run(
        ["ctr", "-a", ctrd.socket, "-n", "k8s.io", "images", "import", str(archive)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ContainerdUnavailable(f"ctr images import: {proc.stderr.strip()}")


def remove_cgroups(top_rel: str) -> list[str]:
    """Kill what is left in /<hierarchy>/<top_rel> (by PID) and rmdir it, deepest first,
    in every hierarchy. Returns what could not be removed."""
    failed = []
    rel = top_rel.strip("/")
    if not rel:
        raise ValueError("refusing to clean the root cgroup")
    for mount in cgroup_mounts():
        top = mount / rel
        if not top.is_dir():
            continue
        failed += remove_tree(top, kill=True)
    return failed


def unmount_under(top: Path) -> list[str]:
    """Lazily unmount every mount point at or below `top`, deepest first."""
    left = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == str(top) or point.startswith(f"{top}/"):
            left.append(point)
    for point in sorted(left, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    return left


def stop(ctrd: Containerd, timeout: float = 20.0) -> None:
    """SIGTERM containerd by PID (SIGKILL after `timeout`), then SIGKILL any shim of ours
    by PID. Pods should have been removed through CRI first; this is the backstop."""
    if ctrd.proc is not None and ctrd.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(ctrd.proc.pid, signal.SIGTERM)
        try:
            ctrd.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(ctrd.proc.pid, signal.SIGKILL)
            ctrd.proc.wait()
    for pid in ctrd.shim_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while ctrd.shim_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    # a killed shim leaves its socket behind; ours are the entries that appeared since
    with contextlib.suppress(OSError):
        for name in set(os.listdir(SHIM_SOCKETS / "s")) - ctrd.sockets_before:
            with contextlib.suppress(OSError):
                (SHIM_SOCKETS / "s" / name).unlink()
    for d in (SHIM_SOCKETS / "s", SHIM_SOCKETS):
        if d not in ctrd.preexisting:
            with contextlib.suppress(OSError):
                d.rmdir()
