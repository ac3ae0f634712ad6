"""Probe of Triton's warp specialisation for Hopper on attention loops: does a kernel finish, how fast, how exact.

    timeout 45 python3 -m bench.attention.ws_probe VARIANT   (one variant per process: a kernel that deadlocks is
    killed by the timeout)

Variants: contiguous (K/V rows of one sequence, the shape the compiler's pass is built for) and paged (the same
loop with the tile's page looked up in a block table), both non-causal d128 with 128 x 64 tiles. On the H100 with
Triton 3.6 neither finished (bench/EXPERIMENTS.md): the reproducer to rerun on a newer Triton.
"""

from __future__ import annotations

import json
import sys

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor



@triton.jit
def _probe_kernel(q_desc, k_desc, v_desc, out_ptr, tables_ptr, qk_scale_log2, seq_len,
                  HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAGED: tl.constexpr):
    m_block = tl.program_id(0)
    bh = tl.program_id(1)
    row0 = bh * seq_len
    q = q_desc.load([row0 + m_block * BLOCK_M, 0])
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for n in tl.range(0, seq_len, BLOCK_N, warp_specialize=True):
        if PAGED:
            row = tl.load(tables_ptr + (row0 + n) // BLOCK_N) * BLOCK_N
        else:
            row = row0 + n
        k = k_desc.load([row, 0])
        s = tl.dot(q, tl.trans(k))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale_log2)
        p = tl.math.exp2(s * qk_scale_log2 - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = v_desc.load([row, 0])
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    offs = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, HEAD_DIM)
    tl.store(out_ptr + (row0 + offs)[:, None] * HEAD_DIM + d[None, :], (acc / l_i[:, None]).to(out_ptr.dtype.element_ty))


def _probe_simple(paged: bool) -> dict:
    bh, seq, d, bm, bn = 32, 4096, 128, 128, 64
    q, k, v = (torch.randn(bh * seq, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    pages = bh * seq // bn
    perm = torch.randperm(pages, device="cuda")
    tables = perm.to(torch.int32)  # logical page i of the flat K/V lives at physical page tables[i]
    kp, vp = torch.empty_like(k), torch.empty_like(v)
    kp.view(pages, bn, d)[perm] = k.view(pages, bn, d)
    vp.view(pages, bn, d)[perm] = v.view(pages, bn, d)
    kk, vv = (kp, vp) if paged else (k, v)
    out = torch.empty_like(q)
    descs = [TensorDescriptor(t, [bh * seq, d], [d, 1], [bs, d]) for t, bs in ((q, bm), (kk, bn), (vv, bn))]

    def run() -> None:
        _probe_kernel[(seq // bm, bh)](*descs, out, tables, d**-0.5 * 1.4426950408889634, seq,
                                       HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, PAGED=paged, num_warps=4, num_stages=2)

    run()
    torch.cuda.synchronize()
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.view(1, bh, seq, d), k.view(1, bh, seq, d), v.view(1, bh, seq, d)).view(bh * seq, d)
    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    ms = triton.testing.do_bench(run, warmup=50, rep=200, return_mode="median")
    return {"rel_err": err, "tflops": 4.0 * bh * seq * seq * d / ms / 1e9}


def main(argv: list[str]) -> int:
    variant = argv[0]
    probes = {"contiguous": lambda: _probe_simple(False), "paged": lambda: _probe_simple(True)}
    print(json.dumps({"variant": variant, **probes[variant]()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
