"""A 100k-token prompt is encoded off the event loop: running streams keep receiving deltas meanwhile."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from flashstream.v1 import tokenizer_pb2

from services.tokenizer.tokenizer import TextTokenizer
from tests.unit.tokenizer.model_dirs import build_model_dir, fixture_lines
from tests.unit.tokenizer.stage_harness import Harness, text_request


def test_deltas_keep_flowing_while_a_100k_token_prompt_is_encoded(tmp_path: Path) -> None:
    model_dir = build_model_dir(tmp_path / "m", "llama3")
    tokenizer = TextTokenizer.from_dir(model_dir)
    unit = " ".join(fixture_lines()) + "\n"
    big = unit * (100_000 // len(tokenizer.encode(unit)) + 1)
    started = time.perf_counter()
    num_big = len(tokenizer.encode(big))
    encode_s = time.perf_counter() - started  # the encode alone, for the printout
    assert num_big >= 100_000

    async def main() -> None:
        async with Harness(model_dir, lambda r: [300] * (1 if len(r.prompt_token_ids) > 1000 else 100_000),
                           step_s=0.005, max_model_len=200_000) as h:
            call = h.stub.Connect()
            await call.write(tokenizer_pb2.TokenizerUp(requests=[text_request("run", max_tokens=16)]))
            arrivals: list[float] = []
            big_done = asyncio.Event()
            sent_at = 0.0

            async def read() -> None:
                while not big_done.is_set():
                    down = await call.read()
                    for event in down.events:
                        if event.request_id == "run":
                            arrivals.append(time.perf_counter())
                        elif event.WhichOneof("event") in ("done", "error"):
                            assert event.WhichOneof("event") == "done", event
                            assert event.done.usage.prompt_tokens == num_big
                            big_done.set()

            reader = asyncio.create_task(read())
            while len(arrivals) < 20:
                await asyncio.sleep(0.005)
            sent_at = time.perf_counter()
            await call.write(tokenizer_pb2.TokenizerUp(requests=[text_request("big", big, max_tokens=1)]))
            await asyncio.wait_for(reader, 60)
            finished_at = time.perf_counter()
            during = [t for t in arrivals if sent_at <= t <= finished_at]
            gaps = [b - a for a, b in zip([sent_at, *during], [*during, finished_at])]
            print(f"encode {encode_s * 1000:.0f} ms in-test, {len(during)} deltas meanwhile, "
                  f"largest gap {max(gaps) * 1000:.1f} ms")
            # A loop blocked by the encode would deliver nothing while it runs: its largest gap would be most of
            # the big request's time (measured in this run, so that a loaded machine slows both alike).
            assert len(during) >= 5
            assert max(gaps) < (finished_at - sent_at) / 2
            await call.done_writing()

    asyncio.run(main())
