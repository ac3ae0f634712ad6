"""Discovery of the next stage's replicas: a pool follows a DNS name's addresses (a Kubernetes headless Service
lists one per ready pod), re-resolved every interval, so replicas join and leave without a restart. The scheduler
follows its workers this way, the gateway its tokenizers.

A failed resolution keeps the pool as it is: a DNS hiccup must not drain every replica.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

log = logging.getLogger(__name__)

Resolver = Callable[[str], Awaitable[list[str]]]


class Pool(Protocol):
    """Connections to replicas, one per address (the scheduler's WorkerPool, the gateway's TokenizerRouter)."""

    def set_addresses(self, addresses: Sequence[str]) -> None: ...


async def resolve_service(target: str) -> list[str]:
    """Every address of host in "host:port", as sorted "ip:port" ("[ip6]:port" for IPv6)."""
    host, _, port = target.rpartition(":")
    infos = await asyncio.get_running_loop().getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    addresses = set()
    for family, _, _, _, sockaddr in infos:
        ip = sockaddr[0]
        addresses.add(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    return sorted(addresses)


class AddressDiscovery:
    """Keeps `pool` at the static addresses plus those `service` resolves to."""

    def __init__(self, pool: Pool, static: Sequence[str], service: str, interval_s: float,
                 resolve: Resolver = resolve_service) -> None:
        self.pool = pool
        self.static = tuple(static)
        self.service = service
        self.interval_s = interval_s
        self._resolve = resolve
        self._task: asyncio.Task | None = None

    async def refresh(self) -> None:
        """Resolves once and applies the result (keeps the pool when resolution fails)."""
        try:
            found = await self._resolve(self.service)
        except OSError as exc:
            log.warning("cannot resolve %s (%s); keeping the pool as it is", self.service, exc)
            return
        self.pool.set_addresses([*self.static, *found])

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"discovery of {self.service}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
