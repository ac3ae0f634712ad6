"""The tokenizer stage's memory stays bounded under hostile requests: a burst of prompts over the size limit, prompts
just under it, forced tool calls and odd text leaves its resident memory near where it was before the burst.

The stage runs as its own process (its resident memory is what is measured) in front of a small scheduler that
answers over loopback gRPC. Prompts over the limit must be refused before they are encoded (their error names the
size, not a token count); the grammar of a forced tool call must not load xgrammar (and with it torch) into the
stage, which kept it a few hundred MB larger for good; and multi-MB messages must not raise glibc's mmap threshold
(services.common.allocator), which left the stage larger after every burst. The test looks for torch's and
xgrammar's libraries in the stage's memory map, which finds them whenever they were loaded.

The stage runs with one glibc arena (MALLOC_ARENA_MAX=1). With one per thread, which arena's free space a burst
reuses, and so the stage's size after it, differs from run to run by nearly as much as these regressions leave;
with one arena the size after each burst stays within a few MiB. The test checks the level the bursts leave (the
median of the last rounds, a transient buffer aside) against a bound, and that it is where the first rounds left
the stage: a leak adds to it with every burst.
"""

from __future__ import annotations

import asyncio
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from flashstream.v1 import common_pb2, tokenizer_pb2, tokenizer_pb2_grpc

from services.common.grpc_server import create_channel
from services.demo import build_demo_model
from services.launcher import free_port, python_path_env, wait_serving
from services.tokenizer.tokenizer import TextTokenizer
from tests.unit.tokenizer.fake_scheduler import FakeScheduler
from tests.unit.tokenizer.stage_harness import read_until_terminal

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

MAX_MODEL_LEN = 512  # the scheduler's context: prompts of more than 512 * 12 characters cannot fit
NUM_ROUNDS = 48
# The bursts' level is the median growth of the last rounds, and the first rounds' median is where they started;
# single rounds differ by several MiB either way (which free chunks a round's buffers land in), medians much less.
LEVEL_ROUNDS = 16
# What the stage may keep at the bursts' level: the last burst's message, which its stream holds until the next
# one arrives (its bytes and the decoded copy, 5 MiB each), and some allocator high water; not a library loaded on
# the way.
MAX_GROWTH_BYTES = 24 * 1024 * 1024
# What the later bursts may add to the level the first ones left: a leak adds to it with every burst (an eighth of
# a MiB a burst shows as four between the two medians), and a raised mmap threshold pins more heap over the first few.
MAX_LATER_GROWTH_BYTES = 4 * 1024 * 1024


