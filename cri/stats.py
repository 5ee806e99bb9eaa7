"""ContainerStats and PodSandboxStats: what kubelet's summary API and `kubectl top` read.

Numbers come from the kernel as cAdvisor reads them: cgroup v2 files through
cgroups.stats, the writable layer from the overlay snapshot's upper dir, and
network counters from /proc/net/dev inside the pod's network namespace. A
file the host does not have (a hybrid host has no memory or pids controller
in the unified hierarchy) leaves its field unset: stats never fail because a
controller is missing, and never guess.

CPU "nano cores" is a rate, so it needs two samples: like kubelet's CRI stats
provider, each container (and pod) keeps its previous sample here, and the
rate is reported over the window since it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cgroups.errors import CgroupError
from cgroups.stats import CgroupStats, MemoryStats, Pressure, read_stats
from cri.api import api_pb2

log = logging.getLogger("pinnace.cri")

DEFAULT_INTERFACE = "eth0"  # kubelet's and cAdvisor's default pod interface
MIN_RATE_WINDOW_NS = 100_000_000  # a window shorter than this gives a noisy rate: keep the last
NANO = 1_000_000_000


# --- pure computations ---------------------------------------------------------------


@dataclass(frozen=True)
class CpuSample:
    """One reading of a cgroup's cumulative CPU time."""

    timestamp_ns: int
    usage_ns: int


def nano_cores(prev: CpuSample | None, cur: CpuSample) -> int | None:
    """CPU used per second of wall time between two samples, in nano cores (1e9 = one core).

    None without a usable window (no previous sample, time not advancing) or when
    the counter went backwards (the cgroup was recreated under the same name).
    """
    if prev is None:
        return None
    window = cur.timestamp_ns - prev.timestamp_ns
    used = cur.usage_ns - prev.usage_ns
    if window <= 0 or used < 0:
        return None
    return used * NANO // window


def working_set(mem: MemoryStats) -> int:
    """Usage minus inactive file pages, floored at 0: kubelet's and cAdvisor's working set."""
    return max(0, mem.current - mem.stat.get("inactive_file", 0))


@dataclass(frozen=True)
class InterfaceCounters:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int


def parse_net_dev(text: str) -> list[InterfaceCounters]:
    """/proc/net/dev: two header lines, then "name: rx(8 columns) tx(8 columns)"."""
    out = []
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        cols = rest.split()
        if len(cols) < 16 or not all(c.isdigit() for c in cols):
            continue
        out.append(
            InterfaceCounters(
                name=name.strip(),
                rx_bytes=int(cols[0]),
                rx_errors=int(cols[2]),
                tx_bytes=int(cols[8]),
                tx_errors=int(cols[10]),
            )
        )
    return out


