"""Logprob bytes and text offsets through the official `openai` client, on a model whose tokenizer falls back to
bytes (sentencepiece-style, Mistral / Llama 2): the whole stack on loopback, checked against transformers'
tokenizer on the token ids the gRPC API reports for the same seeded request."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import openai
import pytest
from flashstream.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from services.launcher import Stack
from tests.integration.stack_fixture import running_stack
from tests.unit.tokenizer.model_dirs import build_model_dir

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

PROMPT = "快速的棕色狐狸 jumps"
SAMPLING = {"max_tokens": 40, "temperature": 1.0, "seed": 5}
_BYTE_PIECE = re.compile(r"^<0x([0-9A-F]{2})>$")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama whose vocabulary is a byte-fallback BPE (256 <0xNN> tokens among 500)."""
    import torch
    import transformers

    folder = build_model_dir(tmp_path_factory.mktemp("model") / "bytes", "mistral")
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(folder)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).to(torch.float32).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def stack(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(model_dir, tmp_path_factory.mktemp("logs")) as running:
        yield running


@pytest.fixture(scope="module")
def hf_tokenizer(model_dir: Path):
    import transformers

    return transformers.PreTrainedTokenizerFast.from_pretrained(model_dir)


def _token_ids(stack: Stack, chat: bool) -> list[int]:
    """The ids of the seeded answer (a completion of PROMPT, or a chat of one user turn), from the gRPC API."""
    options = gateway_pb2.GenerateOptions(sampling=common_pb2.SamplingParams(
        max_tokens=SAMPLING["max_tokens"], temperature=SAMPLING["temperature"], seed=SAMPLING["seed"],
        ignore_eos=True))
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        if chat:
            messages = [common_pb2.ChatMessage(role="user", content=PROMPT)]
            replies = stub.Chat(gateway_pb2.ChatRequest(model="flashstream-demo", messages=messages,
                                                        options=options), timeout=120)
        else:
            replies = stub.Generate(gateway_pb2.GenerateRequest(model="flashstream-demo", prompt=PROMPT,
                                                                add_special_tokens=True, options=options), timeout=120)
        return [i for m in replies if m.HasField("chunk") for i in m.chunk.token_ids]


def _expected_bytes(hf_tokenizer, token_id: int) -> bytes:
    piece = hf_tokenizer.convert_ids_to_tokens(token_id)
    match = _BYTE_PIECE.match(piece)
    return bytes([int(match.group(1), 16)]) if match else piece.replace("\u2581", " ").encode()


def test_logprob_bytes_are_each_tokens_own_bytes_and_text_offsets_count_the_characters_before_it(
        stack: Stack, hf_tokenizer) -> None:
    ids = _token_ids(stack, chat=False)
    chat_ids = _token_ids(stack, chat=True)
    assert sum(_BYTE_PIECE.match(p) is not None for p in hf_tokenizer.convert_ids_to_tokens(ids)) >= 3, ids
    with openai.OpenAI(base_url=stack.gateway_http + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
        chat = client.chat.completions.create(
            model="flashstream-demo", messages=[{"role": "user", "content": PROMPT}], logprobs=True, top_logprobs=2,
            extra_body={"ignore_eos": True}, **SAMPLING)
        completion = client.completions.create(model="flashstream-demo", prompt=PROMPT, logprobs=0,
                                               extra_body={"ignore_eos": True}, **SAMPLING)
    content = chat.choices[0].logprobs.content
    assert [bytes(item.bytes) for item in content] == [_expected_bytes(hf_tokenizer, i) for i in chat_ids]
    for item in content:
        assert item.token == bytes(item.bytes).decode("utf-8", "replace")
        for top in item.top_logprobs:
            assert top.token == bytes(top.bytes).decode("utf-8", "replace")
    logprobs = completion.choices[0].logprobs
    assert [t.encode("utf-8", "replace") if "\ufffd" not in t else None for t in logprobs.tokens] == [
        _expected_bytes(hf_tokenizer, i) if "\ufffd" not in _expected_bytes(hf_tokenizer, i).decode(
            "utf-8", "replace") else None for i in ids]
    prompt_ids = hf_tokenizer(PROMPT).input_ids
    prompt_text = hf_tokenizer.decode(prompt_ids)
    assert completion.choices[0].text == hf_tokenizer.decode(prompt_ids + ids)[len(prompt_text):]
    checked = 0
    for i, offset in enumerate(logprobs.text_offset):
        before = hf_tokenizer.decode(prompt_ids + ids[:i])
        if not before.endswith("\ufffd"):  # the token starts a character: the reference is exact there
            assert offset == len(before) - len(prompt_text), (i, ids[:i + 1])
            checked += 1
    assert checked >= len(ids) // 2
