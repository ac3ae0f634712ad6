"""Load client for bench/pipeline.py: N concurrent gRPC Generate streams, run in its own process.

Prints one JSON line: tokens received, wall time, time-to-first-token percentiles, and this process's CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import time

import grpc
from flashstream.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc


async def _one(stub: gateway_pb2_grpc.GatewayStub, prompt: str, max_tokens: int) -> tuple[int, float, str]:
    request = gateway_pb2.GenerateRequest(
        prompt=prompt, add_special_tokens=True,
        options=gateway_pb2.GenerateOptions(
            sampling=common_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True)))
    start = time.perf_counter()
    ttft = 0.0
    num_tokens = 0
    finish = ""
    async for message in stub.Generate(request):
        if message.HasField("chunk"):
            if num_tokens == 0:
                ttft = time.perf_counter() - start
            num_tokens += len(message.chunk.token_ids)
        else:
            finish = common_pb2.FinishReason.Name(message.done.finish_reason)
    return num_tokens, ttft, finish


async def run(address: str, num_clients: int, max_tokens: int) -> dict:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        await _one(stub, "warm up", 4)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        results = await asyncio.gather(*(_one(stub, f"request {i} says hello", max_tokens)
                                         for i in range(num_clients)))
        wall = time.perf_counter() - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    ttfts = sorted(r[1] for r in results)
    return {
        "num_clients": num_clients,
        "max_tokens": max_tokens,
        "num_tokens": sum(r[0] for r in results),
        "num_complete": sum(r[0] == max_tokens for r in results),
        "finish_reasons": sorted({r[2] for r in results}),
        "wall_s": wall,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
        "client_cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--max-tokens", type=int, required=True)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.address, args.clients, args.max_tokens))), flush=True)


if __name__ == "__main__":
    main()
