"""The gRPC servicers: thin handlers over the RPC families, wrapped once.

Handlers look the request over and delegate (``cri.sandboxes``,
``cri.containers``, ``cri.exec``, ``cri.stats``).  Cross-cutting work --
logging each call, turning domain errors into gRPC status codes -- is done by
:func:`instrument`, applied once to each servicer class, as containerd's
``instrumented_service`` does.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from cri import containers, execs, metrics, pod_metrics, sandboxes, stats
from cri.api import api_pb2, api_pb2_grpc
from cri.errors import to_grpc_status
from cri.images.service import ImageService
from cri.runtime import RUNTIME_NAME, RUNTIME_VERSION, Runtime

log = logging.getLogger("rktlet.cri")

CRI_API_VERSION = "v1"

_C = TypeVar("_C")


def instrument(cls: type[_C]) -> type[_C]:
    """Wrap every RPC of a servicer: log it, and map exceptions to status codes."""
    for name, method in list(vars(cls).items()):
        if name.startswith("_") or not callable(method):
            continue
        if inspect.isasyncgenfunction(method):
            setattr(cls, name, _wrap_stream(name, method))
        elif inspect.iscoroutinefunction(method):
            setattr(cls, name, _wrap_unary(name, method))
    return cls


def _wrap_unary(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            response = await method(self, request, context)
        except grpc.aio.AbortError:
            code_of = getattr(context, "code", None)
            aborted = code_of() if callable(code_of) else None
            _observe(name, self, None, getattr(aborted, "name", "UNKNOWN"), started)
            raise
        except Exception as exc:
            code, message = to_grpc_status(exc)
            _observe(name, self, None, code.name, started)
            level = logging.ERROR if code == grpc.StatusCode.UNKNOWN else logging.INFO
            log.log(
                level,
                "%s failed: %s: %s",
                name,
                code.name,
                message,
                exc_info=code == grpc.StatusCode.UNKNOWN,
            )
            await context.abort(code, message)
        elapsed = _observe(name, self, response, "OK", started)
        log.debug("%s ok in %.1f ms", name, elapsed * 1000)
        return response

    return wrapper


def _observe(name: str, servicer: Any, response: Any, code: str, started: float) -> float:
    """Record a finished unary call's latency (and image pulls) in the metrics."""
    elapsed = time.perf_counter() - started
    metrics.observe_call(name, code, elapsed)
    if name == "PullImage":
        metrics.observe_pull(servicer, response, code, elapsed)
    return elapsed


