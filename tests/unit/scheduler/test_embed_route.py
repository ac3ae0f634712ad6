"""Embedding calls go whole to the connected worker with the fewest in flight; a worker's status passes through."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from flashstream.v1 import common_pb2, worker_pb2

from services.common.errors import ErrorCode, FlashStreamError, Unavailable
from services.scheduler.embed_route import EmbedRoute


class _Stub:
    """Answers Embed after `release` is set, with one vector per input holding this stub's number."""

    def __init__(self, number: int, error: grpc.aio.AioRpcError | None = None) -> None:
        self.number = number
        self.error = error
        self.release = asyncio.Event()
        self.calls = 0

    async def Embed(self, request, timeout=None, metadata=None):  # noqa: ANN001, ANN201, N802 - the gRPC method name
        self.calls += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return common_pb2.EmbedTokensResponse(
            embeddings=[common_pb2.Embedding(values=[float(self.number)]) for _ in request.inputs])


def _request(n: int = 1) -> common_pb2.EmbedTokensRequest:
    return common_pb2.EmbedTokensRequest(inputs=[common_pb2.TokenIds(token_ids=[1, 2])] * n)


def test_calls_spread_over_workers_by_calls_in_flight() -> None:
    async def main() -> None:
        route = EmbedRoute()
        a, b = _Stub(1), _Stub(2)
        route.add("a", a, worker_pb2.WorkerInfo(task="embed"))
        route.add("b", b, worker_pb2.WorkerInfo(task="generate"))
        calls = [asyncio.create_task(route.embed(_request())) for _ in range(4)]
        await asyncio.sleep(0.01)
        assert (a.calls, b.calls) == (2, 2)
        a.release.set()
        b.release.set()
        replies = await asyncio.gather(*calls)
        assert sorted(r.embeddings[0].values[0] for r in replies) == [1.0, 1.0, 2.0, 2.0]
        assert [t.num_in_flight for t in route.targets.values()] == [0, 0]
        assert [i.task for i in route.encoder_infos] == ["embed"]

    asyncio.run(main())


def test_no_worker_is_unavailable_and_a_worker_error_keeps_its_code() -> None:
    async def main() -> None:
        route = EmbedRoute()
        with pytest.raises(Unavailable, match="no worker is connected"):
            await route.embed(_request())
        error = grpc.aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                     details="input 0 has no tokens")
        stub = _Stub(1, error)
        stub.release.set()
        route.add("a", stub, worker_pb2.WorkerInfo(task="embed", worker_id="w"))
        with pytest.raises(FlashStreamError, match="input 0 has no tokens") as err:
            await route.embed(_request())
        assert err.value.code == ErrorCode.INVALID_ARGUMENT
        route.remove("a")
        assert route.targets == {}

    asyncio.run(main())
