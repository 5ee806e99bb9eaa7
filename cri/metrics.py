"""Metrics: the CRI's cAdvisor-style pod metrics, and Prometheus metrics of the server itself.

ListMetricDescriptors / ListPodSandboxMetrics let kubelet serve
/metrics/cadvisor from the runtime instead of cAdvisor, so the names, types and
label keys are cAdvisor's. The CRI carries values as uint64: seconds are whole
seconds, the unit the metric names promise.

The server's own metrics (RPC latency, containers by state, OOM kills, image
pulls) live in a private prometheus_client registry served on
`metrics_address`; the container gauge is computed at scrape time from the
records, so it can never drift from what ListContainers says.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cri.api import api_pb2

log = logging.getLogger("pinnace.cri")

COUNTER, GAUGE = api_pb2.COUNTER, api_pb2.GAUGE
CONTAINER_LABELS = ("container", "id", "image", "name", "namespace", "pod")
NETWORK_LABELS = (*CONTAINER_LABELS, "interface")


@dataclass(frozen=True)
class Descriptor:
    name: str
    help: str
    type: int  # api_pb2.MetricType
    labels: tuple[str, ...] = CONTAINER_LABELS
    pod_level: bool = False  # reported once per pod (network), not per container


DESCRIPTORS = (
    Descriptor(
        "container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", COUNTER
    ),
    Descriptor("container_memory_working_set_bytes", "Current working set in bytes.", GAUGE),
    Descriptor("container_memory_rss", "Size of RSS in bytes.", GAUGE),
    Descriptor(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        GAUGE,
    ),
    Descriptor(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures (page faults).",
        COUNTER,
        (*CONTAINER_LABELS, "failure_type", "scope"),
    ),
    Descriptor("container_spec_memory_limit_bytes", "Memory limit for the container.", GAUGE),
    Descriptor(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        GAUGE,
        (*CONTAINER_LABELS, "device"),
    ),
    Descriptor(
        "container_fs_inodes_total",
        "Number of inodes used by the container on this filesystem.",
        GAUGE,
        (*CONTAINER_LABELS, "device"),
    ),
    Descriptor("container_processes", "Number of processes running inside the container.", GAUGE),
    Descriptor(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        COUNTER,
        NETWORK_LABELS,
        pod_level=True,
    ),
    Descriptor(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        COUNTER,
        NETWORK_LABELS,
        pod_level=True,
    ),
    Descriptor(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        COUNTER,
        NETWORK_LABELS,
        pod_level=True,
    ),
    Descriptor(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        COUNTER,
        NETWORK_LABELS,
        pod_level=True,
    ),
)
_BY_NAME = {d.name: d for d in DESCRIPTORS}


def list_descriptors() -> api_pb2.ListMetricDescriptorsResponse:
    return api_pb2.ListMetricDescriptorsResponse(
        descriptors=[
            api_pb2.MetricDescriptor(name=d.name, help=d.help, label_keys=list(d.labels))
            for d in DESCRIPTORS
        ]
    )


def _metric(name: str, ts: int, base: list[str], value: int, *extra: str) -> api_pb2.Metric:
    d = _BY_NAME[name]
    labels = [*base, *extra]
    assert len(labels) == len(d.labels), name  # a descriptor and its values must agree
    return api_pb2.Metric(
        name=name,
        timestamp=ts,
        metric_type=d.type,  # type: ignore[arg-type]
        label_values=labels,
        value=api_pb2.UInt64Value(value=max(0, value)),
    )


def container_metrics(
    c: api_pb2.ContainerStats,
    *,
    pod: api_pb2.PodSandboxAttributes,
    image: str,
    memory_limit: int | None,
    processes: int | None,
    ts: int,
) -> list[api_pb2.Metric]:
    """One container's metrics from its stats; labels as cAdvisor's for a kubelet container."""
    base = [
        c.attributes.metadata.name,
        c.attributes.id,
        image,
        c.attributes.id,
        pod.metadata.namespace,
        pod.metadata.name,
    ]
    out = []
    if c.cpu.HasField("usage_core_nano_seconds"):
        secs = c.cpu.usage_core_nano_seconds.value // 1_000_000_000
        out.append(_metric("container_cpu_usage_seconds_total", ts, base, secs))
    m = c.memory
    if m.HasField("working_set_bytes"):
        out.append(
            _metric("container_memory_working_set_bytes", ts, base, m.working_set_bytes.value)
        )
    if m.HasField("rss_bytes"):
        out.append(_metric("container_memory_rss", ts, base, m.rss_bytes.value))
    if m.HasField("usage_bytes"):
        out.append(_metric("container_memory_usage_bytes", ts, base, m.usage_bytes.value))
    if m.HasField("page_faults") and m.HasField("major_page_faults"):
        minor = m.page_faults.value - m.major_page_faults.value
        name = "container_memory_failures_total"
        out.append(_metric(name, ts, base, minor, "pgfault", "container"))
        out.append(_metric(name, ts, base, m.major_page_faults.value, "pgmajfault", "container"))
    if memory_limit is not None:
        out.append(_metric("container_spec_memory_limit_bytes", ts, base, memory_limit))
    w = c.writable_layer
    if w.HasField("used_bytes"):
        dev = w.fs_id.mountpoint
        out.append(_metric("container_fs_usage_bytes", ts, base, w.used_bytes.value, dev))
        out.append(_metric("container_fs_inodes_total", ts, base, w.inodes_used.value, dev))
    if processes is not None:
        out.append(_metric("container_processes", ts, base, processes))
    return out


def pod_network_metrics(p: api_pb2.PodSandboxStats, ts: int) -> list[api_pb2.Metric]:
    """Network counters per interface, labelled like cAdvisor's pod-level ("POD") series."""
    attrs = p.attributes
    base = ["POD", attrs.id, "", attrs.id, attrs.metadata.namespace, attrs.metadata.name]
    out = []
    for i in p.linux.network.interfaces:
        for name, value in (
            ("container_network_receive_bytes_total", i.rx_bytes.value),
            ("container_network_receive_errors_total", i.rx_errors.value),
            ("container_network_transmit_bytes_total", i.tx_bytes.value),
            ("container_network_transmit_errors_total", i.tx_errors.value),
        ):
            out.append(_metric(name, ts, base, value, i.name))
    return out


