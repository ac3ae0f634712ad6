"""Decode attention of one layer on a GPU: a bf16 cache against the same entries in an FP8 cache, each in its
default kernel config and FP8 in the FP8_ATTENTION_VARIANTS changes to it (µs per call and error against the
fp32 reference). bench/fp8.py runs it beside its model figures; alone (no model is built, about a minute on an H200
with the compiles):

    python bench/fp8_attention.py --cases 1x4096,64x1024,64x4096,256x1024 --out-dir "$OUT"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

import torch  # noqa: E402

from bench.engine import graph_us  # noqa: E402
from kernels._paged_tile import WIDEN_FP16_IN_REGISTERS, WIDEN_TO_QUERY  # noqa: E402
from services.worker.model_config import ModelConfig  # noqa: E402


# Changes to the FP8 cache's default decode config timed beside it: the other ways its tiles widen
# (kernels/_paged_tile.py's WIDEN_*), tiles of twice the keys (the bytes of a bf16 tile), a deeper pipeline.
FP8_ATTENTION_VARIANTS = {
    "fp8 widened to bf16": {"fp8_widen": WIDEN_TO_QUERY.value},
    "fp8 widened in registers": {"fp8_widen": WIDEN_FP16_IN_REGISTERS.value},
    "fp8 128-key tiles, 8 warps": {"block_n": 128, "num_warps": 8},
    "fp8 128-key tiles": {"block_n": 128},
    "fp8 3 stages": {"num_stages": 3},
}


def attention_probe(cfg: ModelConfig, cases: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Decode attention of one layer on a bf16 cache and on the same entries stored in FP8 (scale 1, as a
    checkpoint without KV scales runs): each output's error against the fp32 reference of the bf16 entries, the
    FP8 output against the bf16 one, and each call's time (CUDA graph of 20 calls); FP8 also under the
    FP8_ATTENTION_VARIANTS changes to its default config (time and error against the reference)."""
    from dataclasses import replace

    from kernels import paged_decode_attention, paged_decode_attention_ref
    from kernels.cache_write import to_cache_ref
    from kernels.decode_attention import choose_num_splits, default_decode_config

    dev, block_size, table = torch.device("cuda"), 16, []
    g = torch.Generator(device=dev).manual_seed(0)
    for batch, context in cases:
        blocks = -(-context // block_size)
        shape = (batch * blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        k_bf16 = torch.randn(shape, device=dev, generator=g).to(torch.bfloat16)
        v_bf16 = torch.randn(shape, device=dev, generator=g).to(torch.bfloat16)
        k_fp8, v_fp8 = to_cache_ref(k_bf16, torch.float8_e4m3fn, 1.0), to_cache_ref(v_bf16, torch.float8_e4m3fn, 1.0)
        tables = torch.randperm(batch * blocks, device=dev, generator=g).view(batch, blocks).to(torch.int32)
        lens = torch.full((batch,), context, dtype=torch.int32, device=dev)
        q = torch.randn(batch, cfg.num_heads, cfg.head_dim, device=dev, generator=g).to(torch.bfloat16)
        scale = cfg.head_dim**-0.5

        # The FP8 cache's default config, as paged_decode_attention picks it (the gather kernel's: device None).
        splits = choose_num_splits(batch, cfg.num_kv_heads, context,
                                   default_decode_config(batch, cfg.num_kv_heads, 0, block_size, None))
        fp8_default = default_decode_config(batch, cfg.num_kv_heads, splits, block_size, None)

        def run(k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, config: Any = None) -> torch.Tensor:
            return paged_decode_attention(q, k, v, tables, lens, scale, context, out=out,  # noqa: B023
                                          config=config, num_splits=None if config is None else splits)  # noqa: B023

        bf16_out, fp8_out = run(k_bf16, v_bf16, torch.empty_like(q)), run(k_fp8, v_fp8, torch.empty_like(q))
        ref = paged_decode_attention_ref(q.float(), k_bf16.float(), v_bf16.float(), tables, lens, scale)

        def rel(a: torch.Tensor, b: torch.Tensor) -> float:
            return float(f"{((a.float() - b.float()).norm() / b.float().norm()).item():.3g}")

        scratch = torch.empty_like(q)
        table.append({
            "batch": batch, "context": context, "bf16_vs_ref": rel(bf16_out, ref), "fp8_vs_ref": rel(fp8_out, ref),
            "fp8_vs_bf16": rel(fp8_out, bf16_out),
            "bf16_us": graph_us(lambda _: run(k_bf16, v_bf16, scratch), 20),  # noqa: B023
            "fp8_us": graph_us(lambda _: run(k_fp8, v_fp8, scratch), 20),  # noqa: B023
        })
        for name, changes in FP8_ATTENTION_VARIANTS.items():
            variant = replace(fp8_default, **changes)
            table[-1][name] = {"us": graph_us(lambda _: run(k_fp8, v_fp8, scratch, variant), 20),  # noqa: B023
                               "vs_ref": rel(run(k_fp8, v_fp8, torch.empty_like(q), variant), ref)}
        del k_bf16, v_bf16, k_fp8, v_fp8
        torch.cuda.empty_cache()
    return table


def attention_markdown(model: str, rows: list[dict[str, Any]]) -> list[str]:
    """attention_probe's rows as a markdown table (lines)."""
    lines = [f"## Decode attention, one layer at {model} shapes: bf16 cache against the same entries in FP8", "",
             "| batch | context | bf16 error vs fp32 ref | FP8 error vs fp32 ref | FP8 vs bf16 output | bf16 µs | "
             "FP8 µs | " + " | ".join(f"{n} µs (error vs ref)" for n in FP8_ATTENTION_VARIANTS) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(FP8_ATTENTION_VARIANTS)]
    lines += [f"| {a['batch']} | {a['context']} | {a['bf16_vs_ref']} | {a['fp8_vs_ref']} | {a['fp8_vs_bf16']} | "
              f"{a['bf16_us']} | {a['fp8_us']} | "
              + " | ".join(f"{a[n]['us']} ({a[n]['vs_ref']})" if n in a else "" for n in FP8_ATTENTION_VARIANTS)
              + " |" for a in rows]
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama-3.1-8b", help="preset or checkpoint folder giving the shapes")
    parser.add_argument("--cases", default="1x4096,64x1024,64x4096,256x1024", help="BATCHxCONTEXT cases")
    parser.add_argument("--out-dir", default="", help="where fp8_attention.json and .md go ('' prints only)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    from services.worker.build import resolve_model_config
    from services.worker.config import WorkerConfig

    cfg = resolve_model_config(WorkerConfig(model=args.model, load_format="dummy"))[0]
    cases = [tuple(int(n) for n in c.split("x")) for c in args.cases.split(",") if c]
    rows = attention_probe(cfg, cases)
    markdown = "\n".join([*attention_markdown(args.model, rows), f"Device: {torch.cuda.get_device_name()}, torch "
                          f"{torch.__version__}; command: python bench/fp8_attention.py {' '.join(sys.argv[1:])}", ""])
    print(markdown)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "fp8_attention.json").write_text(json.dumps(rows, indent=1))
        (out / "fp8_attention.md").write_text(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
