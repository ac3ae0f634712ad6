"""The split-K FP8 GEMV compiled for a GPU on any machine (no GPU needed): registers, spills and what the loop does.

For each GEMV config of bench/fp8_projections.py at one row (CUDA cores) or 16 (tensor cores), with llama-3.1-8b's
qkv shape: Triton builds the kernel for sm_90 as a launch would (16-byte aligned pointers, sizes divisible by 16),
then ptxas and cuobjdump (both in Triton's package) report registers, stack and local memory, and the whole
kernel's SASS (loop and split epilogue) is counted: loads and 16-byte loads, asynchronous copies, shared-memory
traffic, barriers, tensor-core and FMA instructions. A config that needs more registers fits fewer programs on an
SM; the .sass files show whether the loop exchanges tiles through shared memory.

    python bench/fp8_gemv_sass.py [--arch 90] [--out DIR]   # DIR keeps each config's .ptx and .sass
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

# SASS opcodes counted (a prefix each); `.128`, `.64` on a load give its width in bits.
OPCODES = ("LDG", "LDGSTS", "STS", "LDS", "LDSM", "BAR.SYNC", "HMMA", "HGMMA", "FFMA", "F2FP", "F2F", "SHFL",
           "ATOMG", "STL", "LDL")
SIGNATURE = {  # the kernel's arguments as a bf16 launch passes them (the split workspace and counters included)
    "x_ptr": "*bf16", "w_ptr": "*fp8e4nv", "scale_ptr": "*fp32", "x_scale_ptr": "*fp32", "bias_ptr": "*fp32",
    "out_ptr": "*bf16",
    "partial_ptr": "*fp32", "counter_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32", "k_per_split": "i32",
    "num_splits": "i32", "stride_xm": "i32", "stride_wn": "i32", "stride_om": "i32", "stride_split": "i32",
}
DIVISIBLE_BY_16 = ("x_ptr", "w_ptr", "scale_ptr", "x_scale_ptr", "bias_ptr", "out_ptr", "partial_ptr", "counter_ptr",
                   "N", "K", "k_per_split", "stride_xm", "stride_wn", "stride_om", "stride_split")


def compile_plan(plan, arch: int) -> tuple[str, bytes]:  # noqa: ANN001 - plan: a GemvPlan
    """(PTX, cubin) of the kernel for one plan."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels.fp8_gemv import _fp8_gemv_kernel

    constexprs = {"HAS_BIAS": False, "USE_DOT": plan.use_dot, "SPLIT": plan.split_k > 1, "BLOCK_M": plan.block_m,
                  "BLOCK_N": plan.block_n, "BLOCK_K": plan.block_k, "EVEN_K": True, "DOT_PRECISION": "tf32",
                  "VECTOR": plan.vector, "FP8_PRODUCTS": plan.fp8_products,
                  "USE_GDC": arch >= 90}  # launched as a dependent from Hopper on (kernels/dependent_launch.py)
    names = list(SIGNATURE) + list(constexprs)
    # FP8 products: x is rounded to FP8 before the launch.
    x_type = {"x_ptr": "*fp8e4nv"} if plan.fp8_products else {}
    signature = {**SIGNATURE, **x_type, **{name: "constexpr" for name in constexprs}}
    src = ASTSource(fn=_fp8_gemv_kernel, signature=signature,
                    constexprs={(names.index(k),): v for k, v in constexprs.items()},
                    attrs={(names.index(k),): [["tt.divisibility", 16]] for k in DIVISIBLE_BY_16})
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": plan.num_warps, "num_stages": plan.num_stages})
    return kernel.asm["ptx"], kernel.asm["cubin"]


def describe(cubin: bytes, path: Path) -> tuple[dict[str, int], str]:
    """Resource usage (REG, STACK, LOCAL, SHARED) and SASS opcode counts of a cubin written to path."""
    import triton

    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    path.write_bytes(cubin)
    usage = subprocess.run([tools / "cuobjdump", "--dump-resource-usage", path], capture_output=True, text=True,
                           check=True).stdout
    resources = {key: int(value) for key, value in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage)}
    sass = subprocess.run([tools / "cuobjdump", "--dump-sass", path], capture_output=True, text=True,
                          check=True).stdout
    ops = [m.group(1) for m in re.finditer(r"^\s+/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)", sass, re.M)]
    counts = {name: sum(op == name or op.startswith(name + ".") for op in ops) for name in OPCODES}
    counts["LDG.128"] = sum(op.startswith("LDG.") and ".128" in op for op in ops)
    return {**resources, **{k: v for k, v in counts.items() if v}}, sass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability as major * 10 + minor")
    parser.add_argument("--out", default="", help="a folder for each config's .ptx and .sass")
    parser.add_argument("--shape", default="6144x4096", help="N x K of the weight")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter compiles nothing")
    from bench.fp8_projections import gemv_candidates
    from kernels.fp8_gemv import gemv_plan

    n, k = (int(v) for v in args.shape.split("x"))
    out = Path(args.out or "/tmp/fp8_gemv_sass")
    out.mkdir(parents=True, exist_ok=True)
    print("| config | rows | plan (block m, n, k, split, K per split, dot, warps, stages) | resources and SASS |")
    print("|---|---|---|---|")
    for label, config in gemv_candidates():
        rows = 1 if label.startswith("CUDA cores") or label.startswith("split") else 16
        plan = gemv_plan(rows, n, k, 132, config)
        name = re.sub(r"\W+", "_", f"{label}_{rows}").strip("_")
        try:
            ptx, cubin = compile_plan(plan, args.arch)
            (out / f"{name}.ptx").write_text(ptx)
            report, sass = describe(cubin, out / f"{name}.cubin")
            (out / f"{name}.sass").write_text(sass)
        except Exception as exc:  # noqa: BLE001 - a config that does not compile loses its row only
            report = {"error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:150]}"}
        print(f"| {label} | {rows} | {tuple(plan)} | {report} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