class RateTracker:
    """The previous CPU sample per key ("c:<id>", "p:<id>"), so a rate spans two calls.

    A sample taken too soon after the kept one does not replace it (the rate
    over a few microseconds says nothing); the last rate is repeated instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prev: dict[str, tuple[CpuSample, int | None]] = {}

    def rate(self, key: str, cur: CpuSample) -> int | None:
        with self._lock:
            prev, last = self._prev.get(key, (None, None))
            if prev is not None and 0 <= cur.timestamp_ns - prev.timestamp_ns < MIN_RATE_WINDOW_NS:
                return last
            value = nano_cores(prev, cur)
            self._prev[key] = (cur, value)
            return value

    def keep_only(self, keys: Iterable[str], prefix: str) -> None:
        """Forget samples of `prefix` keys not in `keys` (removed containers or pods)."""
        wanted = set(keys)
        with self._lock:
            for k in [k for k in self._prev if k.startswith(prefix) and k not in wanted]:
                del self._prev[k]


def _u64(value: int) -> api_pb2.UInt64Value:
    return api_pb2.UInt64Value(value=max(0, value))


def _psi(p: Pressure | None) -> api_pb2.PsiStats | None:
    if p is None:
        return None
    out = api_pb2.PsiStats()
    out.Some.Total, out.Some.Avg10 = p.some.total, p.some.avg10
    out.Some.Avg60, out.Some.Avg300 = p.some.avg60, p.some.avg300
    if p.full is not None:
        out.Full.Total, out.Full.Avg10 = p.full.total, p.full.avg10
        out.Full.Avg60, out.Full.Avg300 = p.full.avg60, p.full.avg300
    return out


def memory_usage(mem: MemoryStats, ts: int) -> api_pb2.MemoryUsage:
    """MemoryUsage as cAdvisor fills it from cgroup v2 (anon is RSS)."""
    ws = working_set(mem)
    out = api_pb2.MemoryUsage(
        timestamp=ts,
        working_set_bytes=_u64(ws),
        usage_bytes=_u64(mem.current),
    )
    if mem.limit is not None:
        out.available_bytes.CopyFrom(_u64(mem.limit - ws))
    if "anon" in mem.stat:
        out.rss_bytes.CopyFrom(_u64(mem.stat["anon"]))
    if "pgfault" in mem.stat:
        out.page_faults.CopyFrom(_u64(mem.stat["pgfault"]))
    if "pgmajfault" in mem.stat:
        out.major_page_faults.CopyFrom(_u64(mem.stat["pgmajfault"]))
    return out


def _sum_cpu(parts: list[api_pb2.CpuUsage], ts: int) -> api_pb2.CpuUsage | None:
    have = [p for p in parts if p.HasField("usage_core_nano_seconds")]
    if not have:
        return None
    out = api_pb2.CpuUsage(timestamp=ts)
    out.usage_core_nano_seconds.value = sum(p.usage_core_nano_seconds.value for p in have)
    rates = [p for p in have if p.HasField("usage_nano_cores")]
    if rates:
        out.usage_nano_cores.value = sum(p.usage_nano_cores.value for p in rates)
    return out


_MEMORY_FIELDS = (
    "working_set_bytes",
    "available_bytes",
    "usage_bytes",
    "rss_bytes",
    "page_faults",
    "major_page_faults",
)


def _sum_memory(parts: list[api_pb2.MemoryUsage], ts: int) -> api_pb2.MemoryUsage | None:
    if not parts:
        return None
    out = api_pb2.MemoryUsage(timestamp=ts)
    for name in _MEMORY_FIELDS:
        have = [getattr(p, name).value for p in parts if p.HasField(name)]
        if have:
            getattr(out, name).value = sum(have)
    return out


# --- reading the kernel ----------------------------------------------------------------


def read_cgroup(path: str) -> CgroupStats | None:
    """A cgroup's statistics, or None when it is gone (an exited container's)."""
    if not path:
        return None
    try:
        return read_stats(Path(path))
    except (CgroupError, OSError, ValueError):
        return None


def count_processes(path: str) -> int | None:
    """Processes in a cgroup and below it: where pids.current is missing, cgroup.procs."""
    if not path or not os.path.isdir(path):
        return None
    total = 0
    for d, _dirs, _files in os.walk(path):
        with contextlib.suppress(OSError), open(os.path.join(d, "cgroup.procs")) as f:
            total += sum(1 for line in f if line.strip())
    return total


def read_net_dev(netns: str) -> list[InterfaceCounters] | None:
    """Interface counters of a network namespace (a pin file), read from inside it.

    /proc/thread-self, not /proc/self: only the reading thread has joined the netns.
    """
    from cri.network.netlink import in_netns_thread

    def read() -> str:
        with open("/proc/thread-self/net/dev") as f:
            return f.read()

    try:
        return parse_net_dev(in_netns_thread(netns, read))
    except Exception as exc:  # a pin gone mid-read must not fail the whole listing
        log.debug("network stats of %s: %s", netns, exc)
        return None


# --- the service -------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerSample:
    """One container's stats plus what the metrics need that the proto has no field for."""

    stats: api_pb2.ContainerStats
    memory_limit: int | None
    processes: int | None


