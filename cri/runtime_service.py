"""The CRI RuntimeService: kubelet's calls translated into the sandbox and container managers.

Every method is `@rpc`: CRIError subclasses become their status codes, and the
blocking work (forks through the zygote, mounts, the runtime library) runs on
worker threads so one slow create never stalls other clients.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc

from cri.api import api_pb2, api_pb2_grpc
from cri.containers import ContainerManager
from cri.errors import InvalidArgument, Unimplemented
from cri.events import EventHub
from cri.rpc import blocking, rpc, rpc_stream

RUNTIME_NAME = "pinnace"
RUNTIME_API_VERSION = "v1"
HANDLERS = ("", "pinnace")  # the default handler and its name; both are the same runtime
STREAMING_LATER = "the streaming server (exec/attach/port-forward) is not built yet (issue 8)"


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pinnace")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _recursive_read_only_supported() -> bool:
    """rro needs mount_setattr(2) with AT_RECURSIVE: Linux 5.12."""
    from runtime.features import kernel_version

    return kernel_version() >= (5, 12)


class RuntimeService(api_pb2_grpc.RuntimeServiceServicer):
    def __init__(
        self,
        sandboxes: Any,  # cri.sandbox.SandboxManager
        containers: ContainerManager,
        events: EventHub,
        *,
        stats: Any = None,  # cri.stats.Stats, when built
        streaming: Any = None,  # cri.streaming.server.StreamingServer
    ) -> None:
        self.sandboxes = sandboxes
        self.containers = containers
        self.events = events
        self.stats = stats
        self.streaming = streaming
        self.pod_cidr = ""
        self._rro = _recursive_read_only_supported()

    # -- the runtime ---------------------------------------------------------------

    @rpc
    async def Version(self, request: Any, context: Any) -> api_pb2.VersionResponse:
        return api_pb2.VersionResponse(
            version="0.1.0",
            runtime_name=RUNTIME_NAME,
            runtime_version=_version(),
            runtime_api_version=RUNTIME_API_VERSION,
        )

    @rpc
    async def Status(self, request: Any, context: Any) -> api_pb2.StatusResponse:
        resp = api_pb2.StatusResponse()
        resp.status.conditions.add(type="RuntimeReady", status=True)
        ready, why = await blocking(self.sandboxes.network.status)
        resp.status.conditions.add(
            type="NetworkReady",
            status=ready,
            reason="" if ready else "NetworkPluginNotReady",
            message=why,
        )
        for name in HANDLERS:
            h = resp.runtime_handlers.add(name=name)
            h.features.recursive_read_only_mounts = self._rro
            h.features.user_namespaces = False  # idmapped rootfs is not built yet
        if request.verbose:
            resp.info["config"] = json.dumps({"pod_cidr": self.pod_cidr, "handlers": HANDLERS})
        return resp

    @rpc
    async def RuntimeConfig(self, request: Any, context: Any) -> api_pb2.RuntimeConfigResponse:
        resp = api_pb2.RuntimeConfigResponse()
        resp.linux.cgroup_driver = api_pb2.CGROUPFS
        return resp

    @rpc
    async def UpdateRuntimeConfig(
        self, request: api_pb2.UpdateRuntimeConfigRequest, context: Any
    ) -> api_pb2.UpdateRuntimeConfigResponse:
        self.pod_cidr = request.runtime_config.network_config.pod_cidr
        return api_pb2.UpdateRuntimeConfigResponse()

    # -- pod sandboxes -----------------------------------------------------------------

    @rpc
    async def RunPodSandbox(
        self, request: api_pb2.RunPodSandboxRequest, context: Any
    ) -> api_pb2.RunPodSandboxResponse:
        rec = await blocking(self.sandboxes.run, request.config, request.runtime_handler)
        return api_pb2.RunPodSandboxResponse(pod_sandbox_id=rec.id)

    @rpc
    async def StopPodSandbox(
        self, request: api_pb2.StopPodSandboxRequest, context: Any
    ) -> api_pb2.StopPodSandboxResponse:
        await blocking(self._stop_sandbox, request.pod_sandbox_id)
        return api_pb2.StopPodSandboxResponse()

    def _stop_sandbox(self, sid: str) -> None:
        from cri.errors import NotFound

        try:
            rec = self.sandboxes.get(sid)
        except NotFound:
            return  # idempotent: kubelet stops pods that are already gone
        for c in self.containers.of_sandbox(rec.id):
            self.containers.stop(c.id, 0)
        self.sandboxes.stop(rec.id)

    @rpc
    async def RemovePodSandbox(
        self, request: api_pb2.RemovePodSandboxRequest, context: Any
    ) -> api_pb2.RemovePodSandboxResponse:
        await blocking(self._remove_sandbox, request.pod_sandbox_id)
        return api_pb2.RemovePodSandboxResponse()

    def _remove_sandbox(self, sid: str) -> None:
        from cri.errors import NotFound

        try:
            rec = self.sandboxes.get(sid)
        except NotFound:
            return
        for c in self.containers.of_sandbox(rec.id):
            self.containers.remove(c.id)
        self.sandboxes.stop(rec.id)
        self.sandboxes.remove(rec.id)

    @rpc
    async def PodSandboxStatus(
        self, request: api_pb2.PodSandboxStatusRequest, context: Any
    ) -> api_pb2.PodSandboxStatusResponse:
        resp: api_pb2.PodSandboxStatusResponse = await blocking(
            self.sandboxes.status, request.pod_sandbox_id, request.verbose
        )
        if request.verbose:
            # kubelet's evented PLEG reads the containers' statuses with the pod's
            cs = await blocking(self.containers.of_sandbox, resp.status.id)
            resp.containers_statuses.extend(self.containers.to_status(c) for c in cs)
        return resp

    @rpc
    async def ListPodSandbox(
        self, request: api_pb2.ListPodSandboxRequest, context: Any
    ) -> api_pb2.ListPodSandboxResponse:
        items = await blocking(self._list_sandboxes, request)
        return api_pb2.ListPodSandboxResponse(items=items)

    def _list_sandboxes(self, request: Any) -> list[api_pb2.PodSandbox]:
        flt = request.filter if request.HasField("filter") else None
        return [self.sandboxes.to_proto(r) for r in self.sandboxes.list(flt)]

    @rpc_stream
    async def StreamPodSandboxes(
        self, request: api_pb2.StreamPodSandboxesRequest, context: Any
    ) -> AsyncIterator[api_pb2.StreamPodSandboxesResponse]:
        items = await blocking(self._list_sandboxes, request)
        yield api_pb2.StreamPodSandboxesResponse(pod_sandboxes=items)

    @rpc
    async def UpdatePodSandboxResources(self, request: Any, context: Any) -> Any:
        raise Unimplemented(
            "pod-level resources are not supported: Pinnace applies resources per container"
        )

    # -- containers -------------------------------------------------------------------

    @rpc
    async def CreateContainer(
        self, request: api_pb2.CreateContainerRequest, context: Any
    ) -> api_pb2.CreateContainerResponse:
        sb_cfg = request.sandbox_config if request.HasField("sandbox_config") else None
        cid = await blocking(self.containers.create, request.pod_sandbox_id, request.config, sb_cfg)
        return api_pb2.CreateContainerResponse(container_id=cid)

    @rpc
    async def StartContainer(
        self, request: api_pb2.StartContainerRequest, context: Any
    ) -> api_pb2.StartContainerResponse:
        await blocking(self.containers.start, request.container_id)
        return api_pb2.StartContainerResponse()

    @rpc
    async def StopContainer(
        self, request: api_pb2.StopContainerRequest, context: Any
    ) -> api_pb2.StopContainerResponse:
        if request.timeout < 0:
            raise InvalidArgument("timeout must not be negative", subject="timeout")
        await blocking(self.containers.stop, request.container_id, float(request.timeout))
        return api_pb2.StopContainerResponse()

    @rpc
    async def RemoveContainer(
        self, request: api_pb2.RemoveContainerRequest, context: Any
    ) -> api_pb2.RemoveContainerResponse:
        if not request.container_id:
            raise InvalidArgument("container id is empty", subject="container_id")
        await blocking(self.containers.remove, request.container_id)
        return api_pb2.RemoveContainerResponse()

    @rpc
    async def ContainerStatus(
        self, request: api_pb2.ContainerStatusRequest, context: Any
    ) -> api_pb2.ContainerStatusResponse:
        resp: api_pb2.ContainerStatusResponse = await blocking(
            self.containers.status, request.container_id, request.verbose
        )
        return resp

    @rpc
    async def ListContainers(
        self, request: api_pb2.ListContainersRequest, context: Any
    ) -> api_pb2.ListContainersResponse:
        flt = request.filter if request.HasField("filter") else None
        items = await blocking(self.containers.find, flt)
        return api_pb2.ListContainersResponse(containers=items)

    @rpc_stream
    async def StreamContainers(
        self, request: api_pb2.StreamContainersRequest, context: Any
    ) -> AsyncIterator[api_pb2.StreamContainersResponse]:
        flt = request.filter if request.HasField("filter") else None
        items = await blocking(self.containers.find, flt)
        yield api_pb2.StreamContainersResponse(containers=items)

    @rpc
    async def UpdateContainerResources(
        self, request: api_pb2.UpdateContainerResourcesRequest, context: Any
    ) -> api_pb2.UpdateContainerResourcesResponse:
        if not request.HasField("linux"):
            raise InvalidArgument("linux resources are required", subject="linux")
        await blocking(self.containers.update_resources, request.container_id, request.linux)
        return api_pb2.UpdateContainerResourcesResponse()

    @rpc
    async def ReopenContainerLog(
        self, request: api_pb2.ReopenContainerLogRequest, context: Any
    ) -> api_pb2.ReopenContainerLogResponse:
        await blocking(self.containers.reopen_log, request.container_id)
        return api_pb2.ReopenContainerLogResponse()

    @rpc
    async def ExecSync(
        self, request: api_pb2.ExecSyncRequest, context: Any
    ) -> api_pb2.ExecSyncResponse:
        if request.timeout < 0:
            raise InvalidArgument("timeout must not be negative", subject="timeout")
        out, err, code = await blocking(
            self.containers.exec_sync, request.container_id, list(request.cmd), request.timeout
        )
        return api_pb2.ExecSyncResponse(stdout=out, stderr=err, exit_code=code)

    @rpc
    async def Exec(self, request: api_pb2.ExecRequest, context: Any) -> api_pb2.ExecResponse:
        from cri.streaming.tokens import EXEC

        if not request.cmd:
            raise InvalidArgument("cmd is empty", subject="cmd")
        rec = await self._streamable(request, "exec")
        url = self._register(
            EXEC,
            container_id=rec.id,
            cmd=tuple(request.cmd),
            tty=request.tty,
            stdin=request.stdin,
            stdout=request.stdout,
            stderr=request.stderr,
        )
        return api_pb2.ExecResponse(url=url)

    @rpc
    async def Attach(self, request: api_pb2.AttachRequest, context: Any) -> api_pb2.AttachResponse:
        from cri.errors import FailedPrecondition
        from cri.streaming.tokens import ATTACH

        rec = await self._streamable(request, "attach")
        if request.stdin and not rec.config_proto().stdin:
            raise FailedPrecondition(
                "cannot attach stdin: the container was not created with stdin", subject=rec.id
            )
        url = self._register(
            ATTACH,
            container_id=rec.id,
            tty=request.tty,
            stdin=request.stdin,
            stdout=request.stdout,
            stderr=request.stderr,
        )
        return api_pb2.AttachResponse(url=url)

    @rpc
    async def PortForward(
        self, request: api_pb2.PortForwardRequest, context: Any
    ) -> api_pb2.PortForwardResponse:
        from cri.errors import FailedPrecondition
        from cri.streaming.tokens import PORTFORWARD

        self._need_streaming()
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is empty", subject="pod_sandbox_id")
        for port in request.port:
            if not 1 <= port <= 65535:
                raise InvalidArgument(f"port {port} is out of range 1-65535", subject="port")
        sb = await blocking(self.sandboxes.get, request.pod_sandbox_id)
        if sb.state != "ready":
            raise FailedPrecondition(f"pod sandbox is {sb.state}, not ready", subject=sb.id)
        url = self._register(
            PORTFORWARD, sandbox_id=sb.id, netns=sb.netns, ports=tuple(request.port)
        )
        return api_pb2.PortForwardResponse(url=url)

    def _need_streaming(self) -> Any:
        if self.streaming is None:
            raise Unimplemented(STREAMING_LATER)
        return self.streaming

    async def _streamable(self, request: Any, what: str) -> Any:
        """The running container an exec/attach request names, its stdio flags checked
        as kubelet checks them."""
        from cri.errors import FailedPrecondition

        self._need_streaming()
        if not request.container_id:
            raise InvalidArgument("container id is empty", subject="container_id")
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument(
                f"{what}: one of stdin, stdout, or stderr must be set", subject=request.container_id
            )
        if request.tty and request.stderr:
            raise InvalidArgument(
                f"{what}: tty and stderr cannot both be true (a terminal merges them)",
                subject=request.container_id,
            )
        rec = await blocking(self.containers.get, request.container_id)
        if rec.state != "running":
            raise FailedPrecondition(f"container is {rec.state}, not running", subject=rec.id)
        return rec

    def _register(self, kind: str, **fields: Any) -> str:
        from cri.errors import Unavailable
        from cri.streaming.tokens import StreamRequest, TokenTableFull

        try:
            url: str = self._need_streaming().register(StreamRequest(kind, **fields))
        except TokenTableFull as exc:
            raise Unavailable(str(exc)) from None
        return url

    @rpc
    async def CheckpointContainer(self, request: Any, context: Any) -> Any:
        raise Unimplemented("checkpointing needs CRIU, which Pinnace does not drive")

    # -- stats and metrics ---------------------------------------------------------------

    def _need_stats(self) -> Any:
        if self.stats is None:
            raise Unimplemented("container stats are not built yet (issue 8)")
        return self.stats

    @rpc
    async def ContainerStats(
        self, request: api_pb2.ContainerStatsRequest, context: Any
    ) -> api_pb2.ContainerStatsResponse:
        s = self._need_stats()
        return await blocking(s.container_stats, request.container_id)

    @rpc
    async def ListContainerStats(
        self, request: api_pb2.ListContainerStatsRequest, context: Any
    ) -> api_pb2.ListContainerStatsResponse:
        s = self._need_stats()
        flt = request.filter if request.HasField("filter") else None
        return await blocking(s.list_container_stats, flt)

    @rpc_stream
    async def StreamContainerStats(self, request: Any, context: Any) -> AsyncIterator[Any]:
        s = self._need_stats()
        flt = request.filter if request.HasField("filter") else None
        listed = await blocking(s.list_container_stats, flt)
        yield api_pb2.StreamContainerStatsResponse(container_stats=listed.stats)

    @rpc
    async def PodSandboxStats(
        self, request: api_pb2.PodSandboxStatsRequest, context: Any
    ) -> api_pb2.PodSandboxStatsResponse:
        s = self._need_stats()
        return await blocking(s.pod_sandbox_stats, request.pod_sandbox_id)

    @rpc
    async def ListPodSandboxStats(
        self, request: api_pb2.ListPodSandboxStatsRequest, context: Any
    ) -> api_pb2.ListPodSandboxStatsResponse:
        s = self._need_stats()
        flt = request.filter if request.HasField("filter") else None
        return await blocking(s.list_pod_sandbox_stats, flt)

    @rpc_stream
    async def StreamPodSandboxStats(self, request: Any, context: Any) -> AsyncIterator[Any]:
        s = self._need_stats()
        flt = request.filter if request.HasField("filter") else None
        listed = await blocking(s.list_pod_sandbox_stats, flt)
        yield api_pb2.StreamPodSandboxStatsResponse(pod_sandbox_stats=listed.stats)

    @rpc
    async def ListMetricDescriptors(
        self, request: Any, context: Any
    ) -> api_pb2.ListMetricDescriptorsResponse:
        from cri.metrics import list_descriptors

        self._need_stats()
        return list_descriptors()

    @rpc
    async def ListPodSandboxMetrics(
        self, request: Any, context: Any
    ) -> api_pb2.ListPodSandboxMetricsResponse:
        from cri.metrics import pod_sandbox_metrics

        items = await blocking(pod_sandbox_metrics, self._need_stats())
        return api_pb2.ListPodSandboxMetricsResponse(pod_metrics=items)

    @rpc_stream
    async def StreamPodSandboxMetrics(
        self, request: Any, context: Any
    ) -> AsyncIterator[api_pb2.StreamPodSandboxMetricsResponse]:
        from cri.metrics import pod_sandbox_metrics

        items = await blocking(pod_sandbox_metrics, self._need_stats())
        yield api_pb2.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=items)

    # -- events ---------------------------------------------------------------------------

    async def GetContainerEvents(
        self, request: api_pb2.GetEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.ContainerEventResponse]:
        """Every container event to every subscriber; one too slow to keep up is ended
        with RESOURCE_EXHAUSTED rather than silently skipped (it must re-list)."""
        sub = self.events.subscribe()
        try:
            while True:
                item = await sub.get()
                if item is None:
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "this subscriber fell behind and missed events; list and resubscribe",
                    )
                    return
                cid, kind, ts = item
                yield await blocking(self._event, cid, kind, ts)
        finally:
            self.events.unsubscribe(sub)

    def _event(self, cid: str, kind: str, ts: int) -> api_pb2.ContainerEventResponse:
        from cri.errors import CRIError

        ev = api_pb2.ContainerEventResponse(
            container_id=cid,
            container_event_type=_EVENT_TYPES[kind],
            created_at=ts,
        )
        with contextlib.suppress(CRIError, OSError):
            rec = self.containers.get(cid)
            ev.containers_statuses.append(self.containers.to_status(rec))
            sb = self.sandboxes.status(rec.sandbox_id, False)
            ev.pod_sandbox_status.CopyFrom(sb.status)
        return ev


_EVENT_TYPES = {
    "created": api_pb2.CONTAINER_CREATED_EVENT,
    "started": api_pb2.CONTAINER_STARTED_EVENT,
    "stopped": api_pb2.CONTAINER_STOPPED_EVENT,
    "deleted": api_pb2.CONTAINER_DELETED_EVENT,
}