def pod_sandbox_metrics(stats: Any) -> list[api_pb2.PodSandboxMetrics]:
    """ListPodSandboxMetrics: every pod's network series and its containers' series."""
    out = []
    images = {r.id: r.image_name or r.image for r in stats.containers.all()}
    for rec in stats.pod_records(None):
        pod, samples = stats.sample_pod(rec)
        ts = time.time_ns()
        pm = api_pb2.PodSandboxMetrics(pod_sandbox_id=rec.id)
        pm.metrics.extend(pod_network_metrics(pod, ts))
        for s in samples:
            cid = s.stats.attributes.id
            pm.container_metrics.add(
                container_id=cid,
                metrics=container_metrics(
                    s.stats,
                    pod=pod.attributes,
                    image=images.get(cid, ""),
                    memory_limit=s.memory_limit,
                    processes=s.processes,
                    ts=ts,
                ),
            )
        out.append(pm)
    return out


# --- the server's own metrics (Prometheus) ---------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
    """ "host:port" (IPv6 in brackets) to a bind address; raises ValueError when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"metrics address {address!r} is not host:port")
    return host.strip("[]"), int(port)


class ServerMetrics:
    """The `pinnace cri` process's own metrics, in a registry of their own."""

    def __init__(self, containers: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.containers = containers
        self.registry = CollectorRegistry(auto_describe=True)
        self.rpc_duration = Histogram(
            "pinnace_cri_rpc_duration_seconds",
            "Time to answer a CRI call, by method and status code.",
            ("method", "code"),
            registry=self.registry,
        )
        self.oom_kills = Counter(
            "pinnace_cri_oom_kills",
            "Containers that ended killed by the OOM killer.",
            registry=self.registry,
        )
        self.image_pulls = Counter(
            "pinnace_cri_image_pulls",
            "PullImage calls, by result (success or failure).",
            ("result",),
            registry=self.registry,
        )
        self.registry.register(_ContainerStates(containers))
        self._counted_ooms: set[str] = set()
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.address = ""

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        """The hook cri.rpc calls after every call."""
        self.rpc_duration.labels(method, code).observe(seconds)
        if method == "PullImage":
            self.image_pulls.labels("success" if code == "OK" else "failure").inc()

    def container_event(self, cid: str, kind: str) -> None:
        """Count an OOM kill once, when the container's exit is first seen."""
        if kind != "stopped":
            return
        from cri.monitor import read_exit

        with contextlib.suppress(OSError, ValueError, KeyError):
            ex = read_exit(os.path.join(self.containers.dir, cid))
            if ex is not None and ex.oom_killed:
                with self._lock:
                    if cid in self._counted_ooms:
                        return
                    self._counted_ooms.add(cid)
                self.oom_kills.inc()

    def watch(self, containers: Any) -> None:
        """Chain onto the manager's event callback (it publishes to the EventHub too)."""
        before: Callable[[str, str], None] = containers.on_event

        def both(cid: str, kind: str) -> None:
            before(cid, kind)
            try:
                self.container_event(cid, kind)
            except Exception:  # metrics must never break a lifecycle call
                log.exception("metrics: container event %s %s", cid, kind)

        containers.on_event = both

    def start(self, address: str, run_dir: str) -> str:
        """Serve /metrics on `address`; the bound address goes to <run_dir>/metrics.addr."""
        from prometheus_client import start_http_server

        host, port = parse_address(address)
        self._server, self._thread = start_http_server(port, host, registry=self.registry)
        bound_host, bound_port = self._server.server_address[:2]
        self.address = (
            f"{bound_host}:{bound_port}"
            if ":" not in bound_host
            else (f"[{bound_host}]:{bound_port}")
        )
        path = os.path.join(run_dir, "metrics.addr")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.address + "\n")
        os.replace(tmp, path)
        return self.address

    def stop(self, run_dir: str) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(run_dir, "metrics.addr"))


class _ContainerStates:
    """pinnace_cri_containers{state}: read from the records at scrape time."""

    STATES = ("created", "running", "exited", "unknown")

    def __init__(self, containers: Any) -> None:
        self.containers = containers

    def describe(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        return [
            GaugeMetricFamily("pinnace_cri_containers", "Containers by state.", labels=["state"])
        ]

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        counts = dict.fromkeys(self.STATES, 0)
        try:
            for rec in self.containers.all():
                state = rec.state if rec.state in counts else "unknown"
                counts[state] += 1
        except Exception:  # a scrape must answer even if a record is unreadable
            log.exception("metrics: cannot list containers")
        g = GaugeMetricFamily("pinnace_cri_containers", "Containers by state.", labels=["state"])
        for state, n in counts.items():
            g.add_metric([state], n)
        yield g
