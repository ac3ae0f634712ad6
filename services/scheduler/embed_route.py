"""Embedding calls of a model pool: each goes whole to the connected worker with the fewest embeddings in flight.

Why beside the step loop rather than inside it: an embedding is one prefill-only forward pass whose KV is thrown
away at once. Inside the step plans it would need blocks allocated and freed in the same step, a sampling-free
output path and one plan round trip per batch, and it would buy nothing the worker does not already do: the
worker runs Embed calls on the same model thread as its steps, so a batch of inputs runs as one packed pass
between two steps, and an encoder pool (no KV cache, no generation) needs no step stream at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from flashstream.v1 import common_pb2, worker_pb2, worker_pb2_grpc

from services.common.errors import Unavailable
from services.common.grpc_server import error_from_rpc


@dataclass
class EmbedTarget:
    stub: worker_pb2_grpc.WorkerStub
    info: worker_pb2.WorkerInfo
    num_in_flight: int = 0


class EmbedRoute:
    def __init__(self, metadata: tuple[tuple[str, str], ...] | None = None) -> None:
        self.metadata = metadata  # sent on every call to a worker
        self.targets: dict[str, EmbedTarget] = {}

    def add(self, address: str, stub: worker_pb2_grpc.WorkerStub, info: worker_pb2.WorkerInfo) -> None:
        self.targets[address] = EmbedTarget(stub, info)

    def remove(self, address: str) -> None:
        self.targets.pop(address, None)

    @property
    def encoder_infos(self) -> list[worker_pb2.WorkerInfo]:
        """Infos of the embedding-only workers (encoders) connected now."""
        return [t.info for t in self.targets.values() if t.info.task == "embed"]

    async def embed(self, request: common_pb2.EmbedTokensRequest,
                    timeout_s: float | None = None) -> common_pb2.EmbedTokensResponse:
        if not self.targets:
            raise Unavailable("no worker is connected")
        target = min(self.targets.values(), key=lambda t: t.num_in_flight)
        target.num_in_flight += 1
        try:
            return await target.stub.Embed(request, timeout=timeout_s, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, f"worker {target.info.worker_id}") from None
        finally:
            target.num_in_flight -= 1
