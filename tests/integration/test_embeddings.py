"""/v1/embeddings and Gateway.Embed end to end on real stages with the real all-MiniLM-L6-v2 folder: vectors equal
to sentence-transformers', the embedding cache per input, per tenant, and a decoder model served beside it."""

from __future__ import annotations

import asyncio
import base64

import aiohttp
import numpy as np
import openai
import pytest
import torch
from flashstream.v1 import gateway_pb2, gateway_pb2_grpc

from services.common.grpc_server import create_channel
from services.demo.build import build_demo_model
from tests.integration.embedding_stack import embedding_stack
from tests.minilm import minilm_folder

pytestmark = pytest.mark.slow
MODEL = "all-MiniLM-L6-v2"
TEXTS = ["hello world", "A man is eating food.", "Embeddings map text to vectors.", "hello world again",
         "The quick brown fox"]


@pytest.fixture(scope="module")
def st_model():  # noqa: ANN201
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_folder()), device="cpu")


def _client(http: str, api_key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=http + "/v1", api_key=api_key, max_retries=0, timeout=30)


def test_openai_client_gets_sentence_transformers_vectors_then_cached_ones(st_model) -> None:  # noqa: ANN001
    expected = st_model.encode(TEXTS, convert_to_tensor=True)

    async def main() -> None:
        async with embedding_stack([(minilm_folder(), MODEL)]) as stack:
            client = _client(stack.http)
            first = await client.embeddings.create(model=MODEL, input=TEXTS[:3])
            assert [d.index for d in first.data] == [0, 1, 2]
            torch.testing.assert_close(torch.tensor([d.embedding for d in first.data]), expected[:3], rtol=0,
                                       atol=1e-5)
            assert [d.model_extra["cached"] for d in first.data] == [False, False, False]
            ids = st_model.tokenizer(TEXTS)["input_ids"]
            assert (first.usage.prompt_tokens, first.usage.total_tokens) == (sum(map(len, ids[:3])),) * 2
            # 5 inputs, 3 of them cached: 2 computed, answered in input order.
            second = await client.embeddings.create(model=MODEL, input=TEXTS)
            assert [d.model_extra["cached"] for d in second.data] == [True, True, True, False, False]
            torch.testing.assert_close(torch.tensor([d.embedding for d in second.data]), expected, rtol=0, atol=1e-5)
            await client.close()
            async with aiohttp.ClientSession() as http:
                async with http.get(stack.http + "/metrics") as resp:
                    text = await resp.text()
            labels = f'{{model="{MODEL}",stage="gateway"}}'
            assert f'flashstream_embedding_cache_hits_total{labels} 3.0' in text
            assert f'flashstream_embedding_cache_misses_total{labels} 5.0' in text

    asyncio.run(main())


def test_base64_token_ids_dimensions_and_cache_false_over_http(st_model) -> None:  # noqa: ANN001
    async def main() -> None:
        async with embedding_stack([(minilm_folder(), MODEL)]) as stack:
            client = _client(stack.http)
            floats = await client.embeddings.create(model=MODEL, input="hello world", encoding_format="float")
            packed = await client.embeddings.with_raw_response.create(
                model=MODEL, input="hello world", encoding_format="base64")
            raw = packed.http_response.json()["data"][0]["embedding"]
            decoded = np.frombuffer(base64.b64decode(raw), dtype="<f4")
            assert decoded.tolist() == floats.data[0].embedding
            ids = st_model.tokenizer(["hello world"])["input_ids"][0]
            by_ids = await client.embeddings.create(model=MODEL, input=ids)
            assert by_ids.data[0].embedding == floats.data[0].embedding
            assert by_ids.data[0].model_extra["cached"] is True  # the same token ids: the same entry
            cut = await client.embeddings.create(model=MODEL, input=[ids, ids[:2]], dimensions=8)
            assert [len(d.embedding) for d in cut.data] == [8, 8]
            full = np.array(floats.data[0].embedding, dtype=np.float32)
            unnormalised = await client.embeddings.create(model=MODEL, input="hello world",
                                                          extra_body={"normalize": False, "cache": False})
            expected = np.array(unnormalised.data[0].embedding[:8])
            np.testing.assert_allclose(cut.data[0].embedding, expected / np.linalg.norm(expected), atol=1e-6)
            assert abs(float(np.linalg.norm(full)) - 1.0) < 1e-5
            fresh = await client.embeddings.create(model=MODEL, input="hello world", extra_body={"cache": False})
            assert fresh.data[0].model_extra["cached"] is False
            await client.close()

    asyncio.run(main())


