"""Decode A/B in one process: splits merged by a second kernel against splits merged by the last split program.

    git show 8968ae1:kernels/decode_attention.py > bench/scratch/decode_old.py   # split kernel + merge kernel
    python3 bench/decode_merge_ab.py out.json   # on a CUDA GPU, from a checkout of commit e0c022a

Both versions run the same shapes on the same rotated inputs, interleaved three times; outputs are compared.
"""

import importlib.util
import json
import math
import sys

import torch

from kernels import bench
from kernels.decode_attention import DecodeWorkspace, choose_num_splits, default_decode_config, paged_decode_attention

spec = importlib.util.spec_from_file_location("decode_old", "bench/scratch/decode_old.py")
old = importlib.util.module_from_spec(spec)
sys.modules["decode_old"] = old  # dataclasses look their module up while the file runs
spec.loader.exec_module(old)
H, KV, D = 32, 8, 128
SHAPES = ((1, 32768, 64), (1, 32768, 16), (8, 32768, 64), (8, 32768, 16), (16, 4096, 64), (1, 4096, 64))


def main(path: str) -> None:
    rows = []
    for batch, context, bs in SHAPES:
        gen = torch.Generator().manual_seed(batch + context)
        kv_bytes = 2 * batch * context * KV * D * 2
        copies = max(1, min(32, math.ceil(bench.ROTATE_BYTES / kv_bytes)))
        lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
        items = []
        for _ in range(copies):
            k = torch.randn(batch, context, KV, D, device="cuda", dtype=torch.bfloat16)
            v = torch.randn_like(k)
            q = torch.randn(batch, H, D, device="cuda", dtype=torch.bfloat16)
            items.append((q, *bench._paged_copy(k, v, gen, bs), torch.empty_like(q)))
        dev = torch.device("cuda")
        splits = choose_num_splits(batch, KV, context, default_decode_config(batch, KV, 0, bs, dev))
        cfg_new = default_decode_config(batch, KV, splits, bs, dev)
        cfg_old = old.default_decode_config(batch, KV, splits, bs, dev)
        ws = DecodeWorkspace.allocate(batch, H, KV, D, splits, "cuda")
        new_fns = [lambda it=it: paged_decode_attention(it[0], it[1], it[2], it[3], lens, D**-0.5, max_context_len=context,
                                                        num_splits=splits, out=it[4], config=cfg_new, workspace=ws)
                   for it in items]
        old_fns = [lambda it=it: old.paged_decode_attention(it[0], it[1], it[2], it[3], lens, D**-0.5,
                                                            max_context_len=context, num_splits=splits, out=it[4],
                                                            config=cfg_old)
                   for it in items]
        res = {"batch": batch, "context": context, "block_size": bs, "splits": splits, "tma": cfg_new.tma,
               "old": [], "new": []}
        for _ in range(3):  # interleaved repeats, TB/s of K and V read
            res["old"].append(kv_bytes / bench._graph_ms(old_fns) / 1e9)
            res["new"].append(kv_bytes / bench._graph_ms(new_fns) / 1e9)
        res["max_abs_diff"] = (old_fns[0]().float() - new_fns[0]().float()).abs().max().item()
        print(res, flush=True)
        rows.append(res)
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
