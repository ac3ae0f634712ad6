"""Output side of the attention benchmark (benchmark.py): the compiler's resource report and the markdown table."""

from __future__ import annotations

# Gluon prefill schedules timed beside the default one (timing.py GLUON_ALTERNATIVES), in table order.
GLUON_ALTERNATIVE_NAMES = ("independent", "pingpong")


def _constexprs(jit_function: object, kernel: object) -> dict:
    """The compile-time arguments a compiled variant was built for (names from the jit function)."""
    names = list(getattr(jit_function, "arg_names", []))
    constants = getattr(getattr(kernel, "src", None), "constants", None) or {}
    result = {}
    for key, value in constants.items():
        index = key[0] if isinstance(key, tuple) and len(key) == 1 else key
        name = names[index] if isinstance(index, int) and index < len(names) else str(key)
        if isinstance(value, (int, bool, str)):
            result[name] = value
    return result


def _figure(value: float | None) -> str:
    """Three decimals (the decode goals sit within 1% of some figures), or a dash where the row has no such figure."""
    return "-" if value is None else f"{value:.3f}"


def _decode_kernel_name(config: dict) -> str:
    """The decode kernel a row's config ran: Gluon (kernels/decode_gluon.py), Triton TMA or Triton gather tiles."""
    if config.get("gluon"):
        in_flight = f", {config['in_flight']} in flight" if config.get("in_flight") else ""
        return f"Gluon, ring of {config.get('num_stages')}{in_flight}" + (", dependent launch" if config.get("pdl") else "")
    return "Triton TMA" if config.get("tma") else "Triton gather"


def compiled_resources(jit_function: object) -> list[dict]:
    """Registers, spills and shared memory of every compiled variant of a @triton.jit function."""
    rows = []
    caches = getattr(jit_function, "device_caches", {})
    for entry in caches.values():
        kernel_cache = entry[0] if isinstance(entry, tuple) else entry
        for kernel in getattr(kernel_cache, "values", lambda: [])():
            meta = getattr(kernel, "metadata", None)
            try:
                constants = _constexprs(jit_function, kernel)
            except Exception as exc:  # noqa: BLE001 - the report is best effort across Triton versions
                constants = {"error": repr(exc)[:100]}
            rows.append({
                "kernel": getattr(meta, "name", "?"),
                "num_warps": getattr(meta, "num_warps", None),
                "num_stages": getattr(meta, "num_stages", None),
                "registers": getattr(kernel, "n_regs", None),
                "spills": getattr(kernel, "n_spills", None),
                "shared_bytes": getattr(meta, "shared", None),
                "constants": constants,
            })
    return rows


def write_markdown(report: dict, path: str) -> None:
    meta = report["meta"]
    lines = [
        f"# Kernel benchmark: {meta['device']}",
        "",
        f"Date {meta['date']}; torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}, "
        f"cuDNN {meta['cudnn']}, Python {meta['python']}; bf16, {meta['num_heads']} query heads, "
        f"{meta['num_kv_heads']} kv heads, paged cache block sizes "
        f"{', '.join(str(b) for b in meta.get('block_sizes', [meta.get('block_size')]))} (page column).",
        "",
        f"Command: `{meta['command']}`",
        "",
        "## Prefill, causal (TFLOP/s; ours on paged K/V, SDPA on contiguous K/V)",
        "",
        "Ours: the Triton kernel (kernels/prefill_attention.py); Gluon: the Hopper kernel at its default config "
        "(kernels/prefill_gluon.py), what `paged_prefill_attention` runs on sm_90 (head dims 64 and 128). Both Gluon "
        "schedules, same run: independent warpgroups / ping-pong turns.",
        "",
        "| head_dim | batch × seq | page | ours (Triton) | ours (Gluon) | Gluon: independent / pingpong "
        "| SDPA flash | SDPA cuDNN | Triton / best peer | Gluon / best peer | "
        "rel. err vs cuDNN (last kernel timed) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    nan = float("nan")
    for r in report["prefill"]:
        best = max((r[k] for k in ("sdpa_flash_tflops", "sdpa_cudnn_tflops") if k in r), default=nan)
        lines.append(
            f"| {r['head_dim']} | {r['batch']} × {r['seq']} | {r.get('block_size', '')} | {r['ours_tflops']:.0f} | "
            f"{r.get('gluon_tflops', nan):.0f} | "
            f"{' / '.join(format(r.get(f'gluon_{name}_tflops', nan), '.0f') for name in GLUON_ALTERNATIVE_NAMES)} | "
            f"{r.get('sdpa_flash_tflops', nan):.0f} | "
            f"{r.get('sdpa_cudnn_tflops', nan):.0f} | {r['ours_tflops'] / best:.2f} | {r.get('gluon_tflops', nan) / best:.2f} | "
            f"{r.get('rel_err_vs_sdpa_cudnn', nan):.1e} |"
        )
    lines += [
        "",
        f"## Decode, head_dim 128 (TB/s of K and V read; device copy {report['copy_tbps']:.2f} TB/s, "
        "bytes read + written)",
        "",
        "Times are CUDA-graph replays of the calls column's calls each, rotating over copies of the cache that "
        "together exceed L2 many times over. Every timed replay starts cold (the graph's launch, and the timer "
        "zeroes a 256 MB buffer just before it, whose dirty lines are written back during the first call): "
        "`python3 -m bench.attention.fixed_costs --replay` measures that cost, so a replay reads at least 4 GiB. The device copy is four "
        "1 GiB copies per timed region"
        + (f" ({report['copy_one_call_tbps']:.2f} TB/s one at a time)." if "copy_one_call_tbps" in report else "."),
        "",
        "Ours: the default kernel per shape (`default_decode_config`). A dependent launch (programmatic dependent "
        "launch, Hopper) is scheduled while the previous kernel in the stream runs and waits for it on the device "
        "before it reads q and the newest key; in the benchmark's graphs the previous kernel is the previous call. "
        "The ordinary-launch column times the same kernel launched the ordinary way.",
        "",
        "| batch × context | page | kernel | splits | calls | ours | ours, ordinary launch | SDPA (contiguous) | "
        "ours / SDPA | ours / copy | rel. err vs SDPA |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["decode"]:
        if "ours_tbps" not in r:
            lines.append(f"| {r['batch']} × {r['context']} | {r.get('block_size', '')} | failed: "
                         f"{r.get('error', '?')[:80]} | | | | | | | | |")
            continue
        lines.append(
            f"| {r['batch']} × {r['context']} | {r.get('block_size', '')} | "
            f"{_decode_kernel_name(r.get('config', {}))} | {r['num_splits']} | "
            f"{r.get('calls_per_replay', r.get('rotated_copies', '-'))} | {_figure(r['ours_tbps'])} | "
            f"{_figure(r.get('ours_ordinary_launch_tbps'))} | {_figure(r.get('sdpa_tbps'))} | "
            f"{r.get('ratio_to_sdpa', float('nan')):.3f} | "
            f"{r['ratio_to_copy']:.2f} | {r.get('rel_err_vs_sdpa', float('nan')):.1e} |"
        )
    lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))
