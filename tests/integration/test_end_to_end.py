"""The four stages as real processes on loopback: streamed text equals the model run directly in-process."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from flashstream.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from services.demo import build_demo_model
from services.launcher import Stack, python_path_env
from tests.integration.stack_fixture import running_stack, stage_logs

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

PROMPTS = [
    "Once upon a time",
    "The scheduler keeps the cache in fixed blocks",
    "快速的棕色狐狸",
    "a",
    "Der schnelle braune Fuchs springt über den faulen Hund. Grüße aus München",
    "def step(batch): return",
    "Emoji also travel through the stream: 👋🏽",
    "When the cache is full, the newest sequence waits and is recomputed later. Short answers leave at once.",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("model") / "demo")


@pytest.fixture(scope="module")
def stack(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("logs")
    with running_stack(model_dir, log_dir) as running:
        running.log_dir = log_dir
        yield running


@pytest.fixture(scope="module")
def hf_model(model_dir: Path):
    """The checkpoint's tokenizer and model in transformers, in this process (float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoTokenizer.from_pretrained(model_dir),
            AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval())


@pytest.fixture(scope="module")
def reference(hf_model):
    """Greedy text and finish reason from transformers on the same checkpoint, in this process."""
    import torch

    tokenizer, model = hf_model

    def generate(prompt: str, max_tokens: int) -> tuple[str, list[int], str]:
        """(text, token ids without a final EOS, finish reason name)."""
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.eos_token_id)
        new = out[0, ids.shape[1]:].tolist()
        if new and new[-1] == tokenizer.eos_token_id:
            return tokenizer.decode(new[:-1]), new[:-1], "FINISH_REASON_EOS"
        return tokenizer.decode(new), new, "FINISH_REASON_LENGTH"

    generate.num_prompt_tokens = lambda prompt: len(tokenizer(prompt).input_ids)
    return generate


def _grpc_generate(address: str, prompt: str, max_tokens: int) -> tuple[list[str], list[int], gateway_pb2.GenerateChunk]:
    request = gateway_pb2.GenerateRequest(
        model="flashstream-demo", prompt=prompt, add_special_tokens=True,
        options=gateway_pb2.GenerateOptions(sampling=common_pb2.SamplingParams(max_tokens=max_tokens)))
    texts, ids, done = [], [], None
    with grpc.insecure_channel(address) as channel:
        for message in gateway_pb2_grpc.GatewayStub(channel).Generate(request, timeout=120):
            if message.HasField("chunk"):
                texts.append(message.chunk.text)
                ids.extend(message.chunk.token_ids)
            else:
                assert done is None, "two terminal events"
                done = message
    assert done is not None, "no terminal event"
    return texts, ids, done


def _http(stack: Stack, method: str, path: str, body: bytes | None = None) -> http.client.HTTPResponse:
    host, port = stack.gateway_http.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    return conn.getresponse()


def test_grpc_stream_equals_transformers_greedy_output_byte_for_byte(stack: Stack, reference) -> None:
    expected_text, expected_ids, expected_finish = reference(PROMPTS[0], 32)
    texts, ids, done = _grpc_generate(stack.gateway_grpc, PROMPTS[0], 32)
    assert ids == expected_ids, stage_logs(stack.log_dir)
    assert "".join(texts).encode() == expected_text.encode()
    assert common_pb2.FinishReason.Name(done.done.finish_reason) == expected_finish
    assert done.done.usage.completion_tokens == len(expected_ids) + (expected_finish == "FINISH_REASON_EOS")
    assert done.done.usage.prompt_tokens == reference.num_prompt_tokens(PROMPTS[0])