def _wrap_stream(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in method(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = to_grpc_status(exc)
            log.info("%s failed: %s: %s", name, code.name, message)
            await context.abort(code, message)

    return wrapper


@instrument
class RuntimeServicer(api_pb2_grpc.RuntimeServiceServicer):  # type: ignore[misc]
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def Version(self, request: api_pb2.VersionRequest, context: Any) -> Any:
        return api_pb2.VersionResponse(
            version="0.1.0",
            runtime_name=RUNTIME_NAME,
            runtime_version=RUNTIME_VERSION,
            runtime_api_version=CRI_API_VERSION,
        )

    async def Status(self, request: api_pb2.StatusRequest, context: Any) -> Any:
        return await self.rt.status(request.verbose)

    async def RuntimeConfig(self, request: api_pb2.RuntimeConfigRequest, context: Any) -> Any:
        driver = (
            api_pb2.CgroupDriver.SYSTEMD
            if self.rt.config.cgroup_driver == "systemd"
            else api_pb2.CgroupDriver.CGROUPFS
        )
        return api_pb2.RuntimeConfigResponse(
            linux=api_pb2.LinuxRuntimeConfiguration(cgroup_driver=driver)
        )

    async def UpdateRuntimeConfig(
        self, request: api_pb2.UpdateRuntimeConfigRequest, context: Any
    ) -> Any:
        cidr = request.runtime_config.network_config.pod_cidr
        if cidr:
            self.rt.store.set_setting("pod_cidr", cidr)
        return api_pb2.UpdateRuntimeConfigResponse()

    # -- sandboxes -----------------------------------------------------------------

    async def RunPodSandbox(self, request: Any, context: Any) -> Any:
        return await sandboxes.run(self.rt, request)

    async def StopPodSandbox(self, request: Any, context: Any) -> Any:
        return await sandboxes.stop(self.rt, request)

    async def RemovePodSandbox(self, request: Any, context: Any) -> Any:
        return await sandboxes.remove(self.rt, request)

    async def PodSandboxStatus(self, request: Any, context: Any) -> Any:
        return await sandboxes.status(self.rt, request)

    async def ListPodSandbox(self, request: Any, context: Any) -> Any:
        return await sandboxes.list_(self.rt, request)

    async def UpdatePodSandboxResources(self, request: Any, context: Any) -> Any:
        return await sandboxes.update_resources(self.rt, request)

    # -- containers ----------------------------------------------------------------

    async def CreateContainer(self, request: Any, context: Any) -> Any:
        return await containers.create(self.rt, request)

    async def StartContainer(self, request: Any, context: Any) -> Any:
        return await containers.start(self.rt, request)

    async def StopContainer(self, request: Any, context: Any) -> Any:
        return await containers.stop(self.rt, request)

    async def RemoveContainer(self, request: Any, context: Any) -> Any:
        return await containers.remove(self.rt, request)

    async def ListContainers(self, request: Any, context: Any) -> Any:
        return await containers.list_(self.rt, request)

    async def ContainerStatus(self, request: Any, context: Any) -> Any:
        return await containers.status(self.rt, request)

    async def UpdateContainerResources(self, request: Any, context: Any) -> Any:
        return await containers.update_resources(self.rt, request)

    async def ReopenContainerLog(self, request: Any, context: Any) -> Any:
        return await containers.reopen_log(self.rt, request)

    async def CheckpointContainer(self, request: Any, context: Any) -> Any:
        return await containers.checkpoint(self.rt, request)

    async def GetContainerEvents(
        self, request: Any, context: Any
    ) -> AsyncIterator[api_pb2.ContainerEventResponse]:
        queue = self.rt.events.subscribe()
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self.rt.events.unsubscribe(queue)

    # -- exec, attach, port-forward --------------------------------------------------

    async def ExecSync(self, request: Any, context: Any) -> Any:
        return await execs.exec_sync(self.rt, request)

    async def Exec(self, request: Any, context: Any) -> Any:
        return await execs.exec_url(self.rt, request)

    async def Attach(self, request: Any, context: Any) -> Any:
        return await execs.attach_url(self.rt, request)

    async def PortForward(self, request: Any, context: Any) -> Any:
        return await execs.port_forward_url(self.rt, request)

    # -- stats -----------------------------------------------------------------------

    async def ContainerStats(self, request: Any, context: Any) -> Any:
        return await stats.container_stats(self.rt, request)

    async def ListContainerStats(self, request: Any, context: Any) -> Any:
        return await stats.list_container_stats(self.rt, request)

    async def PodSandboxStats(self, request: Any, context: Any) -> Any:
        return await stats.pod_sandbox_stats(self.rt, request)

    async def ListPodSandboxStats(self, request: Any, context: Any) -> Any:
        return await stats.list_pod_sandbox_stats(self.rt, request)

    async def ListMetricDescriptors(self, request: Any, context: Any) -> Any:
        return await pod_metrics.list_metric_descriptors(self.rt, request)

    async def ListPodSandboxMetrics(self, request: Any, context: Any) -> Any:
        return await pod_metrics.list_pod_sandbox_metrics(self.rt, request)


@instrument
class ImageServicer(api_pb2_grpc.ImageServiceServicer):  # type: ignore[misc]
    def __init__(self, images: ImageService) -> None:
        self.images = images

    async def ListImages(self, request: Any, context: Any) -> Any:
        return await self.images.ListImages(request, context)

    async def ImageStatus(self, request: Any, context: Any) -> Any:
        return await self.images.ImageStatus(request, context)

    async def PullImage(self, request: Any, context: Any) -> Any:
        return await self.images.PullImage(request, context)

    async def RemoveImage(self, request: Any, context: Any) -> Any:
        return await self.images.RemoveImage(request, context)

    async def ImageFsInfo(self, request: Any, context: Any) -> Any:
        return await self.images.ImageFsInfo(request, context)
