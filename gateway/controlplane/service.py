"""The control plane as the shared start-up runs it: a watch per service, Envoy's
certificate (when it has one), one ADS server."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from envoy.service.discovery.v3 import ads_pb2, ads_pb2_grpc

from gateway.controlplane import secrets
from gateway.controlplane.config import ControlPlaneConfig
from gateway.controlplane.consul_watch import ServiceWatch
from gateway.controlplane.resources import Endpoint, load_assignment
from gateway.controlplane.xds import AggregatedDiscovery, Snapshot
from services.common.tls import CertificateFiles


class ControlPlane:
    name = "controlplane"
    service_names = (ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name,)
    interceptors = ()

    def __init__(self, config: ControlPlaneConfig) -> None:
        self.snapshot = Snapshot()
        self._watches = [
            ServiceWatch(config.consul_access(config.watch_consul_http), cluster, self._publish)
            for cluster in config.cluster_names
        ]
        self._tasks: list[asyncio.Task[None]] = []
        self._certificate = (
            CertificateFiles(config.envoy_tls_dir) if config.envoy_tls_dir is not None else None
        )

    def _publish(self, cluster: str, endpoints: list[Endpoint]) -> None:
        self.snapshot.set(cluster, load_assignment(cluster, endpoints))

    def register(self, server: grpc.aio.Server) -> None:
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
            AggregatedDiscovery(self.snapshot), server
        )

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(w.run()) for w in self._watches]
        if self._certificate is not None:
            self._tasks.append(
                asyncio.create_task(secrets.watch(self._certificate, self.snapshot.set))
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def create(config: ControlPlaneConfig) -> ControlPlane:
    return ControlPlane(config)