def test_http_sse_stream_equals_transformers_greedy_output_and_ends_with_done(stack: Stack, reference) -> None:
    prompt = PROMPTS[1]
    expected_text, _, expected_finish = reference(prompt, 24)
    body = json.dumps({"model": "flashstream-demo", "prompt": prompt, "max_tokens": 24, "temperature": 0,
                       "stream": True, "skip_special_tokens": False}).encode()
    response = _http(stack, "POST", "/v1/completions", body)
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/event-stream")
    events = [line[len("data: "):] for line in response.read().decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text.encode() == expected_text.encode()
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == ["stop" if expected_finish == "FINISH_REASON_EOS" else "length"]


def test_non_streamed_http_completion_returns_the_same_text_and_usage(stack: Stack, reference) -> None:
    prompt = PROMPTS[2]
    expected_text, expected_ids, _ = reference(prompt, 16)
    body = json.dumps({"model": "flashstream-demo", "prompt": prompt, "max_tokens": 16, "temperature": 0,
                       "skip_special_tokens": False}).encode()
    response = _http(stack, "POST", "/v1/completions", body)
    payload = json.loads(response.read())
    assert response.status == 200, payload
    assert payload["object"] == "text_completion"
    assert payload["choices"][0]["text"].encode() == expected_text.encode()
    assert payload["usage"]["completion_tokens"] >= len(expected_ids)


def test_eight_concurrent_requests_of_different_lengths_each_get_their_full_correct_stream(
        stack: Stack, reference) -> None:
    lengths = [5, 40, 12, 1, 33, 8, 25, 17]
    expected = [reference(p, n) for p, n in zip(PROMPTS, lengths)]
    results: list = [None] * len(PROMPTS)

    def run(i: int) -> None:
        results[i] = _grpc_generate(stack.gateway_grpc, PROMPTS[i], lengths[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    for i, (texts, ids, done) in enumerate(results):
        expected_text, expected_ids, expected_finish = expected[i]
        assert ids == expected_ids, f"request {i}"
        assert "".join(texts).encode() == expected_text.encode(), f"request {i}"
        assert common_pb2.FinishReason.Name(done.done.finish_reason) == expected_finish, f"request {i}"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b'{"model": "flashstream-demo", "prompt": "", "max_tokens": 4}', 400, "prompt"),
        (b'{"model": "flashstream-demo", "prompt": "hi", "max_tokens": 0}', 400, "max_tokens"),
        (b'{"model": "flashstream-demo", "prompt": "hi", "max_tokens": 100000}', 400, "max_tokens"),
        (b'{"model": "no-such-model", "prompt": "hi", "max_tokens": 4}', 404, "no-such-model"),
        (b'{"model": "flashstream-demo", "prompt": "hi", "max_tokens": 4', 400, "JSON"),
    ],
)
def test_bad_http_input_gets_an_openai_style_error_and_the_stack_keeps_serving(
        stack: Stack, body: bytes, status: int, fragment: str) -> None:
    response = _http(stack, "POST", "/v1/completions", body)
    payload = json.loads(response.read())
    assert response.status == status
    assert set(payload) == {"error"}
    assert fragment.lower() in payload["error"]["message"].lower()
    assert payload["error"]["type"] == "invalid_request_error"
    _, ids, done = _grpc_generate(stack.gateway_grpc, PROMPTS[3], 3)
    assert done.done.usage.completion_tokens == 3 or done.done.finish_reason == common_pb2.FINISH_REASON_EOS


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "model"),
    [("", 4, "flashstream-demo"), ("hi", 0, "flashstream-demo"), ("hi", 100000, "flashstream-demo"),
     ("hi", 4, "no-such-model")],
)
def test_bad_grpc_input_gets_invalid_argument(stack: Stack, prompt: str, max_tokens: int,
                                                             model: str) -> None:
    request = gateway_pb2.GenerateRequest(
        model=model, prompt=prompt,
        options=gateway_pb2.GenerateOptions(sampling=common_pb2.SamplingParams(max_tokens=max_tokens)))
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        with pytest.raises(grpc.RpcError) as info:
            list(gateway_pb2_grpc.GatewayStub(channel).Generate(request, timeout=60))
    expected = grpc.StatusCode.NOT_FOUND if model == "no-such-model" else grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.code() == expected
    assert info.value.details()


def test_the_readme_grpc_client_example_runs_against_the_stack(stack: Stack, capsys: pytest.CaptureFixture) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0].replace("127.0.0.1:50050", stack.gateway_grpc), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"finish: FINISH_REASON_(LENGTH|EOS) tokens: \d+", out), out


def test_every_stage_serves_metrics_health_and_ready(stack: Stack) -> None:
    for path in ("/health", "/ready"):
        assert _http(stack, "GET", path).status == 200
    metrics = _http(stack, "GET", "/metrics").read().decode()
    assert "flashstream_time_to_first_token_seconds_bucket" in metrics
    for stage in stack.stages[:-1]:
        status_port = int(stage.argv[stage.argv.index("--status-port") + 1])
        for path in ("/metrics", "/health", "/ready"):
            conn = http.client.HTTPConnection("127.0.0.1", status_port, timeout=10)
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read().decode()
            assert response.status == 200, (stage.name, path, body)
            if path == "/metrics":
                assert "# TYPE flashstream_" in body, stage.name


