"""`pinnace cri`: wire the managers together, recover from disk, serve CRI v1 on a unix socket.

Start-up order matters: the zygote is spawned before gRPC starts its threads
(it is a fresh interpreter anyway), recovery runs before the socket accepts
a call, and the socket is created with a umask that makes it root-only from
its first instant (no window in which it is world-connectable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from cri.api import api_pb2_grpc
from cri.config import CRIConfig

log = logging.getLogger("pinnace.cri")


@dataclass
class Node:
    """The parts of a running CRI server, so tests and the CLI can reach them."""

    config: CRIConfig
    zygote: Any
    store: Any
    sandboxes: Any
    containers: Any
    events: Any
    runtime_service: Any
    image_service: Any
    recovered: list[str]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.zygote.close()
        with contextlib.suppress(Exception):
            self.store.close()


def build(cfg: CRIConfig) -> Node:
    """Make every part and recover the state an earlier server left."""
    from cri.containers import ContainerDeps, ContainerManager
    from cri.events import EventHub
    from cri.image_service import ImageService
    from cri.runtime_service import RuntimeService
    from cri.sandbox import SandboxManager
    from cri.zygote import Zygote
    from images.store import ImageStore

    for d in (cfg.state_dir, cfg.run_dir, cfg.runtime_root):
        os.makedirs(d, mode=0o700, exist_ok=True)
    zygote = Zygote.start()
    try:
        store = ImageStore(cfg.image_root)
        recovered = [f"image store: {r}" for r in _store_recovery(store)]
        sandboxes = SandboxManager(
            cfg.state_dir,
            cfg.run_dir,
            default_cgroup_parent=cfg.cgroup_parent,
            pod_init=zygote.spawn_pod_init,
            pod_namespaces=zygote.setup_pod_namespaces,
            network=network_driver(cfg),
        )

        def sandbox_context(sid: str) -> tuple[Any, Any]:
            rec = sandboxes.get(sid)
            return rec, sandboxes.context(rec.id)

        events = EventHub(cfg.events_queue)
        containers = ContainerManager(
            cfg.state_dir,
            cfg.run_dir,
            ContainerDeps(
                runtime_root=cfg.runtime_root,
                spawn_monitor=zygote.spawn_monitor,
                sandbox_context=sandbox_context,
                store=store,
                seccomp_root=cfg.seccomp_root,
                exec_output_limit=cfg.exec_output_limit,
            ),
        )
        recovered += [f"sandbox {r}" for r in sandboxes.recover()]
        recovered += [f"container {r}" for r in containers.recover()]
        containers.on_event = events.publish
        stats = _stats(sandboxes, containers, store)
        from cri.streaming.server import StreamingServer

        streaming = StreamingServer(
            cfg.stream_address, cfg.stream_port, containers, sandboxes, cfg.runtime_root
        )
        runtime_service = RuntimeService(
            sandboxes, containers, events, stats=stats, streaming=streaming
        )
        image_service = ImageService(
            store,
            registry_config_dir=cfg.registry_config_dir,
            in_use=containers.image_in_use,
        )
    except BaseException:
        zygote.close()
        raise
    return Node(
        cfg, zygote, store, sandboxes, containers, events, runtime_service, image_service, recovered
    )


def network_driver(cfg: CRIConfig) -> Any:
    """The pod network driver the settings name (cri/network/)."""
    if cfg.network == "bridge":
        from cri.network.bridge import BridgeDriver

        return BridgeDriver(
            os.path.join(cfg.state_dir, "network"),
            cidr=cfg.pod_cidr,
            cidr_v6=cfg.pod_cidr_v6,
            bridge=cfg.bridge,
            node_netns=cfg.node_netns,
            nft_table=cfg.nft_table,
        )
    if cfg.network == "cni":
        from cri.network.cni import CNIDriver

        return CNIDriver(
            os.path.join(cfg.state_dir, "cni"),
            conf_dir=cfg.cni_conf_dir,
            bin_dirs=tuple(cfg.cni_bin_dirs),
            node_netns=cfg.node_netns,
        )
    from cri.network.driver import NoNetwork

    return NoNetwork()


def _store_recovery(store: Any) -> list[str]:
    report = store.recover()
    return [] if report.empty else [repr(report)]


def _stats(sandboxes: Any, containers: Any, store: Any) -> Any:
    """The stats and pod metrics RPCs' implementation (cri/stats.py)."""
    from cri.stats import Stats

    return Stats(sandboxes, containers, store)


def _start_metrics(cfg: CRIConfig, node: Node) -> Any:
    """The server's own Prometheus metrics: RPC timing always, /metrics unless disabled."""
    from cri import rpc
    from cri.metrics import ServerMetrics

    metrics = ServerMetrics(node.containers)
    metrics.watch(node.containers)
    rpc.observer = metrics.observe_rpc
    if cfg.metrics_address:
        addr = metrics.start(cfg.metrics_address, cfg.run_dir)
        log.info("serving Prometheus metrics on http://%s/metrics", addr)
    return metrics


def _claim_socket(path: str) -> None:
    """Remove a stale socket a killed server left; refuse if a live server answers on it."""
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a leftover
        return
    finally:
        probe.close()
    raise SystemExit(f"pinnace cri: another server is listening on {path}")


async def serve(cfg: CRIConfig, *, ready: Callable[[Node], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; containers keep running after it returns."""
    node = await asyncio.to_thread(build, cfg)
    try:
        metrics = _start_metrics(cfg, node)
    except (OSError, ValueError) as exc:
        node.close()
        raise SystemExit(
            f"pinnace cri: cannot serve metrics on {cfg.metrics_address}: {exc}"
        ) from None
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 16 << 20),
            ("grpc.max_send_message_length", 16 << 20),
        ]
    )
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(node.runtime_service, server)  # type: ignore[no-untyped-call]
    api_pb2_grpc.add_ImageServiceServicer_to_server(node.image_service, server)  # type: ignore[no-untyped-call]
    streaming = node.runtime_service.streaming
    try:
        await streaming.start()
    except OSError as exc:
        with contextlib.suppress(Exception):
            metrics.stop(cfg.run_dir)
        node.close()
        raise SystemExit(
            f"pinnace cri: cannot serve streams on {cfg.stream_address}:{cfg.stream_port}: {exc}"
        ) from None
    path = cfg.socket_path
    _claim_socket(path)
    old = os.umask(0o177)  # the socket is born 0600
    try:
        server.add_insecure_port(f"unix:{path}")
        await server.start()
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    for line in node.recovered:
        log.info("recovered: %s", line)
    log.info("serving CRI v1 on unix:%s", path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready(node)
    try:
        await stop.wait()
    finally:
        await server.stop(grace=5)
        await streaming.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        metrics.stop(cfg.run_dir)
        node.close()
        log.info("stopped; containers keep running under their monitors")


def main(config_path: str | None) -> int:
    from cri.errors import CRIError

    try:
        cfg = CRIConfig.load(config_path)
    except CRIError as exc:
        print(f"pinnace cri: {exc}", file=sys.stderr, flush=True)
        return 2
    logging.basicConfig(
        level=getattr(logging, cfg.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if os.geteuid() != 0:
        print(
            "pinnace cri: must run as root (it creates namespaces, mounts and cgroups)",
            file=sys.stderr,
        )
        return 1
    asyncio.run(serve(cfg))
    return 0
