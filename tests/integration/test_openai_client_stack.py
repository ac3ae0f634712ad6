"""The official `openai` client against the whole stack (demo model on the CPU, every stage a process on loopback):
usage on every finish path, n choices, logit_bias, batched prompts, model lookup, ranges and CORS."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from services.demo import build_demo_model
from services.demo.build import MODEL_CONFIG
from services.launcher import Stack
from tests.integration.stack_fixture import running_stack

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

MODEL = "flashstream-demo"
EOS = MODEL_CONFIG["eos_token_id"]
PROMPT = "The scheduler keeps the cache in fixed blocks of sixteen tokens, and every request that shares a prefix"
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("model") / "demo")


@pytest.fixture(scope="module")
def stack(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(model_dir, tmp_path_factory.mktemp("logs"), extra=["--gateway-args",
                                                                          "--cors-origins http://app.example"]) as s:
        yield s


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=stack.gateway_http + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def num_prompt_tokens(model_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return lambda text: len(tokenizer(text).input_ids)


def _streamed(client: openai.OpenAI, **kwargs) -> tuple[str, list, object, list]:
    """(text, logprob tokens, usage, finish reasons) of a streamed completion with usage."""
    chunks = list(client.completions.create(model=MODEL, stream=True, stream_options={"include_usage": True},
                                            **kwargs))
    choices = [c.choices[0] for c in chunks if c.choices]
    tokens = [t for c in choices if c.logprobs for t in c.logprobs.tokens]
    reasons = [c.finish_reason for c in choices if c.finish_reason]
    assert chunks[-1].choices == []
    return "".join(c.text for c in choices), tokens, chunks[-1].usage, reasons


def _usage(usage) -> tuple[int, int, int]:
    return usage.prompt_tokens, usage.completion_tokens, usage.total_tokens


def test_length_finish_counts_the_prompt_and_every_streamed_token(client, num_prompt_tokens) -> None:
    n_prompt = num_prompt_tokens(PROMPT)
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, logprobs=0,
                                      extra_body={"ignore_eos": True, "cache": False}, **GREEDY)
    assert whole.choices[0].finish_reason == "length"
    assert len(whole.choices[0].logprobs.tokens) == 6
    assert _usage(whole.usage) == (n_prompt, 6, n_prompt + 6)
    text, tokens, usage, reasons = _streamed(client, prompt=PROMPT, max_tokens=6, logprobs=0,
                                             extra_body={"ignore_eos": True, "cache": False}, **GREEDY)
    assert (text, len(tokens), reasons) == (whole.choices[0].text, 6, ["length"])
    assert _usage(usage) == (n_prompt, 6, n_prompt + 6)


def test_eos_finish_counts_the_eos_token_that_logit_bias_forces(client, num_prompt_tokens) -> None:
    n_prompt = num_prompt_tokens(PROMPT)
    for stream in (False, True):
        kwargs = dict(prompt=PROMPT, max_tokens=8, logit_bias={str(EOS): 100}, extra_body={"cache": False})
        if stream:
            text, tokens, usage, reasons = _streamed(client, **kwargs)
        else:
            reply = client.completions.create(model=MODEL, **kwargs)
            text, usage, reasons = reply.choices[0].text, reply.usage, [reply.choices[0].finish_reason]
        assert (text, reasons) == ("", ["stop"])
        assert _usage(usage) == (n_prompt, 1, n_prompt + 1)  # the EOS token itself is generated, not shown


def test_stop_token_finish_after_min_tokens_counts_the_tokens_before_it_and_the_stop_token(
        client, num_prompt_tokens) -> None:
    n_prompt = num_prompt_tokens(PROMPT)
    body = {"stop_token_ids": [500], "min_tokens": 2, "cache": False}
    reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, logprobs=0,
                                      logit_bias={"500": 100}, extra_body=body, **GREEDY)
    assert reply.choices[0].finish_reason == "stop"
    assert len(reply.choices[0].logprobs.tokens) == 2
    assert _usage(reply.usage) == (n_prompt, 3, n_prompt + 3)
    _, tokens, usage, reasons = _streamed(client, prompt=PROMPT, max_tokens=8, logprobs=0, logit_bias={"500": 100},
                                          extra_body=body, **GREEDY)
    assert (len(tokens), reasons, _usage(usage)) == (2, ["stop"], (n_prompt, 3, n_prompt + 3))


def _stop_string_case(client) -> tuple[str, str, int]:
    """(stop string, text before it, tokens up to the one completing it) from a greedy run without stop."""
    reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, logprobs=0,
                                      extra_body={"ignore_eos": True}, **GREEDY)
    tokens = reply.choices[0].logprobs.tokens
    for k in range(2, len(tokens)):
        stop = tokens[k].strip()
        before = "".join(tokens[:k])
        if len(stop) >= 2 and "\ufffd" not in before + tokens[k] and stop not in before + tokens[k][:-1]:
            end = len(before) + tokens[k].index(stop)
            return stop, reply.choices[0].text[:end], k + 1
    pytest.skip(f"no usable stop string in {tokens}")


def test_stop_string_finish_counts_the_prompt_and_the_tokens_up_to_the_stop_string_streamed_or_not_and_cached(
        client, num_prompt_tokens) -> None:
    n_prompt = num_prompt_tokens(PROMPT)
    stop, before, num_tokens = _stop_string_case(client)
    expected = (n_prompt, num_tokens, n_prompt + num_tokens)
    for _ in range(2):  # the second answer is a result cache replay
        reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, stop=[stop],
                                          extra_body={"ignore_eos": True}, **GREEDY)
        assert (reply.choices[0].text, reply.choices[0].finish_reason) == (before, "stop")
        assert _usage(reply.usage) == expected
    assert reply.usage.model_extra.get("result_cached") is True
    text, _, usage, reasons = _streamed(client, prompt=PROMPT, max_tokens=12, stop=[stop],
                                        extra_body={"ignore_eos": True, "cache": False}, **GREEDY)
    assert (text, reasons, _usage(usage)) == (before, ["stop"], expected)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=12,
                                          stop=[stop], extra_body={"ignore_eos": True, "cache": False}, **GREEDY)
    assert chat.usage.prompt_tokens > n_prompt  # the chat template's tokens come on top
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens


def test_a_deadline_that_passes_midway_reports_the_usage_so_far_then_the_error(client, num_prompt_tokens) -> None:
    stream = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=1500, logprobs=0, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True, "timeout": 1.0, "cache": False}, **GREEDY)
    chunks = []
    with pytest.raises(openai.APIError, match="passed its deadline of 1 s"):
        for chunk in stream:
            chunks.append(chunk)
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and 0 < len(tokens) < 1500
    assert _usage(usage) == (num_prompt_tokens(PROMPT), len(tokens), num_prompt_tokens(PROMPT) + len(tokens))


def test_n_choices_share_the_prompt_blocks_have_their_index_and_reproduce_as_single_seeded_requests(
        client, stack, num_prompt_tokens) -> None:
    prompt = "A prompt that no other test sends: " + PROMPT + " " + PROMPT
    kwargs = dict(prompt=prompt, max_tokens=6, temperature=1.0, extra_body={"ignore_eos": True, "cache": False})
    hits_before = _scheduler_metric(stack, "flashstream_prefix_cache_hits_total")
    reply = client.completions.create(model=MODEL, n=3, seed=11, **kwargs)
    hits_after = _scheduler_metric(stack, "flashstream_prefix_cache_hits_total")
    assert [c.index for c in reply.choices] == [0, 1, 2]
    # Choices 1 and 2 reuse every full block of the first choice's prompt (16 tokens each, the block holding the
    # last prompt token excepted) from the prefix cache; the first choice found none.
    full_blocks = (num_prompt_tokens(prompt) - 1) // 16
    assert full_blocks >= 2 and hits_after - hits_before == 2 * full_blocks * 16
    assert reply.usage.prompt_tokens_details.cached_tokens == 0  # each prompt counts once: the first choice's
    singles = [client.completions.create(model=MODEL, seed=11 + j, **kwargs).choices[0].text for j in range(3)]
    assert [c.text for c in reply.choices] == singles
    assert len(set(singles)) > 1
    chunks = list(client.completions.create(model=MODEL, n=3, seed=11, stream=True, **kwargs))
    texts = {i: "".join(c.choices[0].text for c in chunks if c.choices[0].index == i) for i in range(3)}
    assert [texts[i] for i in range(3)] == singles
    finishes = sorted(c.choices[0].index for c in chunks if c.choices[0].finish_reason)
    assert finishes == [0, 1, 2]
    chat = client.chat.completions.create(model=MODEL, n=2, messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=4, **GREEDY)
    assert [c.index for c in chat.choices] == [0, 1]
    assert chat.choices[0].message.content == chat.choices[1].message.content


def test_batched_prompts_give_one_choice_per_prompt_in_order_with_the_prompts_usage(client, num_prompt_tokens) -> None:
    prompts = ["Once upon a time", "def step(batch): return"]
    reply = client.completions.create(model=MODEL, prompt=prompts, max_tokens=4, n=2,
                                      extra_body={"ignore_eos": True}, **GREEDY)
    singles = [client.completions.create(model=MODEL, prompt=p, max_tokens=4, extra_body={"ignore_eos": True},
                                         **GREEDY).choices[0].text for p in prompts]
    assert [(c.index, c.text) for c in reply.choices] == [(0, singles[0]), (1, singles[0]), (2, singles[1]),
                                                          (3, singles[1])]
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (
        sum(num_prompt_tokens(p) for p in prompts), 16)


def test_logit_bias_reaches_the_sampler_and_forces_its_tokens(client, model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for token_id in (500, 700):
        reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, logit_bias={str(token_id): 100},
                                          extra_body={"ignore_eos": True}, **GREEDY)
        assert reply.choices[0].text == tokenizer.decode([token_id] * 3)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=PROMPT, logit_bias={"5000": 1})
    assert info.value.param == "logit_bias"


def test_model_lookup_ranges_and_missing_content_are_answered_as_openai_does(client) -> None:
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-9")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-9", prompt="x")
    for bad in ({"temperature": 5}, {"top_p": 1.5}, {"presence_penalty": 3}, {"frequency_penalty": -2.5}):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], **bad)
        assert info.value.param == next(iter(bad))
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="x", logprobs=21)
    assert info.value.param == "logprobs"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user"}])
    assert info.value.param == "messages[0].content"


def _http(stack: Stack, method: str, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    host, port = stack.gateway_http.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request(method, path, headers=headers)
    return conn.getresponse()


def test_cors_answers_preflights_and_marks_answers_for_allowed_origins_only(stack: Stack) -> None:
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = _http(stack, "OPTIONS", "/v1/chat/completions", preflight)
    assert allowed.status == 204
    assert allowed.getheader("Access-Control-Allow-Origin") == "http://app.example"
    assert allowed.getheader("Access-Control-Allow-Headers") == "authorization,content-type"
    assert "POST" in allowed.getheader("Access-Control-Allow-Methods")
    assert _http(stack, "OPTIONS", "/v1/chat/completions", preflight | {"Origin": "http://evil.example"}).status == 403
    models = _http(stack, "GET", "/v1/models", {"Origin": "http://app.example"})
    assert models.getheader("Access-Control-Allow-Origin") == "http://app.example"
    assert _http(stack, "GET", "/v1/models", {"Origin": "http://evil.example"}).getheader(
        "Access-Control-Allow-Origin") is None


def _scheduler_metric(stack: Stack, name: str) -> float:
    scheduler = next(s for s in stack.stages if s.name == "scheduler")
    port = int(scheduler.argv[scheduler.argv.index("--status-port") + 1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))