def test_flashstream_generate_streams_the_answer_and_ends_with_ttft_and_tokens_per_second(
        stack: Stack, reference) -> None:
    expected_text, expected_ids, expected_finish = reference(PROMPTS[0], 12)
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "generate", PROMPTS[0], "--gateway", stack.gateway_grpc,
         "--max-tokens", "12"],
        capture_output=True, text=True, env=python_path_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    body, _, stats = out.stdout.rpartition("\n\n")
    assert body == PROMPTS[0] + expected_text
    finish = expected_finish.removeprefix("FINISH_REASON_")
    assert re.fullmatch(rf"\[{len(expected_ids)} tokens, finish {finish}, TTFT \d+\.\d ms, \d+\.\d tokens/s\]\n",
                        stats), stats


def test_a_translation_session_streams_each_segment_in_order_as_transformers_translates_the_conversation(
        stack: Stack, hf_model) -> None:
    """Three segments on one Translate call: segment i's text equals transformers' greedy continuation of the chat
    holding the earlier segments and translations, and its prompt reuses the previous segment's cached blocks."""
    import torch

    tokenizer, model = hf_model
    segments = ["Guten Morgen, wie geht es dir heute?", "Mir geht es gut, danke.", "Und dir?"]
    max_tokens = 12
    messages = [{"role": "system", "content": "Translate the German text the user sends into English. "
                                              "Reply with the translation alone."}]
    expected, previous_tokens = [], None
    for text in segments:
        messages.append({"role": "user", "content": text})
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt = tokenizer(rendered, add_special_tokens=False).input_ids
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
        new = out[0, len(prompt):].tolist()
        answer = tokenizer.decode(new[:-1] if new[-1] == tokenizer.eos_token_id else new)
        # Full 16-token blocks shared with the previous segment's computed tokens (all but its last sampled one),
        # never the block of the prompt's last token.
        shared = 0
        if previous_tokens is not None:
            while (shared < min(len(previous_tokens), len(prompt))
                   and previous_tokens[shared] == prompt[shared]):
                shared += 1
        expected.append((answer, len(prompt), min(shared // 16, (len(prompt) - 1) // 16) * 16))
        previous_tokens = (prompt + new)[:-1]
        messages.append({"role": "assistant", "content": answer})

    def requests():
        options = gateway_pb2.GenerateOptions(sampling=common_pb2.SamplingParams(max_tokens=max_tokens))
        yield gateway_pb2.TranslateSegment(model="flashstream-demo", source_language="German",
                                           target_language="English", text=segments[0], options=options)
        for text in segments[1:]:
            yield gateway_pb2.TranslateSegment(text=text)

    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        replies = list(gateway_pb2_grpc.GatewayStub(channel).Translate(requests(), timeout=120))
    indices = [reply.segment_index for reply in replies]
    assert indices == sorted(indices) and set(indices) == {0, 1, 2}, stage_logs(stack.log_dir)
    for index, (answer, num_prompt, num_cached) in enumerate(expected):
        mine = [reply for reply in replies if reply.segment_index == index]
        assert [reply.HasField("done") for reply in mine] == [False] * (len(mine) - 1) + [True]
        assert "".join(reply.chunk.text for reply in mine[:-1]).encode() == answer.encode(), f"segment {index}"
        usage = mine[-1].done.usage
        assert (usage.prompt_tokens, usage.cached_tokens) == (num_prompt, num_cached), f"segment {index}"
    assert expected[1][2] > 0 and expected[2][2] > expected[1][2]


@pytest.mark.parametrize(
    ("first", "later", "fragment"),
    [({"target_language": ""}, None, "target_language"),
     ({"target_language": "English", "model": "no-such-model"}, None, "no-such-model"),
     ({"target_language": "English"}, {"text": "zwei", "target_language": "French"}, "target_language"),
     ({"target_language": "English"}, {"text": " "}, "segment 1 has no text")],
)
def test_a_bad_translation_segment_ends_the_session_with_its_error_and_the_stack_keeps_serving(
        stack: Stack, first: dict, later: dict | None, fragment: str) -> None:
    options = gateway_pb2.GenerateOptions(sampling=common_pb2.SamplingParams(max_tokens=2))
    segments = [gateway_pb2.TranslateSegment(**({"model": "flashstream-demo", "text": "eins"} | first),
                                             options=options)]
    if later is not None:
        segments.append(gateway_pb2.TranslateSegment(**later))
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        replies = []
        with pytest.raises(grpc.RpcError) as info:
            for reply in gateway_pb2_grpc.GatewayStub(channel).Translate(iter(segments), timeout=60):
                replies.append(reply)
    expected = grpc.StatusCode.NOT_FOUND if fragment == "no-such-model" else grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.code() == expected
    assert fragment in info.value.details()
    # A good first segment was translated before the bad one ended the call.
    assert {reply.segment_index for reply in replies} == ({0} if later is not None else set())
    _, _, done = _grpc_generate(stack.gateway_grpc, PROMPTS[3], 3)
    assert done.HasField("done")
