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


REQUEST_TIMEOUT_S = 120.0


async def _one(stub: gateway_pb2_grpc.GatewayStub, prompt: str, max_tokens: int) -> tuple[int, float, str, dict]:
    request = gateway_pb2.GenerateRequest(
        prompt=prompt, add_special_tokens=True,
        options=gateway_pb2.GenerateOptions(
            sampling=common_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True)))
    start = time.perf_counter()
    ttft = 0.0
    num_tokens = 0
    finish = ""
    latency: dict = {}
    try:
        async for message in stub.Generate(request, timeout=REQUEST_TIMEOUT_S):
            if message.HasField("chunk"):
                if num_tokens == 0:
                    ttft = time.perf_counter() - start
                num_tokens += len(message.chunk.token_ids)
            else:
                finish = common_pb2.FinishReason.Name(message.done.finish_reason)
                lat = message.done.latency
                latency = {"gateway_s": lat.gateway_s, "tokenizer_s": lat.tokenizer_s, "queue_s": lat.queue_s,
                           "prefill_s": lat.prefill_s, "decode_s": lat.decode_s}
    except grpc.aio.AioRpcError as exc:
        finish = f"error {exc.code().name}: {exc.details()}"
    return num_tokens, ttft, finish, latency


async def run(address: str, num_clients: int, max_tokens: int, num_connections: int) -> dict:
    # Separate subchannel pools give each channel its own HTTP/2 connection, as separate clients would
    # have; one connection would also cap concurrent streams at the server's per-connection limit.
    channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(num_connections)]
    try:
        stubs = [gateway_pb2_grpc.GatewayStub(c) for c in channels]
        await asyncio.gather(*(_one(stub, "warm up", 4) for stub in stubs))
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        results = await asyncio.gather(*(_one(stubs[i % num_connections], f"request {i} says hello", max_tokens)
                                         for i in range(num_clients)))
        wall = time.perf_counter() - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        for channel in channels:
            await channel.close()
    ttfts = sorted(r[1] for r in results)
    breakdown = {}
    for key in ("gateway_s", "tokenizer_s", "queue_s", "prefill_s", "decode_s"):
        values = sorted(r[3][key] for r in results if r[3])
        if values:
            breakdown[key] = {"p50": statistics.median(values), "max": values[-1]}
    return {
        "latency_breakdown": breakdown,
        "num_clients": num_clients,
        "num_connections": num_connections,
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
    parser.add_argument("--connections", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.address, args.clients, args.max_tokens, args.connections))), flush=True)


if __name__ == "__main__":
    main()
