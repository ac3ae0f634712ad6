"""The gateway's tokenizer client over real gRPC: one stream, batched up-messages, aborts, reconnect."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.schema import Finished, GenerationRequest, Submission, TextDelta
from gateway.tokenizer_client import ConnectionConfig, TokenizerRouter
from services.common.errors import Unavailable
from services.common.sampling import SamplingParams
from tests.integration.fake_tokenizer import FAKE_CHUNKS, start_fake_tokenizer, wait_until


def _submission(request_id: str, prompt: str = "Hi") -> Submission:
    now = time.time()
    request = GenerationRequest(model="fake-model", prompt=prompt, sampling=SamplingParams())
    return Submission(request_id, request, now, now + 60, 0.001)


async def _drain(handle: object) -> list[object]:
    events = []
    while True:
        events.append(await handle.next())  # type: ignore[attr-defined]
        if not isinstance(events[-1], TextDelta):
            return events


def test_requests_and_aborts_of_one_loop_turn_share_one_up_message() -> None:
    async def main() -> None:
        server, fake, port = await start_fake_tokenizer()
        router = TokenizerRouter([f"127.0.0.1:{port}"], ConnectionConfig(info_interval_s=5.0))
        router.start()
        try:
            await wait_until(lambda: router.ready)
            handles = [router.forward(_submission(f"r{i}", "hang")) for i in range(5)]
            await wait_until(lambda: len(fake.requests) == 5)
            assert fake.num_up_messages == 1
            handles[1].abort()
            handles[3].abort()
            await wait_until(lambda: len(fake.aborts) == 2)
            assert (fake.num_up_messages, fake.aborts) == (2, ["r1", "r3"])
            # Aborted before it was sent: it never reaches the tokenizer.
            early = router.forward(_submission("early"))
            early.abort()
            done = await _drain(router.forward(_submission("late")))
            assert [e.text for e in done[:-1]] == list(FAKE_CHUNKS) and isinstance(done[-1], Finished)
            assert [r.request_id for r in fake.requests][5:] == ["late"]
            assert fake.num_streams == 1
        finally:
            await router.close()
            await server.stop(None)

    asyncio.run(main())


def test_a_broken_stream_fails_its_requests_with_unavailable_then_reconnects() -> None:
    async def main() -> None:
        server, fake, port = await start_fake_tokenizer()
        config = ConnectionConfig(info_interval_s=5.0, reconnect_min_s=0.05, reconnect_max_s=0.1)
        router = TokenizerRouter([f"127.0.0.1:{port}"], config)
        router.start()
        try:
            await wait_until(lambda: router.ready)
            pending = router.forward(_submission("r0", "hang"))
            await wait_until(lambda: len(fake.requests) == 1)
            await fake.break_streams()
            error = await pending.next()
            assert isinstance(error, Unavailable) and "lost the tokenizer stream" in error.message
            await wait_until(lambda: fake.num_streams == 2 and router.ready)
            events = await _drain(router.forward(_submission("r1")))
            assert isinstance(events[-1], Finished)
        finally:
            await router.close()
            await server.stop(None)

    asyncio.run(main())


def test_no_ready_tokenizer_means_unavailable_at_once() -> None:
    async def main() -> None:
        router = TokenizerRouter(["127.0.0.1:1"], ConnectionConfig(reconnect_min_s=0.05, reconnect_max_s=0.1))
        router.start()
        try:
            await asyncio.sleep(0.1)
            assert not router.ready and router.cards() == []
            with pytest.raises(Unavailable) as err:
                router.forward(_submission("r0"))
            assert err.value.message == "no tokenizer for model 'fake-model' is ready; retry shortly"
        finally:
            await router.close()

    asyncio.run(main())
