"""The official `openai` Python client against the gateway's HTTP API."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.integration.fake_tokenizer import FAKE_CHUNKS, gateway_stack


def _client(http: str, api_key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=http + "/v1", api_key=api_key, max_retries=0, timeout=10)


def test_openai_client_completions_whole_and_streamed() -> None:
    async def main() -> None:
        async with gateway_stack() as stack:
            client = _client(stack.http)
            reply = await client.completions.create(model="fake-model", prompt="Hi", max_tokens=5, seed=3)
            assert reply.choices[0].text == "Hello, world!"
            assert reply.choices[0].finish_reason == "stop"
            assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (7, 5, 12)
            stream = await client.completions.create(model="fake-model", prompt="Hi", max_tokens=5, stream=True)
            texts = [chunk.choices[0].text async for chunk in stream]
            assert "".join(texts) == "".join(FAKE_CHUNKS) and texts[-1] == ""
            await client.close()

    asyncio.run(main())


def test_openai_client_chat_whole_and_streamed_with_usage() -> None:
    async def main() -> None:
        async with gateway_stack() as stack:
            client = _client(stack.http)
            messages = [{"role": "user", "content": "Hi"}]
            reply = await client.chat.completions.create(model="fake-model", messages=messages, max_tokens=5)
            assert reply.choices[0].message.role == "assistant"
            assert reply.choices[0].message.content == "Hello, world!"
            assert reply.usage.prompt_tokens_details.cached_tokens == 3
            stream = await client.chat.completions.create(
                model="fake-model", messages=messages, stream=True, stream_options={"include_usage": True})
            chunks = [chunk async for chunk in stream]
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello, world!"
            assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
            await client.close()

    asyncio.run(main())


def test_openai_client_sees_openai_errors() -> None:
    async def main() -> None:
        async with gateway_stack() as stack:
            client = _client(stack.http)
            with pytest.raises(openai.NotFoundError) as not_found:
                await client.completions.create(model="gpt-9", prompt="Hi")
            assert not_found.value.code == "model_not_found"
            with pytest.raises(openai.BadRequestError) as bad:
                await client.completions.create(model="fake-model", prompt="Hi", max_tokens=0)
            assert bad.value.param == "max_tokens"
            models = await client.models.list()
            assert [m.id for m in models.data] == ["fake-model"]
            await client.close()

    asyncio.run(main())


def test_openai_client_with_api_key() -> None:
    async def main() -> None:
        async with gateway_stack(api_keys=("k1", "k2")) as stack:
            with pytest.raises(openai.AuthenticationError):
                await _client(stack.http, "wrong").completions.create(model="fake-model", prompt="Hi")
            client = _client(stack.http, "k2")
            reply = await client.completions.create(model="fake-model", prompt="Hi")
            assert reply.choices[0].text == "Hello, world!"
            await client.close()

    asyncio.run(main())
