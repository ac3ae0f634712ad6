"""The embedding cache's read of a batch of stored vectors from Redis: one MGET, or MGETs of fewer keys sent at once.

Each variant is a RedisStore (its max_keys_per_mget) read through EmbeddingCache.lookup (keys, the store's read,
decoding), the way a gateway reads vectors another gateway stored, in a process whose allocator is set as the
gateway's main() sets it (or, with --mmap-threshold-bytes, otherwise). The variants take turns lookup by lookup, so
load elsewhere on the machine lands on all of them alike.

    python bench/redis_mget.py --start-redis --widths 384 1024 --batches 32 256
    python bench/redis_mget.py --start-redis --mmap-threshold-bytes 0  # glibc's own, self-adjusting threshold
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

import numpy as np  # noqa: E402

from gateway.cache.breaker import CircuitBreaker  # noqa: E402
from gateway.cache.embedding_cache import EmbeddingCache, VectorOptions  # noqa: E402
from gateway.cache.redis_store import RedisStore  # noqa: E402
from gateway.schema import ModelCard  # noqa: E402
from services.common.allocator import MMAP_THRESHOLD_BYTES, return_large_buffers_to_os  # noqa: E402


def percentiles(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    at = lambda q: 1e3 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {"lookups": len(ordered), "p50_ms": 1e3 * statistics.median(ordered), "p90_ms": at(0.9),
            "p99_ms": at(0.99)}


async def measure(url: str, widths: list[int], batches: list[int], lookups: int) -> list[dict]:
    from services.common.stage import freeze_startup_heap

    freeze_startup_heap()
    stores = {"one MGET" if n > max(batches) else f"MGETs of {n} keys at once":
              RedisStore(url, 3600.0, 0.5, CircuitBreaker(5, 10.0), max_keys_per_mget=n)
              for n in (1 << 30, 128, 64)}
    caches = {name: EmbeddingCache(store, "flashstream-bench") for name, store in stores.items()}
    options = VectorOptions(None, 0)
    rows = []
    for width in widths:
        card = ModelCard("bench", revision=f"r{width}")
        for batch in batches:
            inputs = [[101, *range(1000 + 10 * i, 1010 + 10 * i), 102] for i in range(batch)]
            first = next(iter(caches.values()))
            await first.save(first.keys(card, "t", options, inputs), [np.full(width, 0.1, np.float32)] * batch)
            times: dict[str, list[float]] = {name: [] for name in caches}
            for _ in range(lookups):
                for name, cache in caches.items():
                    start = time.perf_counter()
                    vectors = await cache.lookup(cache.keys(card, "t", options, inputs))
                    times[name].append(time.perf_counter() - start)
                    if any(v is None for v in vectors):
                        raise RuntimeError(f"{name}: a stored vector missed")
            for name, store in stores.items():
                if store.num_failures:
                    raise RuntimeError(f"{name}: {store.num_failures} Redis calls failed")
                rows.append({"variant": name, "dim": width, "batch": batch, **percentiles(times[name])})
    for store in stores.values():
        await store.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--start-redis", action="store_true", help="start a throwaway Redis (bench/redis_server.py)")
    parser.add_argument("--widths", type=int, nargs="+", default=[1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--lookups", type=int, default=2000, help="lookups per variant, width and batch")
    parser.add_argument("--mmap-threshold-bytes", type=int, default=MMAP_THRESHOLD_BYTES,
                        help="glibc's mmap threshold, fixed as the gateway fixes it (0: glibc's own, self-adjusting)")
    args = parser.parse_args()
    if args.mmap_threshold_bytes and not return_large_buffers_to_os(args.mmap_threshold_bytes):
        parser.error("could not set the mmap threshold (not glibc?); pass --mmap-threshold-bytes 0")
    with contextlib.ExitStack() as cleanup:
        if args.start_redis:
            from bench.redis_server import redis_server

            args.redis_url = cleanup.enter_context(redis_server()).url
        if not args.redis_url:
            parser.error("give --redis-url or --start-redis")
        rows = asyncio.run(measure(args.redis_url, args.widths, args.batches, args.lookups))
    threshold = f"{args.mmap_threshold_bytes} bytes" if args.mmap_threshold_bytes else "glibc's own"
    print(f"mmap threshold: {threshold}; load average (1 min) at the end: {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    print("| variant | vector length | batch | lookups | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['dim']} | {r['batch']} | {r['lookups']} | {r['p50_ms']:.3f} | "
              f"{r['p90_ms']:.3f} | {r['p99_ms']:.3f} |")


if __name__ == "__main__":
    main()
