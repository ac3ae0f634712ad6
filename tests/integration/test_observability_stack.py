"""What an operator sees of the whole stack on the demo model (one stack for the module): the playground in a
real headless Chromium (the page loads, a prompt streams an answer equal to the same request made without
streaming, the live engine view changes while it streams, the latency breakdown lists every stage), and every
series the Grafana dashboard queries on the stages' /metrics."""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.demo import build_demo_model
from services.launcher import Stack
from tests.integration.stack_fixture import running_stack, stage_logs

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
MAX_TOKENS = 400


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    model_dir = build_demo_model(tmp_path_factory.mktemp("model") / "demo")
    log_dir = tmp_path_factory.mktemp("logs")
    with running_stack(model_dir, log_dir) as running:
        running.log_dir = log_dir
        yield running


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _completion_text(base_url: str, body: dict) -> str:
    request = urllib.request.Request(f"{base_url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["choices"][0]["message"]["content"]


def test_a_prompt_streams_its_answer_while_the_live_view_follows_the_engine(stack: Stack, browser) -> None:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(stack.gateway_http + "/")
    page.wait_for_function("document.querySelector('#model').options.length > 0", timeout=30_000)
    assert page.eval_on_selector("#model", "s => [...s.options].map(o => o.value)") == ["flashstream-demo"]
    page.wait_for_function("document.querySelector('#engine-status').textContent === 'live'", timeout=30_000)
    idle_steps = int(page.text_content("#engine-steps"))

    page.fill("#temperature", "0")
    page.fill("#max_tokens", str(MAX_TOKENS))
    page.check("#ignore_eos")
    page.fill("#prompt", "The scheduler keeps")
    # Record the page on every change while the answer streams (polling from here can miss a fast stream on a busy
    # machine): the live view must show the request running and steps advancing.
    page.evaluate("""() => {
        window.samples = [];
        const record = () => {
            const out = document.querySelector('.message.assistant');
            window.samples.push({state: out ? out.dataset.state : 'none', text: out ? out.textContent.length : 0,
                                 running: document.querySelector('#engine-running').textContent,
                                 steps: document.querySelector('#engine-steps').textContent});
        };
        new MutationObserver(record).observe(document.body, {subtree: true, childList: true, characterData: true,
                                                             attributes: true});
    }""")
    page.click("#send")
    page.wait_for_function("document.querySelector('.message.assistant')?.dataset.state === 'done'", timeout=120_000)
    samples = page.evaluate("() => window.samples")
    streaming = [x for x in samples if x["state"] == "streaming" and x["text"] > 0]
    seen_running = {x["running"] for x in streaming}
    seen_steps = {int(x["steps"]) for x in streaming}
    seen_text_lengths = {x["text"] for x in streaming}
    sample = {"state": page.evaluate("() => document.querySelector('.message.assistant').dataset.state")}
    assert sample["state"] == "done", stage_logs(stack.log_dir)
    assert errors == []

    streamed = page.text_content(".message.assistant")
    expected = _completion_text(stack.gateway_http, {
        "model": "flashstream-demo", "messages": [{"role": "user", "content": "The scheduler keeps"}],
        "temperature": 0, "max_tokens": MAX_TOKENS, "ignore_eos": True, "cache": False, "top_p": 1})
    assert streamed == expected
    assert len(seen_text_lengths) > 1, "the answer arrived in one piece, not streamed"
    assert "1" in seen_running, f"the live view never showed the request running: {seen_running}"
    assert len(seen_steps) > 1 and min(seen_steps) >= idle_steps, f"steps did not advance while streaming: {seen_steps}"
    assert page.text_content("#chat-status") == "done"

    stages = page.eval_on_selector_all("#latency tr[data-stage]", "rows => rows.map(r => r.dataset.stage)")
    assert stages == ["gateway", "tokenizer", "queue", "prefill", "decode", "other"]
    decode_ms = float(page.text_content("#latency tr[data-stage=decode] td.value").split()[0])
    assert decode_ms > 0
    page.close()


def test_the_page_and_its_files_need_no_api_key_but_the_engine_stream_is_the_api(stack: Stack) -> None:
    for path, kind in (("/", "text/html"), ("/playground/app.js", "javascript"), ("/playground/style.css", "css")):
        with urllib.request.urlopen(stack.gateway_http + path, timeout=10) as response:
            assert response.status == 200 and kind in response.headers["Content-Type"]
    request = urllib.request.Request(stack.gateway_http + "/engine/state?interval_s=0.01")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400
    assert "interval_s must be between 0.05 and 60 seconds, got 0.01" in json.load(caught.value)["error"]["message"]



DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "flashstream.json"


def _post(base_url: str, path: str, body: dict) -> int:
    request = urllib.request.Request(base_url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _metrics_urls(stack: Stack) -> dict[str, str]:
    urls = {}
    for stage in stack.stages:
        argv = stage.argv
        if argv[0] == "gateway":
            urls[stage.name] = stack.gateway_http + "/metrics"
        else:
            urls[stage.name] = f"http://127.0.0.1:{argv[argv.index('--status-port') + 1]}/metrics"
    return urls


def test_every_series_the_dashboard_queries_exists_once_the_stack_served_requests(stack: Stack) -> None:
    body = {"model": "flashstream-demo", "prompt": "The scheduler keeps", "max_tokens": 8, "temperature": 0,
            "stream": True}
    assert [_post(stack.gateway_http, "/v1/completions", body) for _ in range(2)] == [200, 200]  # a result cache hit
    assert _post(stack.gateway_http, "/v1/completions", dict(body, temperature=5)) == 400
    exposed: dict[str, set[str]] = {}
    for name, url in _metrics_urls(stack).items():
        with urllib.request.urlopen(url, timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line and not line.startswith("#"):
                    exposed.setdefault(re.split(r"[{ ]", line, maxsplit=1)[0], set()).add(name)
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {m for panel in dashboard["panels"] for target in panel["targets"]
               for m in re.findall(r"flashstream_[a-z0-9_]+", target["expr"])}
    queried.add(re.findall(r"flashstream_[a-z0-9_]+", dashboard["templating"]["list"][0]["definition"])[0])
    assert len(queried) >= 25
    missing = sorted(queried - set(exposed))
    assert missing == [], missing
    # One owner each: no series is exported by two kinds of stage.
    assert {m: s for m, s in exposed.items() if m.startswith("flashstream_") and len(
        {n.rstrip("0123456789") for n in s}) > 1} == {}
