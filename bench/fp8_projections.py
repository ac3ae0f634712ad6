"""The projections of a model alone on a GPU: bf16 F.linear, the FP8 kernels, and the split-K GEMV's configs.

Per projection shape (qkv, o, gate_up, down) and row count: µs per call (a CUDA graph of 50 calls, weights rotated
through more copies than the L2 holds) and GB/s of weight bytes read, for bf16 F.linear, the per-token FP8
tensor-core GEMM (torch._scaled_mm), the dequantising tensor-core kernel and the split-K GEMV; up to 64 rows,
the GEMV in every config of gemv_candidates too (CUDA-core ones up to 4 rows), each checked against the reference
first.
The totals over a layer's four projections say which config to make the default at each row count, and where the
GEMV stops beating _scaled_mm (GEMV_MAX_ROWS).
"""

from __future__ import annotations

from typing import Any

import torch

from bench.engine import graph_us_or_error
from services.worker.model_config import ModelConfig

L2_BYTES = 60e6  # an H100's or H200's L2 is 50 to 60 MB
MAX_RELATIVE_ERROR = 1e-2  # bf16 outputs against the fp32 reference


def gemv_candidates() -> list[tuple[str, Any]]:
    """(label, GemvConfig) of the GEMV configs timed beside the default; the label names what differs."""
    from kernels.fp8_gemv import GemvConfig

    cuda, tensor = GemvConfig(use_dot=False), GemvConfig(use_dot=True)
    return [
        ("default", GemvConfig()),
        ("split 1 (whole K per program)", GemvConfig(split_k=1)),
        ("CUDA cores", cuda),
        ("CUDA cores, 8 programs/SM", GemvConfig(use_dot=False, programs_per_sm=8)),
        ("CUDA cores, 6 programs/SM", GemvConfig(use_dot=False, programs_per_sm=6)),
        ("CUDA cores, 32 x 256", GemvConfig(use_dot=False, block_n=32, block_k=256)),
        ("CUDA cores, 8 warps", GemvConfig(use_dot=False, num_warps=8)),
        ("CUDA cores, 2 warps", GemvConfig(use_dot=False, num_warps=2)),
        ("CUDA cores, 8-byte loads", GemvConfig(use_dot=False, vector=8)),
        ("tensor cores", tensor),
        ("tensor cores, 64 x 128", GemvConfig(use_dot=True, block_n=64, block_k=128)),
        ("tensor cores, 4 stages", GemvConfig(use_dot=True, num_stages=4)),
        ("tensor cores, 4 programs/SM", GemvConfig(use_dot=True, programs_per_sm=4)),
        ("tensor cores, 32 rows per tile", GemvConfig(use_dot=True, block_m=32)),
        ("tensor cores, 64 rows per tile", GemvConfig(use_dot=True, block_m=64)),
        ("tensor cores, 64 rows per tile, 2 stages", GemvConfig(use_dot=True, block_m=64, num_stages=2)),
        *fp8_product_candidates(),
    ]


def fp8_product_candidates() -> list[tuple[str, Any]]:
    """The FP8-products configs (x rounded to FP8 per row, FP8 tensor-core dots), also timed past 64 rows."""
    from kernels.fp8_gemv import GemvConfig

    return [
        ("FP8 products", GemvConfig(fp8_products=True)),
        ("FP8 products, 128 x 128", GemvConfig(fp8_products=True, block_n=128, block_k=128)),
        ("FP8 products, 32 x 256", GemvConfig(fp8_products=True, block_n=32)),
        ("FP8 products, 4 stages", GemvConfig(fp8_products=True, num_stages=4)),
        ("FP8 products, 4 programs/SM", GemvConfig(fp8_products=True, programs_per_sm=4)),
        ("FP8 products, 8 warps", GemvConfig(fp8_products=True, num_warps=8)),
        ("FP8 products, 128 x 512", GemvConfig(fp8_products=True, block_n=128, block_k=512, num_warps=8)),
    ]


def projection_shapes(cfg: ModelConfig) -> list[tuple[str, int, int]]:
    """(name, n_out, k_in) of a decoder layer's four projections."""
    hidden = cfg.hidden_size
    return [("qkv_proj", cfg.q_size + 2 * cfg.kv_size, hidden), ("o_proj", hidden, cfg.q_size),
            ("gate_up_proj", 2 * cfg.intermediate_size, hidden), ("down_proj", hidden, cfg.intermediate_size)]


