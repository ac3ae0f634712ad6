"""Output side of kernels/bench.py: the compiler's resource report and the markdown table."""

from __future__ import annotations


def compiled_resources(jit_function: object) -> list[dict]:
    """Registers, spills and shared memory of every compiled variant of a @triton.jit function."""
    rows = []
    caches = getattr(jit_function, "device_caches", {})
    for entry in caches.values():
        kernel_cache = entry[0] if isinstance(entry, tuple) else entry
        for kernel in getattr(kernel_cache, "values", lambda: [])():
            meta = getattr(kernel, "metadata", None)
            rows.append({
                "kernel": getattr(meta, "name", "?"),
                "num_warps": getattr(meta, "num_warps", None),
                "num_stages": getattr(meta, "num_stages", None),
                "registers": getattr(kernel, "n_regs", None),
                "spills": getattr(kernel, "n_spills", None),
                "shared_bytes": getattr(meta, "shared", None),
                "constants": {k: v for k, v in (getattr(meta, "constants", None) or {}).items()
                              if isinstance(v, (int, bool, str))} if isinstance(getattr(meta, "constants", None), dict)
                else None,
            })
    return rows


def write_markdown(report: dict, path: str) -> None:
    meta = report["meta"]
    lines = [
        f"# Kernel benchmark: {meta['device']}",
        "",
        f"Date {meta['date']}; torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}, "
        f"cuDNN {meta['cudnn']}, Python {meta['python']}; bf16, {meta['num_heads']} query heads, "
        f"{meta['num_kv_heads']} kv heads, paged cache block size {meta['block_size']}.",
        "",
        f"Command: `{meta['command']}`",
        "",
        "## Prefill, causal (TFLOP/s; ours on paged K/V, SDPA on contiguous K/V)",
        "",
        "| head_dim | batch × seq | ours | SDPA flash | SDPA cuDNN | ours / best peer | rel. err vs cuDNN |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["prefill"]:
        lines.append(
            f"| {r['head_dim']} | {r['batch']} × {r['seq']} | {r['ours_tflops']:.0f} | "
            f"{r.get('sdpa_flash_tflops', float('nan')):.0f} | {r.get('sdpa_cudnn_tflops', float('nan')):.0f} | "
            f"{r.get('ratio_to_best_peer', float('nan')):.2f} | {r.get('rel_err_vs_sdpa_cudnn', float('nan')):.1e} |"
        )
    lines += [
        "",
        f"## Decode, head_dim 128 (TB/s of K and V read; device copy {report['copy_tbps']:.2f} TB/s, "
        "bytes read + written)",
        "",
        "| batch × context | splits | ours | SDPA (contiguous) | ours / SDPA | ours / copy | rel. err vs SDPA |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["decode"]:
        lines.append(
            f"| {r['batch']} × {r['context']} | {r['num_splits']} | {r['ours_tbps']:.2f} | {r['sdpa_tbps']:.2f} | "
            f"{r['ratio_to_sdpa']:.2f} | {r['ratio_to_copy']:.2f} | {r.get('rel_err_vs_sdpa', float('nan')):.1e} |"
        )
    lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))