def test_over_long_input_is_a_400_unless_truncation_is_asked(st_model) -> None:  # noqa: ANN001
    long_text = "word " * 300
    expected = st_model.encode([long_text], convert_to_tensor=True)

    async def main() -> None:
        async with embedding_stack([(minilm_folder(), MODEL)]) as stack:
            client = _client(stack.http)
            with pytest.raises(openai.BadRequestError) as err:
                await client.embeddings.create(model=MODEL, input=["short", long_text])
            assert "input 1 has 302 tokens, more than the model's embedding limit 256" in str(err.value)
            cut = await client.embeddings.create(model=MODEL, input=long_text, extra_body={"truncate": True})
            torch.testing.assert_close(torch.tensor(cut.data[0].embedding), expected[0], rtol=0, atol=1e-5)
            assert cut.usage.prompt_tokens == 256
            with pytest.raises(openai.BadRequestError, match="dimensions must be between 1 and 384"):
                await client.embeddings.create(model=MODEL, input="x", dimensions=385)
            with pytest.raises(openai.BadRequestError, match="token ids out of the vocabulary"):
                await client.embeddings.create(model=MODEL, input=[[1, 2, 99999]])
            await client.close()

    asyncio.run(main())


def test_two_api_keys_never_share_a_cached_vector() -> None:
    async def main() -> None:
        async with embedding_stack([(minilm_folder(), MODEL)], api_keys=("key-a", "key-b")) as stack:
            a, b = _client(stack.http, "key-a"), _client(stack.http, "key-b")
            first_a = await a.embeddings.create(model=MODEL, input="shared text")
            again_a = await a.embeddings.create(model=MODEL, input="shared text")
            first_b = await b.embeddings.create(model=MODEL, input="shared text")
            assert [r.data[0].model_extra["cached"] for r in (first_a, again_a, first_b)] == [False, True, False]
            assert first_b.data[0].embedding == first_a.data[0].embedding
            await a.close()
            await b.close()

    asyncio.run(main())


def test_grpc_embed_and_a_decoder_served_beside_the_encoder(tmp_path) -> None:  # noqa: ANN001
    demo = build_demo_model(tmp_path / "demo")

    async def main() -> None:
        async with embedding_stack([(minilm_folder(), MODEL), (demo, "demo")]) as stack:
            async with create_channel(stack.grpc_target) as channel:
                stub = gateway_pb2_grpc.GatewayStub(channel)
                reply = await stub.Embed(gateway_pb2.EmbedRequest(model=MODEL, inputs=["hello world", "hi"]))
                assert [len(v.values) for v in reply.data] == [384, 384]
                assert [v.cached for v in reply.data] == [False, False]
                assert reply.usage.prompt_tokens == 4 + 3
                again = await stub.Embed(gateway_pb2.EmbedRequest(model=MODEL, inputs=["hi"], bypass_cache=True))
                assert again.data[0].cached is False  # computed again, alone rather than in a batch of two
                np.testing.assert_allclose(again.data[0].values, reply.data[1].values, rtol=0, atol=1e-6)
                decoder = await stub.Embed(gateway_pb2.EmbedRequest(model="demo", inputs=["hello"]))
                assert len(decoder.data[0].values) == stack.workers[1].servicer.engine.info.model.hidden_size
                chunks = [c async for c in stub.Generate(gateway_pb2.GenerateRequest(model="demo", prompt="Hi"))]
                assert chunks[-1].WhichOneof("event") == "done"
                with pytest.raises(Exception) as err:  # noqa: PT011 - the status is checked below
                    [c async for c in stub.Generate(gateway_pb2.GenerateRequest(model=MODEL, prompt="Hi"))]
                assert err.value.code().name == "INVALID_ARGUMENT"
                assert "is an embedding model" in err.value.details()
                with pytest.raises(Exception) as err:  # noqa: PT011
                    await stub.Embed(gateway_pb2.EmbedRequest(model=MODEL, inputs=["a " * 600]))
                assert err.value.code().name == "INVALID_ARGUMENT"

    asyncio.run(main())