def rotation_copies(weight_bytes: int) -> int:
    """How many copies of a weight of this many bytes a timing loop rotates through: more than the L2 holds, twice
    over, so that every call reads its weight from HBM."""
    return max(2, int(2 * L2_BYTES // weight_bytes) + 1)


def copy_bandwidth_gb_s(num_bytes: int = 1 << 31) -> float:
    """A device-to-device copy's bytes read plus written per second (GB/s), the median of 5 after a warm-up."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for i in range(6):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        if i:
            times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return round(2 * num_bytes / sorted(times)[2] / 1e9)


CUDA_CORE_MAX_ROWS = 4  # CUDA-core configs are timed up to this many rows (their work grows with the rows)


def _gemv_fits(label: str, rows: int) -> bool:
    return not label.startswith("CUDA cores") or rows <= CUDA_CORE_MAX_ROWS


def probe_shape(n_out: int, k_in: int, rows: list[int], candidates: bool) -> list[dict[str, Any]]:
    """The figures of one projection shape at each row count (see the module's docstring)."""
    from kernels.fp8_dequant_mm import fp8_dequant_mm
    from kernels.fp8_gemv import GemvConfig, fp8_gemv, fp8_gemv_ref, gemv_plan, num_sms
    from kernels.fp8_linear import GEMV_MAX_ROWS, fp8_scaled_mm
    from kernels.fp8_quant import quantize_fp8_rows

    dev = torch.device("cuda")
    copies, bf16_copies = rotation_copies(n_out * k_in), rotation_copies(2 * n_out * k_in)
    weights = [torch.randn(n_out, k_in, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
    fp8 = [(q, s.view(-1)) for q, s in (quantize_fp8_rows(w) for w in weights)]
    del weights[bf16_copies:]
    out = []
    for m in rows:
        x = torch.randn(m, k_in, device=dev, dtype=torch.bfloat16)
        row: dict[str, Any] = {
            "n_out": n_out, "k_in": k_in, "rows": m,
            "bf16_us": graph_us_or_error(
                lambda i: torch.nn.functional.linear(x, weights[i % bf16_copies])),  # noqa: B023
            "scaled_mm_us": graph_us_or_error(lambda i: fp8_scaled_mm(x, *fp8[i % copies])),  # noqa: B023
        }
        row["gemv"], row["gemv_plans"] = {}, {}
        if m > 4 * GEMV_MAX_ROWS:  # the other Triton kernels are timed up to 64 rows
            configs = fp8_product_candidates() if candidates else fp8_product_candidates()[:1]
        else:
            row["dequant_mm_us"] = graph_us_or_error(lambda i: fp8_dequant_mm(x, *fp8[i % copies]))  # noqa: B023
            configs = gemv_candidates() if candidates else [("default", GemvConfig())]
        ref = fp8_gemv_ref(x, *fp8[0]).float()
        q, x_scale = quantize_fp8_rows(x)
        ref_rounded = fp8_gemv_ref((q.float() * x_scale).to(x.dtype), *fp8[0]).float()  # FP8 products round x first
        timed: dict[tuple, str] = {}  # plan → the label it was timed under
        for label, config in configs:
            if not _gemv_fits(label, m):
                continue
            plan = gemv_plan(m, n_out, k_in, num_sms(dev), config)
            row["gemv_plans"][label] = list(plan)
            if plan in timed:  # the same launch as an earlier config
                row["gemv"][label] = row["gemv"][timed[plan]]
                continue
            timed[plan] = label
            try:
                got = fp8_gemv(x, *fp8[0], config=config).float()
            except Exception as exc:  # noqa: BLE001 - a config that does not compile loses its cell only
                row["gemv"][label] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}"
                continue
            want = ref_rounded if config.fp8_products else ref
            error = ((got - want).norm() / want.norm()).item()
            if not error < MAX_RELATIVE_ERROR:
                row["gemv"][label] = f"wrong: relative error {error:.3g}"
                continue
            row["gemv"][label] = graph_us_or_error(lambda i: fp8_gemv(x, *fp8[i % copies], config=config))  # noqa: B023
        out.append(row)
    del weights, fp8
    torch.cuda.empty_cache()
    return out


def projection_sweep(models: dict[str, ModelConfig], rows: list[int], candidates: bool) -> dict[str, Any]:
    """Every projection shape of every model at every row count; `candidates`: every GEMV config too."""
    results: dict[str, Any] = {"copy_gb_s": copy_bandwidth_gb_s(), "models": {}}
    for model, cfg in models.items():
        table = []
        for name, n_out, k_in in projection_shapes(cfg):
            print(f"projections: {model} {name}", flush=True)
            table += [{"proj": name, **r} for r in probe_shape(n_out, k_in, rows, candidates)]
        results["models"][model] = {"num_layers": cfg.num_layers, "table": table}
    return results


def _us(value: Any) -> float | None:
    return value if isinstance(value, float) else None


def _cell(value: Any, weight_bytes: int) -> str:
    us = _us(value)
    if us is None:
        return "-" if value is None else str(value)
    return f"{us} ({weight_bytes / us / 1e3:.0f})"


def _best(gemv: dict[str, Any]) -> tuple[str, float] | None:
    timed = [(us, label) for label, us in gemv.items() if _us(us) is not None]
    return (min(timed)[1], min(timed)[0]) if timed else None


def _totals(table: list[dict[str, Any]], copy_gb_s: float) -> tuple[list[int], dict[str, dict[int, float]]]:
    """Row counts, and per kernel (or GEMV config) the µs of a layer's projections summed at each row count (only
    where all four ran), beside the time of their FP8 weight bytes at the copy bandwidth."""
    rows = sorted({r["rows"] for r in table})
    labels = list(dict.fromkeys(label for r in table for label in r["gemv"]))
    sums: dict[str, dict[int, float]] = {}
    for m in rows:
        at = [r for r in table if r["rows"] == m]
        cells = {"FP8 bytes at the copy bandwidth": [r["n_out"] * r["k_in"] / copy_gb_s / 1e3 for r in at]}
        cells |= {key: [_us(r.get(f"{key}_us")) for r in at] for key in ("bf16", "scaled_mm", "dequant_mm")}
        cells |= {f"GEMV {label}": [_us(r["gemv"].get(label)) for r in at] for label in labels}
        cells["GEMV best config of each shape"] = [(_best(r["gemv"]) or (None, None))[1] for r in at]
        for key, values in cells.items():
            if values and all(v is not None for v in values):
                sums.setdefault(key, {})[m] = round(sum(values), 2)
    return rows, sums


def projections_markdown(results: dict[str, Any]) -> list[str]:
    lines = [f"Device copy bandwidth (read + written): {results['copy_gb_s']} GB/s. Cells: µs per call (GB/s of "
             "weight bytes read), CUDA graph of 50 calls, weights rotated past the L2.", ""]
    for model, probe in results["models"].items():
        table = probe["table"]
        lines += [f"### {model}: each projection", "",
                  "| proj | n x k | rows | bf16 F.linear | FP8 scaled_mm | FP8 dequant_mm | GEMV default (plan) | "
                  "GEMV best config | best |", "|---|---|---|---|---|---|---|---|---|"]
        for r in table:
            fp8_bytes = r["n_out"] * r["k_in"]
            best = _best(r["gemv"])
            plan = r["gemv_plans"].get("default", "")
            lines.append(
                f"| {r['proj']} | {r['n_out']} x {r['k_in']} | {r['rows']} | {_cell(r['bf16_us'], 2 * fp8_bytes)} | "
                f"{_cell(r['scaled_mm_us'], fp8_bytes)} | {_cell(r.get('dequant_mm_us'), fp8_bytes)} | "
                f"{_cell(r['gemv'].get('default'), fp8_bytes)} {tuple(plan) if plan else ''} | {best[0] if best else '-'} | "
                f"{_cell(best[1], fp8_bytes) if best else '-'} |")
        rows, sums = _totals(table, results["copy_gb_s"])
        lines += ["", f"### {model}: a layer's four projections summed (µs; x {probe['num_layers']} layers for a "
                  "decode step's projections)", "",
                  "| kernel or GEMV config | " + " | ".join(f"{m} rows" for m in rows) + " |",
                  "|---|" + "---|" * len(rows)]
        best_at = {m: min((v[m], k) for k, v in sums.items() if m in v and k.startswith("GEMV ") and "best" not in k)
                   for m in rows if any(m in v for k, v in sums.items() if k.startswith("GEMV ") and "best" not in k)}
        for key, values in sums.items():
            cells = []
            for m in rows:
                value = values.get(m)
                mark = " **best**" if m in best_at and best_at[m][1] == key else ""
                cells.append("-" if value is None else f"{value}{mark}")
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines.append("")
        for label in dict.fromkeys(label for r in table for label in r["gemv"]):
            bad = [f"{r['proj']} at {r['rows']}: {r['gemv'][label]}" for r in table
                   if label in r["gemv"] and _us(r["gemv"][label]) is None]
            if bad:
                lines.append(f"GEMV {label} failed: " + "; ".join(bad[:4]) + ("" if len(bad) <= 4 else " ..."))
        lines.append("")
    return lines
