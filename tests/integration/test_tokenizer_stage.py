"""The tokenizer stage over real gRPC, against a fake scheduler that answers with chosen token ids."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from flashstream.v1 import common_pb2, tokenizer_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.tokenizer.servicer import ENCODE_CHUNK
from services.tokenizer.tokenizer import TextTokenizer
from tests.unit.tokenizer.model_dirs import build_model_dir
from tests.unit.tokenizer.stage_harness import Harness, eventually, read_until_terminal, streamed_text, text_request

pytestmark = pytest.mark.timeout(60)

REPLY_TEXT = "東京の朝 👩‍👩‍👧‍👦 café 서울 🇯🇵 — the city sleeps. END here"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("stage") / "mistral", "mistral")


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> TextTokenizer:
    return TextTokenizer.from_dir(model_dir)


def test_streamed_text_equals_the_full_decode_byte_for_byte(model_dir: Path, tokenizer: TextTokenizer) -> None:
    reply = tokenizer.encode(REPLY_TEXT, add_special_tokens=False)

    async def main() -> None:
        async with Harness(model_dir, lambda r: reply, chunk_size=2) as h:
            call = h.stub.Connect()
            await call.write(tokenizer_pb2.TokenizerUp(requests=[text_request("a"), text_request("b", "東京")]))
            events, messages = await read_until_terminal(call, {"a", "b"})
            await call.done_writing()
            for rid in ("a", "b"):
                assert streamed_text(events[rid]).encode() == tokenizer.decode(reply).encode()
                assert [t for e in events[rid] for t in e.chunk.token_ids] == reply
                done = events[rid][-1].done
                assert done.finish_reason == common_pb2.FINISH_REASON_LENGTH
                assert (done.usage.completion_tokens, done.usage.cached_tokens) == (len(reply), 2)
                assert done.latency.gateway_s == 0.125 and done.latency.queue_s == 0.5 and done.latency.tokenizer_s > 0
            assert events["a"][0].num_prompt_tokens == len(tokenizer.encode("The river"))
            assert all(e.num_prompt_tokens == 0 for e in events["a"][1:])
            assert any(len({e.request_id for e in m.events}) == 2 for m in messages)  # both requests in one message
            assert len(h.fake.requests) == 2 and h.fake.num_streams == 1
            assert list(h.fake.requests[0].prompt_token_ids) == tokenizer.encode("The river")

    asyncio.run(main())


def test_stop_string_ends_with_stop_string_and_aborts_at_the_scheduler(model_dir: Path, tokenizer: TextTokenizer) -> None:
    reply = tokenizer.encode(REPLY_TEXT, add_special_tokens=False)

    async def main() -> None:
        async with Harness(model_dir, lambda r: reply) as h:
            call = h.stub.Connect()
            await call.write(tokenizer_pb2.TokenizerUp(requests=[
                text_request("s", stop=["sleeps", "nowhere"]),
                text_request("i", stop=["sleeps"], include_stop_str_in_output=True),
            ]))
            events, _ = await read_until_terminal(call, {"s", "i"})
            await call.done_writing()
            assert streamed_text(events["s"]) == "東京の朝 👩‍👩‍👧‍👦 café 서울 🇯🇵 — the city "
            assert streamed_text(events["i"]) == "東京の朝 👩‍👩‍👧‍👦 café 서울 🇯🇵 — the city sleeps"
            for rid in ("s", "i"):
                done = events[rid][-1].done
                assert done.finish_reason == common_pb2.FINISH_REASON_STOP_STRING and done.stop_string == "sleeps"
            assert sorted(h.fake.aborts) == ["1:i", "1:s"]
            assert all(len(r.prompt_token_ids) for r in h.fake.requests)

    asyncio.run(main())


def test_bad_prompts_get_errors_while_batch_mates_complete_and_sampling_is_trusted_as_sent(
        model_dir: Path, tokenizer: TextTokenizer) -> None:
    reply = tokenizer.encode("ok fine", add_special_tokens=False)

    async def main() -> None:
        async with Harness(model_dir, lambda r: reply, max_model_len=64) as h:
            call = h.stub.Connect()
            bad_model = text_request("model")
            bad_model.model = "other-model"
            bad_sampling = text_request("temp", max_tokens=8)
            bad_sampling.sampling.temperature = -1
            bad_tokens = tokenizer_pb2.TextRequest(request_id="ids", tokens=tokenizer_pb2.TokenInput(token_ids=[99999]))
            await call.write(tokenizer_pb2.TokenizerUp(requests=[
                text_request("good", max_tokens=8), text_request("empty", ""), text_request("long", "The river " * 40, 8),
                bad_model, bad_sampling, bad_tokens, text_request("stop", max_tokens=8, stop=[""]),
            ]))
            events, _ = await read_until_terminal(call, {"good", "empty", "long", "model", "temp", "ids", "stop"})
            await call.done_writing()
            assert streamed_text(events["good"]) == "ok fine"
            codes = {rid: (events[rid][-1].error.code, events[rid][-1].error.message)
                     for rid in ("empty", "long", "model", "ids", "stop")}
            # The gateway refuses an empty prompt, so one reaching this stage breaks the contract between them.
            assert codes["empty"] == (13, "request 'empty' came with an empty prompt, which the gateway refuses")
            assert codes["long"] == (3, "request 'long': prompt (82 tokens) plus max_tokens (8) exceeds the model's "
                                        "context of 64 tokens")
            assert codes["model"] == (3, "model 'other-model' is not served here; served models: ['fake-model']")
            assert codes["ids"] == (3, f"token ids out of the vocabulary (size {tokenizer.vocab_size}): [99999]")
            # An empty stop string would wedge the stage, so the broken contract is named rather than trusted.
            assert codes["stop"] == (13, "request 'stop' came with an empty stop string, which the gateway refuses")
            # Sampling was validated by the gateway: this stage passes it on unchecked.
            assert [r.request_id for r in h.fake.requests] == ["1:good", "1:temp"]
            assert h.fake.requests[1].sampling.temperature == -1

    asyncio.run(main())


def test_upstream_abort_is_forwarded_and_ends_with_abort(model_dir: Path, tokenizer: TextTokenizer) -> None:
    async def main() -> None:
        async with Harness(model_dir, lambda r: [300] * 10_000, step_s=0.005) as h:
            call = h.stub.Connect()
            await call.write(tokenizer_pb2.TokenizerUp(requests=[text_request("x")]))
            first = await call.read()
            assert first.events[0].request_id == "x"
            await call.write(tokenizer_pb2.TokenizerUp(abort_request_ids=["x"]))
            events, _ = await read_until_terminal(call, {"x"})
            done = events["x"][-1].done
            assert done.finish_reason == common_pb2.FINISH_REASON_ABORT
            streamed = [t for e in [*first.events, *events["x"]] if e.WhichOneof("event") == "chunk"
                        for t in e.chunk.token_ids]
            assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (
                len(tokenizer.encode("The river", add_special_tokens=True)), len(streamed))
            assert await eventually(lambda: bool(h.fake.aborts)) and h.fake.aborts == ["1:x"]
            await call.done_writing()

    asyncio.run(main())


def test_a_large_message_reaches_the_scheduler_in_encode_chunks_in_request_order(model_dir: Path) -> None:
    ids = [f"r{i}" for i in range(2 * ENCODE_CHUNK + 8)]

    async def main() -> None:
        async with Harness(model_dir, lambda r: [5]) as h:
            call = h.stub.Connect()
            await call.write(tokenizer_pb2.TokenizerUp(requests=[text_request(rid, max_tokens=1) for rid in ids]))
            events, _ = await read_until_terminal(call, set(ids))
            await call.done_writing()
            assert all(events[rid][-1].WhichOneof("event") == "done" for rid in ids)
            assert h.fake.up_sizes == [ENCODE_CHUNK, ENCODE_CHUNK, 8]
            assert [r.request_id for r in h.fake.requests] == [f"1:{rid}" for rid in ids]

    asyncio.run(main())


def test_same_request_id_on_two_streams_does_not_collide(model_dir: Path, tokenizer: TextTokenizer) -> None:
    async def main() -> None:
        async with Harness(model_dir, lambda r: tokenizer.encode(f"n{len(r.prompt_token_ids)}", False)) as h:
            one, two = h.stub.Connect(), h.stub.Connect()
            await one.write(tokenizer_pb2.TokenizerUp(requests=[text_request("r", "a")]))
            await two.write(tokenizer_pb2.TokenizerUp(requests=[text_request("r", "The river keeps moving")]))
            (ev1, _), (ev2, _) = await asyncio.gather(read_until_terminal(one, {"r"}), read_until_terminal(two, {"r"}))
            assert streamed_text(ev1["r"]) == f"n{len(tokenizer.encode('a'))}"
            assert streamed_text(ev2["r"]) == f"n{len(tokenizer.encode('The river keeps moving'))}"
            assert sorted(r.request_id for r in h.fake.requests) == ["1:r", "2:r"] and h.fake.num_streams == 1

    asyncio.run(main())


def test_closing_an_upstream_stream_aborts_its_requests(model_dir: Path) -> None:
    async def main() -> None:
        async with Harness(model_dir, lambda r: [300] * 10_000, step_s=0.005) as h:
            call = h.stub.Connect()
            await call.write(tokenizer_pb2.TokenizerUp(requests=[text_request("gone")]))
            await call.read()
            call.cancel()
            assert await eventually(lambda: bool(h.fake.aborts)) and h.fake.aborts == ["1:gone"]

    asyncio.run(main())


def test_info_reports_the_model_the_scheduler_serves_and_the_tokenizer_chat_template(model_dir: Path) -> None:
    async def main() -> None:
        async with Harness(model_dir, lambda r: []) as h:
            info = await h.stub.Info(tokenizer_pb2.TokenizerInfoRequest())
            assert (info.model_id, info.model_revision, info.max_model_len, info.vocab_size) == (
                "fake-model", "rev-1", 4096, 1024)
            assert info.has_chat_template and info.ready

    asyncio.run(main())


def test_health_and_reflection_list_the_tokenizer_service(model_dir: Path) -> None:
    async def main() -> None:
        async with Harness(model_dir, lambda r: []) as h:
            await asyncio.sleep(0.05)  # health follows the scheduler stream, set from a task
            health = health_pb2_grpc.HealthStub(h.channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service="flashstream.v1.Tokenizer"))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            refl = reflection_pb2_grpc.ServerReflectionStub(h.channel)
            call = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = [s.name async for r in call for s in r.list_services_response.service]
            assert "flashstream.v1.Tokenizer" in names and "grpc.health.v1.Health" in names

    asyncio.run(main())


def test_losing_the_scheduler_fails_in_flight_requests_with_unavailable(model_dir: Path) -> None:
    async def main() -> None:
        async with Harness(model_dir, lambda r: [300] * 10_000, step_s=0.005) as h:
            call = h.stub.Connect()
            await call.write(tokenizer_pb2.TokenizerUp(requests=[text_request("x")]))
            await call.read()
            await h.fake.stop()
            events, _ = await read_until_terminal(call, {"x"})
            assert events["x"][-1].error.code == grpc.StatusCode.UNAVAILABLE.value[0]
            assert not h.stage.ready()

    asyncio.run(main())


def test_a_chat_without_max_tokens_gets_what_the_context_leaves_and_a_full_context_is_refused(
        model_dir: Path, tokenizer: TextTokenizer) -> None:
    messages = [common_pb2.ChatMessage(role="user", content="Where is the river?")]
    rendered = tokenizer.render_chat([{"role": "user", "content": "Where is the river?"}])
    num_prompt = len(tokenizer.encode(rendered, add_special_tokens=False))

    def chat(request_id: str, content: str) -> tokenizer_pb2.TextRequest:
        req = tokenizer_pb2.TextRequest(request_id=request_id)  # sampling.max_tokens left unset
        req.sampling.fill_context = True
        req.chat.messages.extend([common_pb2.ChatMessage(role="user", content=content)])
        req.chat.add_generation_prompt = True
        return req

    async def main() -> None:
        async with Harness(model_dir, lambda r: [5, 6], max_model_len=num_prompt + 40) as h:
            call = h.stub.Connect()
            too_long = "river " * 60
            await call.write(tokenizer_pb2.TokenizerUp(requests=[chat("fits", messages[0].content),
                                                                 chat("full", too_long)]))
            events, _ = await read_until_terminal(call, {"fits", "full"})
            await call.done_writing()
            # The scheduler gets a number and no fill_context: it never needs to know the prompt's room.
            assert [(r.sampling.max_tokens, r.sampling.fill_context, r.sampling.HasField("max_tokens"))
                    for r in h.fake.requests] == [(40, False, True)]
            assert events["fits"][-1].done.finish_reason == common_pb2.FINISH_REASON_LENGTH
            error = events["full"][-1].error
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            num_full = len(tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": too_long}]),
                                            add_special_tokens=False))
            assert error.message == (f"request 'full': the prompt ({num_full} tokens) leaves no room in the model's "
                                     f"context of {num_prompt + 40} tokens")

    asyncio.run(main())


def test_a_prompt_whose_ids_the_model_lacks_is_refused_here_and_never_reaches_the_scheduler(
        model_dir: Path, tokenizer: TextTokenizer) -> None:
    ids = tokenizer.encode("The river")
    model_vocab_size = max(ids)  # a model one row short of the prompt's largest id

    async def main() -> None:
        async with Harness(model_dir, lambda r: [5], vocab_size=model_vocab_size) as h:
            call = h.stub.Connect()
            given = tokenizer_pb2.TextRequest(request_id="given", tokens=tokenizer_pb2.TokenInput(token_ids=ids))
            given.sampling.max_tokens = 4
            await call.write(tokenizer_pb2.TokenizerUp(requests=[text_request("encoded"), given,
                                                                 text_request("fits", "a", add_special_tokens=False)]))
            events, _ = await read_until_terminal(call, {"encoded", "given", "fits"})
            await call.done_writing()
            for rid in ("encoded", "given"):
                error = events[rid][-1].error
                assert (error.code, error.message) == (
                    3, f"token ids out of the vocabulary (size {model_vocab_size}): [{model_vocab_size}]")
            assert [r.request_id for r in h.fake.requests] == ["1:fits"]

    asyncio.run(main())