class Stats:
    """The stats RPCs' implementation, over the sandbox and container managers."""

    def __init__(
        self,
        sandboxes: Any,  # cri.sandbox.SandboxManager
        containers: Any,  # cri.containers.ContainerManager
        store: Any,  # images.store.ImageStore (its snapshotter holds the upper dirs)
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.sandboxes = sandboxes
        self.containers = containers
        self.store = store
        self.clock = clock
        self.rates = RateTracker()

    # -- where things are -----------------------------------------------------------

    def container_cgroup(self, rec: Any) -> str:
        """The live container's cgroup dir from the runtime's state; "" once it is gone."""
        from cri.containers import CREATED, RUNNING
        from runtime.errors import ContainerNotFound
        from runtime.state import RuntimeRoot, container_cgroup_dir

        if rec.state not in (CREATED, RUNNING):
            return ""
        try:
            state = RuntimeRoot(self.containers.deps.runtime_root).get(rec.id).load()
            return container_cgroup_dir(state)
        except (ContainerNotFound, OSError, ValueError, KeyError):
            return ""
        except Exception as exc:  # a state file mid-rewrite, an unexpected runtime error
            log.debug("cgroup of container %s: %s", rec.id, exc)
            return ""

    def pod_cgroup(self, rec: Any) -> str:
        from cgroups.discovery import discover

        if not rec.cgroup_parent:
            return ""
        try:
            point = discover().mount_point
        except OSError:
            return ""
        return "" if point is None else os.path.join(point, rec.cgroup_parent.lstrip("/"))

    # -- containers ----------------------------------------------------------------------

    def sample_container(self, rec: Any) -> ContainerSample:
        ts = self.clock()
        out = api_pb2.ContainerStats()
        a = out.attributes
        a.id = rec.id
        a.metadata.name, a.metadata.attempt = rec.name, rec.attempt
        a.labels.update(rec.labels)
        a.annotations.update(rec.annotations)
        path = self.container_cgroup(rec)
        cg = read_cgroup(path)
        limit = None
        procs = None
        if cg is not None:
            if cg.cpu is not None:
                out.cpu.CopyFrom(self._cpu("c:" + rec.id, cg.cpu.usage_usec * 1000, ts))
                if (psi := _psi(cg.cpu_pressure)) is not None:
                    out.cpu.psi.CopyFrom(psi)
            if cg.memory is not None:
                out.memory.CopyFrom(memory_usage(cg.memory, ts))
                if (psi := _psi(cg.memory_pressure)) is not None:
                    out.memory.psi.CopyFrom(psi)
                limit = cg.memory.limit
                if cg.memory.swap_current is not None:
                    out.swap.timestamp = ts
                    out.swap.swap_usage_bytes.value = cg.memory.swap_current
                    if cg.memory.swap_limit is not None:
                        out.swap.swap_available_bytes.CopyFrom(
                            _u64(cg.memory.swap_limit - cg.memory.swap_current)
                        )
            if (psi := _psi(cg.io_pressure)) is not None:
                out.io.timestamp = ts
                out.io.psi.CopyFrom(psi)
            procs = cg.pids.current if cg.pids is not None else None
            if procs is None:
                procs = count_processes(path)
        self._writable_layer(rec, out, ts)
        return ContainerSample(out, limit, procs)

    def _cpu(self, key: str, usage_ns: int, ts: int) -> api_pb2.CpuUsage:
        cpu = api_pb2.CpuUsage(timestamp=ts)
        cpu.usage_core_nano_seconds.value = usage_ns
        rate = self.rates.rate(key, CpuSample(ts, usage_ns))
        if rate is not None:
            cpu.usage_nano_cores.value = rate
        return cpu

    def _writable_layer(self, rec: Any, out: api_pb2.ContainerStats, ts: int) -> None:
        if not rec.snapshot:
            return
        try:
            usage = self.store.snapshotter.usage(rec.snapshot)
        except Exception as exc:  # removed meanwhile, or never made (a failed create)
            log.debug("writable layer of %s: %s", rec.id, exc)
            return
        w = out.writable_layer
        w.timestamp = ts
        w.fs_id.mountpoint = self.store.snapshotter.root
        w.used_bytes.value = usage.size
        w.inodes_used.value = usage.inodes

    def container_stats(self, cid: str) -> api_pb2.ContainerStatsResponse:
        rec = self.containers.get(cid)
        return api_pb2.ContainerStatsResponse(stats=self.sample_container(rec).stats)

    def list_container_stats(
        self, flt: api_pb2.ContainerStatsFilter | None
    ) -> api_pb2.ListContainerStatsResponse:
        recs = self.containers.listed(flt)
        if flt is None or not (flt.id or flt.pod_sandbox_id or flt.label_selector):
            self.rates.keep_only(("c:" + r.id for r in recs), "c:")
        return api_pb2.ListContainerStatsResponse(
            stats=[self.sample_container(r).stats for r in recs]
        )

    # -- pod sandboxes -------------------------------------------------------------------

    def sample_pod(self, rec: Any) -> tuple[api_pb2.PodSandboxStats, list[ContainerSample]]:
        """The pod's stats and its containers' samples (the metrics use both)."""
        out = api_pb2.PodSandboxStats()
        a = out.attributes
        a.id = rec.id
        a.metadata.name, a.metadata.uid = rec.name, rec.uid
        a.metadata.namespace, a.metadata.attempt = rec.namespace, rec.attempt
        a.labels.update(rec.labels)
        a.annotations.update(rec.annotations)
        recs = self.containers.of_sandbox(rec.id)
        samples = [self.sample_container(c) for c in recs]
        ts = self.clock()
        linux = out.linux
        linux.containers.extend(s.stats for s in samples)
        pod_path = self.pod_cgroup(rec)
        cg = read_cgroup(pod_path)
        if cg is not None and cg.cpu is not None:
            linux.cpu.CopyFrom(self._cpu("p:" + rec.id, cg.cpu.usage_usec * 1000, ts))
        elif (cpu := _sum_cpu([s.stats.cpu for s in samples], ts)) is not None:
            linux.cpu.CopyFrom(cpu)
        if cg is not None and cg.memory is not None:
            linux.memory.CopyFrom(memory_usage(cg.memory, ts))
        else:
            mems = [s.stats.memory for s in samples if s.stats.HasField("memory")]
            if (mem := _sum_memory(mems, ts)) is not None:
                linux.memory.CopyFrom(mem)
        procs: int | None
        if cg is not None and cg.pids is not None:
            procs = cg.pids.current
        elif pod_path and os.path.isdir(pod_path):
            procs = count_processes(pod_path)
        else:
            counted = [s.processes for s in samples if s.processes is not None]
            procs = sum(counted) if counted else None
        if procs is not None:
            linux.process.timestamp = ts
            linux.process.process_count.value = procs
        if rec.netns:
            ifaces = read_net_dev(rec.netns)
            if ifaces is not None:
                linux.network.CopyFrom(network_usage(ifaces, ts))
        return out, samples

    def pod_sandbox_stats(self, sid: str) -> api_pb2.PodSandboxStatsResponse:
        rec = self.sandboxes.get(sid)
        return api_pb2.PodSandboxStatsResponse(stats=self.sample_pod(rec)[0])

    def pod_records(self, flt: api_pb2.PodSandboxStatsFilter | None) -> list[Any]:
        pf = None
        if flt is not None:
            pf = api_pb2.PodSandboxFilter(id=flt.id, label_selector=flt.label_selector)
        recs: list[Any] = self.sandboxes.list(pf)
        if pf is None:
            self.rates.keep_only(("p:" + r.id for r in recs), "p:")
        return recs

    def list_pod_sandbox_stats(
        self, flt: api_pb2.PodSandboxStatsFilter | None
    ) -> api_pb2.ListPodSandboxStatsResponse:
        return api_pb2.ListPodSandboxStatsResponse(
            stats=[self.sample_pod(r)[0] for r in self.pod_records(flt)]
        )


def network_usage(ifaces: list[InterfaceCounters], ts: int) -> api_pb2.NetworkUsage:
    """Every interface of the pod; eth0 is also the default one, as kubelet expects."""
    out = api_pb2.NetworkUsage(timestamp=ts)
    for i in ifaces:
        u = out.interfaces.add(name=i.name)
        u.rx_bytes.value, u.rx_errors.value = i.rx_bytes, i.rx_errors
        u.tx_bytes.value, u.tx_errors.value = i.tx_bytes, i.tx_errors
        if i.name == DEFAULT_INTERFACE:
            out.default_interface.CopyFrom(u)
    return out