def _libraries_of_grammar_packages(pid: int) -> list[str]:
    """The shared libraries of torch and xgrammar that the process has loaded."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return sorted({line.split()[-1] for line in maps if re.search(r"/(torch|xgrammar)/.*\.so", line)})


def _resident_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M)[1]) * 1024


def _hostile_burst(round_: int, limit: int) -> list[tokenizer_pb2.TextRequest]:
    """One round of requests: ids tell what each is (over the limit, just under it, a forced tool call, ...)."""
    rnd = random.Random(round_)
    words = " ".join("".join(chr(rnd.randint(97, 122)) for _ in range(rnd.randint(1, 9))) for _ in range(limit // 5))
    odd = "".join(chr(rnd.choice([rnd.randint(0x20, 0x7e), rnd.randint(0x100, 0xd7ff), rnd.randint(0xe000, 0x10ffff)]))
                  for _ in range(limit // 4))
    tool = common_pb2.Tool(name="f", parameters_json='{"type": "object", "properties": {"a": {"type": "integer"}}}')

    def request(kind: str, i: int, **fields: object) -> tokenizer_pb2.TextRequest:
        req = tokenizer_pb2.TextRequest(request_id=f"{kind}-{round_}-{i}", **fields)
        req.sampling.max_tokens = 4
        return req

    burst = [request("over", i, prompt="x" * size) for i, size in enumerate((limit + 1, 1 << 20, 4 << 20))]
    burst += [request("over-chat", 0, chat=tokenizer_pb2.ChatInput(messages=[
        common_pb2.ChatMessage(role="user", content="y " * limit)], add_generation_prompt=True))]
    burst += [request("under", i, prompt=text[:limit - 1]) for i, text in enumerate([words, odd, "z" * limit])]
    burst += [request("tool", i, chat=tokenizer_pb2.ChatInput(
        messages=[common_pb2.ChatMessage(role="user", content=f"call f {i}")], add_generation_prompt=True,
        tools=[tool], tool_choice=common_pb2.ToolChoice(mode="required"))) for i in range(4)]
    burst += [request("small", i, prompt=f"Once upon a time {i}") for i in range(8)]
    return burst


def _warm_copy(request: tokenizer_pb2.TextRequest) -> tokenizer_pb2.TextRequest:
    copy = tokenizer_pb2.TextRequest()
    copy.CopyFrom(request)
    copy.request_id = f"warm-{request.request_id}"
    return copy


def test_a_burst_of_hostile_requests_leaves_the_tokenizer_stage_near_its_baseline_memory(tmp_path: Path) -> None:
    model_dir = build_demo_model(tmp_path / "demo")
    limit = TextTokenizer.from_dir(model_dir).max_prompt_chars(MAX_MODEL_LEN)
    assert limit == MAX_MODEL_LEN * 12

    async def main() -> tuple[list[int], dict[str, str], list[str]]:
        fake = await FakeScheduler(lambda req: [5, 6, 7, 8], max_model_len=MAX_MODEL_LEN, vocab_size=1024).start()
        port = free_port()
        env = python_path_env() | {"MALLOC_ARENA_MAX": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "tokenizer", "--host", "127.0.0.1", "--port", str(port),
             "--status-port", "0", "--scheduler", fake.address, "--model", str(model_dir)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            await asyncio.to_thread(wait_serving, f"127.0.0.1:{port}", 60, proc)
            async with create_channel(f"127.0.0.1:{port}") as channel:
                call = tokenizer_pb2_grpc.TokenizerStub(channel).Connect()
                # Small prompts, and the prompts under the limit of every burst: the tokenizers library caches the
                # pieces of up to 10,000 words, which the bursts' random words would otherwise fill over the rounds.
                warm = _hostile_burst(-1, limit)[-8:] + [_warm_copy(r) for round_ in range(NUM_ROUNDS)
                                                         for r in _hostile_burst(round_, limit)
                                                         if r.request_id.startswith("under")]
                await call.write(tokenizer_pb2.TokenizerUp(requests=warm))
                await read_until_terminal(call, {r.request_id for r in warm})
                await asyncio.sleep(0.5)
                baseline = _resident_bytes(proc.pid)
                growths: list[int] = []
                errors: dict[str, str] = {}
                for round_ in range(NUM_ROUNDS):
                    burst = _hostile_burst(round_, limit)
                    await call.write(tokenizer_pb2.TokenizerUp(requests=burst))
                    events, _ = await read_until_terminal(call, {r.request_id for r in burst})
                    errors |= {rid: evs[-1].error.message for rid, evs in events.items()
                               if evs[-1].WhichOneof("event") == "error"}
                    growths.append(_resident_bytes(proc.pid) - baseline)
                await call.done_writing()
                return growths, errors, _libraries_of_grammar_packages(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
            await fake.stop()

    growths, errors, grammar_libraries = asyncio.run(main())
    refused_unencoded = sorted(rid for rid, message in errors.items()
                               if re.search(r"\(\d+ characters\) cannot fit the model's context", message))
    assert refused_unencoded == sorted(f"{kind}-{r}-{i}" for r in range(NUM_ROUNDS)
                                       for kind, n in (("over", 3), ("over-chat", 1)) for i in range(n))
    encoded_too_long = sorted(rid for rid, message in errors.items() if "exceeds the model's context" in message)
    assert encoded_too_long == sorted(f"under-{r}-{i}" for r in range(NUM_ROUNDS) for i in range(3))
    assert not [rid for rid in errors if rid.startswith(("tool", "small"))], errors  # these ran
    assert grammar_libraries == []  # loaded when the stage starts, they would be in the baseline
    level = statistics.median(growths[-LEVEL_ROUNDS:])
    first_level = statistics.median(growths[:LEVEL_ROUNDS])
    rounds = f"growth after each round (MiB): {[round(g / 2**20) for g in growths]}"
    assert level < MAX_GROWTH_BYTES, f"the bursts left the tokenizer {level / 2**20:.0f} MiB larger; {rounds}"
    assert level - first_level < MAX_LATER_GROWTH_BYTES, f"the bursts after the first grew the tokenizer; {rounds}"
